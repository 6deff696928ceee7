"""GetJwks over gRPC: the same bytes and ETag as HTTP's JWKS, if_none_match as HTTP's
If-None-Match, the scopes and environments HTTP demands."""

from __future__ import annotations

import json

import aiohttp
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from service.core.models import Scope
from service.grpc.generated.signingkeys import v1 as pb
from tests.grpc.conftest import metadata
from tests.support.service import Credentials, TokenFactory


async def test_get_jwks_matches_http_and_honours_if_none_match(
    stub: pb.SigningKeysStub,
    md: dict[str, str],
    http: aiohttp.ClientSession,
    auth: Credentials,
    environment: str,
) -> None:
    created = await stub.create_signing_key(pb.CreateSigningKeyRequest(), metadata=md)
    reply = await stub.get_jwks(pb.GetJwksRequest(), metadata=md)
    assert not reply.not_modified and reply.key_count == 1
    assert [key["kid"] for key in json.loads(reply.jwks_json)["keys"]] == [created.key.id]
    async with http.get(
        f"/v1/environments/{environment}/jwks.json", headers=auth.headers
    ) as response:
        assert (await response.read(), response.headers["ETag"]) == (reply.jwks_json, reply.etag)
    for header in (reply.etag, "W/" + reply.etag, "*", f'"x", {reply.etag}'):
        again = await stub.get_jwks(
            pb.GetJwksRequest(environment_id=environment, if_none_match=header), metadata=md
        )
        assert again.not_modified and again.jwks_json == b"" and again.etag == reply.etag
    stale = await stub.get_jwks(pb.GetJwksRequest(if_none_match='"other"'), metadata=md)
    assert not stale.not_modified and stale.jwks_json == reply.jwks_json


async def test_get_jwks_needs_read_or_verify_on_the_environment(
    stub: pb.SigningKeysStub, issue_token: TokenFactory, environment: str
) -> None:
    writer = await issue_token([environment], [Scope.WRITE])
    verifier = await issue_token([environment], [Scope.VERIFY])
    other = await issue_token([environment + "-b"])
    assert (await stub.get_jwks(pb.GetJwksRequest(), metadata=metadata(verifier))).etag
    for caller, request, status in (
        (writer, pb.GetJwksRequest(), Status.PERMISSION_DENIED),
        (other, pb.GetJwksRequest(environment_id=environment), Status.PERMISSION_DENIED),
        (other, pb.GetJwksRequest(environment_id="bad id"), Status.INVALID_ARGUMENT),
    ):
        with pytest.raises(GRPCError) as raised:
            await stub.get_jwks(request, metadata=metadata(caller))
        assert raised.value.status is status
    # Its own environment's set holds none of the other's keys.
    own = await stub.get_jwks(pb.GetJwksRequest(), metadata=metadata(other))
    assert json.loads(own.jwks_json) == {"keys": []}
