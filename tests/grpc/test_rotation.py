"""RotateSigningKey, UpdateSigningKey, GetCurrentSigningKey and not_before through the
generated grpclib client, against the real service on the local topology."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import jwt
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from service.grpc.generated.signingkeys import v1 as pb
from tests.grpc.test_servicer import next_change, next_event, watching


async def failure(call: object) -> GRPCError:
    with pytest.raises(GRPCError) as raised:
        await call  # type: ignore[misc]
    return raised.value


def sign(key: pb.SigningKey, private_key: str) -> str:
    return jwt.encode(
        {"exp": int(time.time()) + 600},
        base64.b64decode(private_key),
        algorithm=key.algorithm,
        headers={"kid": key.id},
    )


async def test_not_before_is_set_on_create_and_refused_by_verification(
    stub: pb.SigningKeysStub, md: dict[str, str]
) -> None:
    start = int(time.time()) + 3600
    created = await stub.create_signing_key(
        pb.CreateSigningKeyRequest(algorithm="EdDSA", not_before=str(start)), metadata=md
    )
    assert created.key.not_before == str(start)
    assert created.key.not_before_time == datetime.fromtimestamp(start, UTC)
    verdict = await stub.verify_token(
        pb.VerifyTokenRequest(token=sign(created.key, created.private_key)), metadata=md
    )
    assert not verdict.valid
    assert verdict.reason == pb.InvalidReason.KEY_NOT_YET_VALID
    assert verdict.reason_text == "key_not_yet_valid"


async def test_rotate_update_and_current(stub: pb.SigningKeysStub, md: dict[str, str]) -> None:
    old = await stub.create_signing_key(pb.CreateSigningKeyRequest(algorithm="ES256"), metadata=md)
    current = await stub.get_current_signing_key(pb.GetCurrentSigningKeyRequest(), metadata=md)
    assert current.key.id == old.key.id
    rotated = await stub.rotate_signing_key(
        pb.RotateSigningKeyRequest(id=old.key.id, grace_period_seconds=600, idempotency_key="r1"),
        metadata=md,
    )
    assert rotated.key.algorithm == "ES256" and rotated.private_key
    assert rotated.previous_key.id == old.key.id
    assert rotated.previous_key.rotated_to == rotated.key.id
    assert abs(int(rotated.previous_key.expires_at) - (time.time() + 600)) < 60
    current = await stub.get_current_signing_key(pb.GetCurrentSigningKeyRequest(), metadata=md)
    assert current.key.id == rotated.key.id
    verdict = await stub.verify_token(
        pb.VerifyTokenRequest(token=sign(rotated.key, rotated.private_key)), metadata=md
    )
    assert verdict.valid

    again = await failure(
        stub.rotate_signing_key(pb.RotateSigningKeyRequest(id=old.key.id), metadata=md)
    )
    assert again.status is Status.ALREADY_EXISTS and rotated.key.id in (again.message or "")
    short = await failure(
        stub.rotate_signing_key(
            pb.RotateSigningKeyRequest(id=rotated.key.id, grace_period_seconds=5), metadata=md
        )
    )
    assert short.status is Status.INVALID_ARGUMENT

    renamed = await stub.update_signing_key(
        pb.UpdateSigningKeyRequest(id=rotated.key.id, name="next"), metadata=md
    )
    assert renamed.key.name == "next"
    kept = await stub.update_signing_key(
        pb.UpdateSigningKeyRequest(id=rotated.key.id, expires_at=str(int(time.time()) + 60)),
        metadata=md,
    )
    assert kept.key.name == "next", "an unset name is left as it is"
    cleared = await stub.update_signing_key(
        pb.UpdateSigningKeyRequest(id=rotated.key.id, name=""), metadata=md
    )
    assert cleared.key.name == "" and cleared.key.expires_at == kept.key.expires_at
    longer = await failure(
        stub.update_signing_key(
            pb.UpdateSigningKeyRequest(id=rotated.key.id, expires_at=str(int(time.time()) + 999)),
            metadata=md,
        )
    )
    assert longer.status is Status.INVALID_ARGUMENT
    missing = await failure(
        stub.update_signing_key(pb.UpdateSigningKeyRequest(id="nope", name="x"), metadata=md)
    )
    assert missing.status is Status.NOT_FOUND


async def test_watch_carries_a_shortened_expiry_and_a_rotation(
    stub: pb.SigningKeysStub, channel: Channel, md: dict[str, str]
) -> None:
    """The change feed polls updated_at: an update and a rotation must stamp it, or no other
    instance, cache or watcher would ever see them."""
    old = await stub.create_signing_key(pb.CreateSigningKeyRequest(algorithm="EdDSA"), metadata=md)
    async with watching(channel, md) as stream:
        seen: set[str] = set()
        assert (await next_change(stream, seen, timeout=5.0)).kind == pb.WatchEventKind.SNAPSHOT
        assert (await next_event(stream)).kind == pb.WatchEventKind.SYNCED
        soon = str(int(time.time()) + 3600)
        await stub.update_signing_key(
            pb.UpdateSigningKeyRequest(id=old.key.id, expires_at=soon), metadata=md
        )
        changed = await next_change(stream, seen, timeout=5.0)
        assert (changed.key.id, changed.key.expires_at) == (old.key.id, soon)
        rotated = await stub.rotate_signing_key(
            pb.RotateSigningKeyRequest(id=old.key.id), metadata=md
        )
        events: dict[str, pb.SigningKey] = {}
        while len(events) < 2:
            event = await next_change(stream, seen, timeout=5.0)
            events[event.key.id] = event.key
        assert events[old.key.id].rotated_to == rotated.key.id
        assert events[rotated.key.id].status == pb.KeyStatus.ACTIVE
