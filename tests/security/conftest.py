"""The security tests call the service over both transports: the gRPC fixtures are the gRPC
tests' own (the HTTP ones, ``server``, ``http``, ``issue_token``, come from the root
plugin)."""

from __future__ import annotations

from tests.grpc.conftest import channel, grpc_port, md, stub

__all__ = ["channel", "grpc_port", "md", "stub"]
