"""Google's official grpcio client (stubs generated from protos/, health, reflection) talks
to our grpclib server: every RPC, the health check and the reflection listing."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from service.grpc.server import SERVICE_NAME
from tests.support.service import Credentials

CLIENT = Path(__file__).with_name("grpcio_client.py")


async def run_grpcio_client(port: int, credentials: Credentials) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CLIENT),
        str(port),
        credentials.headers["Authorization"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, stderr.decode()[-3000:]
    seen: dict[str, Any] = json.loads(stdout)
    return seen


async def test_the_official_grpcio_client_interoperates(grpc_port: int, auth: Credentials) -> None:
    seen = await run_grpcio_client(grpc_port, auth)

    assert seen["health"] == {"": "SERVING", SERVICE_NAME: "SERVING"}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= set(seen["reflected_services"])
    assert seen["reflected_methods"] == sorted(
        [
            "BatchGetSigningKeys",
            "CreateSigningKey",
            "GetJwks",
            "GetSigningKey",
            "ImportSigningKey",
            "ListAuditEvents",
            "ListSigningKeys",
            "RevokeSigningKey",
            "VerifyToken",
            "WatchSigningKeys",
            "RotateSigningKey",
            "UpdateSigningKey",
            "GetCurrentSigningKey",
        ]
    )
    created = seen["created"]
    assert created["algorithm"] == "RS256" and created["status"] == "KEY_STATUS_ACTIVE"
    assert created["created_at"].isdigit() and created["private_key_is_pem"]
    assert seen["got_same_key"] is True
    assert seen["dynamic_get_id"] == seen["listed_ids"][0], "a client built from reflection"
    assert seen["imported_source"] == "KEY_SOURCE_IMPORTED"
    assert seen["verify"] == {
        "valid": True,
        "claims": {"exp": seen["verify"]["claims"]["exp"], "sub": "p"},
    }
    assert seen["verify_wrong_subject"] == "INVALID_REASON_WRONG_SUBJECT"
    assert seen["watch_kinds"] == ["WATCH_EVENT_KIND_SNAPSHOT"] * 2 + ["WATCH_EVENT_KIND_SYNCED"]
    assert seen["watched_ids"] == seen["key_ids"], "the snapshot: the created and imported key"
    assert seen["revoked_status"] == "KEY_STATUS_REVOKED"
    assert seen["request_id_answered"] == seen["request_id_refused"] == "interop-7"
    assert seen["errors"] == {
        "not_found": "NOT_FOUND",
        "no_credentials": "UNAUTHENTICATED",
        "bad_algorithm": "INVALID_ARGUMENT",
        "oversized": "RESOURCE_EXHAUSTED",
    }
    # google.rpc.Status from grpc-status-details-bin, parsed with the stock protobuf types.
    replay = seen["details"]["replay"]
    assert (replay["code"], replay["reason"], replay["error_type"]) == (6, "conflict", "conflict")
    assert replay["metadata"]["key_id"] == seen["replayed_key_id"]
    bad = seen["details"]["bad_algorithm"]
    assert (bad["code"], bad["reason"], bad["fields"]) == (3, "invalid_parameters", ["algorithm"])
