"""gRPC fixtures: the real service's collaborators behind a GrpcServer, and grpclib clients."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from grpclib.client import Channel

from service.grpc.generated.signingkeys import v1 as pb
from service.server import Server
from tests.support.service import Credentials


@pytest.fixture
def grpc_port(server: Server) -> int:
    """The service's own gRPC port (beside its HTTP, in the same process and loop)."""
    assert server.grpc_port is not None
    return server.grpc_port


@pytest.fixture
async def channel(grpc_port: int) -> AsyncIterator[Channel]:
    channel = Channel("127.0.0.1", grpc_port)
    try:
        yield channel
    finally:
        channel.close()


@pytest.fixture
def stub(channel: Channel) -> pb.SigningKeysStub:
    return pb.SigningKeysStub(channel)


def metadata(credentials: Credentials) -> dict[str, str]:
    """gRPC metadata carrying the credentials as HTTP Basic, exactly as HTTP sends them."""
    return {"authorization": credentials.headers["Authorization"]}


def bearer(credentials: Credentials) -> dict[str, str]:
    return {"authorization": f"Bearer {credentials.login}:{credentials.password}"}


@pytest.fixture
def md(auth: Credentials) -> dict[str, str]:
    """Metadata with every scope on this test's environment."""
    return metadata(auth)
