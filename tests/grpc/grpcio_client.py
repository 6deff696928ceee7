"""Google's official grpcio client against our grpclib server — run in its own interpreter.

grpcio's health and reflection modules register the same protobuf symbols as grpclib's own
(``grpc.health.v1.HealthCheckRequest`` …) in the process-wide descriptor pool, so they cannot
share a process with the server. This script is what a stock client does: generate stubs
from ``protos/`` with grpc_tools, check health, list and describe the services through
reflection, call every RPC, and print what it saw as one JSON object for the test to judge.

    python tests/grpc/grpcio_client.py PORT AUTHORIZATION
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import jwt
from google.protobuf import descriptor_pool, message_factory
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

PROTOS = Path(__file__).resolve().parents[2] / "protos"
SERVICE = "signingkeys.v1.SigningKeys"


def generate_stubs(out: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "signingkeys/v1/signing_keys.proto",
        ],
        check=True,
    )
    sys.path.insert(0, str(out))


def code_of(call: Any) -> str:
    try:
        call()
    except grpc.RpcError as error:
        return str(error.code().name)
    return "OK"


def details_of(call: Any) -> dict[str, Any]:
    """What a stock client reads of a failure's ``grpc-status-details-bin``: the bytes from
    the trailing metadata, parsed as ``google.rpc.Status`` (as ``grpc_status.rpc_status``
    does), its details unpacked."""
    try:
        call()
    except grpc.RpcError as error:
        trailers = dict(error.trailing_metadata() or ())
        status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
        seen: dict[str, Any] = {"code": status.code, "error_type": trailers.get("error-type")}
        for detail in status.details:
            info, retry, bad = (
                error_details_pb2.ErrorInfo(),
                error_details_pb2.RetryInfo(),
                error_details_pb2.BadRequest(),
            )
            if detail.Unpack(info):
                seen["reason"], seen["metadata"] = info.reason, dict(info.metadata)
            elif detail.Unpack(retry):
                seen["retry_seconds"] = retry.retry_delay.seconds
            elif detail.Unpack(bad):
                seen["fields"] = [v.field for v in bad.field_violations]
        return seen
    return {}


def main(port: int, authorization: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as out:
        generate_stubs(Path(out))
        from signingkeys.v1 import signing_keys_pb2 as pb  # type: ignore[import-not-found]
        from signingkeys.v1 import signing_keys_pb2_grpc as pb_grpc

    md = [("authorization", authorization)]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        seen["health"] = {
            name: health_pb2.HealthCheckResponse.ServingStatus.Name(
                health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            )
            for name in ("", SERVICE)
        }

        reflection = ProtoReflectionDescriptorDatabase(channel)
        seen["reflected_services"] = sorted(reflection.get_services())
        pool = descriptor_pool.DescriptorPool(reflection)
        service = pool.FindServiceByName(SERVICE)
        seen["reflected_methods"] = sorted(method.name for method in service.methods)
        # A dynamic client built only from reflection, as grpcurl does.
        get = service.methods_by_name["GetSigningKey"]
        dynamic_request = message_factory.GetMessageClass(get.input_type)
        dynamic_reply = message_factory.GetMessageClass(get.output_type)

        stub = pb_grpc.SigningKeysStub(channel)
        created = stub.CreateSigningKey(pb.CreateSigningKeyRequest(), metadata=md, timeout=10)
        key_id = created.key.id
        private_pem = base64.b64decode(created.private_key)
        seen["created"] = {
            "algorithm": created.key.algorithm,
            "status": pb.KeyStatus.Name(created.key.status),
            "created_at": created.key.created_at,
            "private_key_is_pem": private_pem.startswith(b"-----BEGIN PRIVATE KEY-----"),
        }
        got = stub.GetSigningKey(pb.GetSigningKeyRequest(id=key_id), metadata=md, timeout=5)
        seen["got_same_key"] = got.key == created.key
        call = channel.unary_unary(
            f"/{SERVICE}/GetSigningKey",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=dynamic_reply.FromString,
        )
        seen["dynamic_get_id"] = call(dynamic_request(id=key_id), metadata=md, timeout=5).key.id
        listed = stub.ListSigningKeys(pb.ListSigningKeysRequest(limit=10), metadata=md, timeout=5)
        seen["listed_ids"] = [key.id for key in listed.keys]

        imported = stub.ImportSigningKey(
            pb.ImportSigningKeyRequest(pem=created.key.public_key), metadata=md, timeout=5
        )
        seen["imported_source"] = pb.KeySource.Name(imported.key.source)
        seen["key_ids"] = sorted([key_id, imported.key.id])

        token = jwt.encode(
            {"exp": int(time.time()) + 60, "sub": "p"}, private_pem, "RS256", {"kid": key_id}
        )
        verdict = stub.VerifyToken(
            pb.VerifyTokenRequest(token=token, subject="p"), metadata=md, timeout=5
        )
        seen["verify"] = {"valid": verdict.valid, "claims": json.loads(verdict.claims_json)}
        wrong = stub.VerifyToken(
            pb.VerifyTokenRequest(token=token, subject="q"), metadata=md, timeout=5
        )
        seen["verify_wrong_subject"] = pb.InvalidReason.Name(wrong.reason)

        watch = stub.WatchSigningKeys(pb.WatchSigningKeysRequest(), metadata=md, timeout=10)
        kinds, watched = [], []
        for event in watch:
            kinds.append(pb.WatchEventKind.Name(event.kind))
            watched.append(event.key.id)
            if event.kind == pb.WATCH_EVENT_KIND_SYNCED:
                break
        watch.cancel()
        seen["watch_kinds"] = kinds
        seen["watched_ids"] = sorted(watched[:-1])

        revoked = stub.RevokeSigningKey(
            pb.RevokeSigningKeyRequest(id=key_id), metadata=md, timeout=5
        )
        seen["revoked_status"] = pb.KeyStatus.Name(revoked.key.status)

        seen["errors"] = {
            "not_found": code_of(
                lambda: stub.GetSigningKey(pb.GetSigningKeyRequest(id="nope"), metadata=md)
            ),
            "no_credentials": code_of(lambda: stub.ListSigningKeys(pb.ListSigningKeysRequest())),
            "bad_algorithm": code_of(
                lambda: stub.CreateSigningKey(
                    pb.CreateSigningKeyRequest(algorithm="HS256"), metadata=md
                )
            ),
            "oversized": code_of(
                lambda: stub.VerifyToken(pb.VerifyTokenRequest(token="a" * 200_000), metadata=md)
            ),
        }
        once = pb.CreateSigningKeyRequest(algorithm="EdDSA", idempotency_key="grpcio-once")
        first = stub.CreateSigningKey(once, metadata=md, timeout=10)
        seen["details"] = {
            "replay": details_of(lambda: stub.CreateSigningKey(once, metadata=md, timeout=10)),
            "bad_algorithm": details_of(
                lambda: stub.CreateSigningKey(
                    pb.CreateSigningKeyRequest(algorithm="HS256"), metadata=md
                )
            ),
        }
        seen["replayed_key_id"] = first.key.id

        # The request id, as a stock client reads it: initial metadata of an answer, trailing
        # metadata of an error.
        traced = [*md, ("x-request-id", "interop-7")]
        _, answered = stub.GetSigningKey.with_call(
            pb.GetSigningKeyRequest(id=key_id, status="all"), metadata=traced, timeout=5
        )
        seen["request_id_answered"] = dict(answered.initial_metadata()).get("x-request-id")
        try:
            stub.GetSigningKey(pb.GetSigningKeyRequest(id="nope"), metadata=traced, timeout=5)
        except grpc.RpcError as error:
            trailing = dict(error.trailing_metadata() or ())
            seen["request_id_refused"] = trailing.get("x-request-id")
    return seen


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), sys.argv[2])))
