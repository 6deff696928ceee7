"""At the debug level, the service logs what it does, not what callers send it: the HTTP/2
header codec under grpclib (``hpack``) would log every header, an access token's secret in
``authorization`` included."""

from __future__ import annotations

import io

from service.grpc.generated.signingkeys import v1 as pb
from tests.support.service import Credentials, log_lines


async def test_a_grpc_call_at_debug_level_logs_no_credentials(
    log_stream: io.StringIO, stub: pb.SigningKeysStub, md: dict[str, str], auth: Credentials
) -> None:
    listed = await stub.list_signing_keys(pb.ListSigningKeysRequest(), metadata=md)
    assert listed.keys == []
    text = log_stream.getvalue()
    assert log_lines(log_stream), "debug logging is on"
    assert auth.password not in text
    assert md["authorization"].split()[1] not in text
    assert not [line for line in log_lines(log_stream) if line.get("logger") == "hpack.hpack"]
