"""Core records ↔ protobuf messages: the same field semantics as the HTTP API."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime

import pytest

from service.core import crypto, times
from service.core.models import SigningKey
from service.core.verify import REASONS
from service.errors import InvalidRequestError
from service.grpc import messages
from service.grpc.generated.signingkeys import v1 as pb
from service.grpc.generated.signingkeys.v1 import signing_keys_pb2
from service.http.keys import key_json


def _key(**changes: object) -> SigningKey:
    pair = crypto.generate_key_pair("ES256")
    fields: dict[str, object] = {
        "id": "kid-1",
        "environment_id": "env-1",
        "algorithm": "ES256",
        "public_key": pair.public_der,
        "fingerprint": crypto.fingerprint(pair.public_der),
        "status": "active",
        "source": "generated",
        "name": None,
        "created_at": datetime(2025, 1, 1, 0, 0, 0, 900_000, tzinfo=UTC),
        "updated_at": datetime(2025, 1, 2, tzinfo=UTC),
        **changes,
    }
    return SigningKey(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {
            "status": "revoked",
            "source": "imported",
            "name": "n",
            "revoked_at": datetime(2025, 2, 1, tzinfo=UTC),
            "expires_at": datetime(2026, 1, 1, tzinfo=UTC),
        },
    ],
)
def test_a_key_reads_like_its_http_json(changes: dict[str, object]) -> None:
    key = _key(**changes)
    message, http = messages.signing_key(key), key_json(key)
    for name in ("id", "created_at", "environment_id", "algorithm", "fingerprint", "public_key"):
        assert getattr(message, name) == http[name], name
    for name in ("name", "updated_at", "revoked_at", "expires_at"):
        assert getattr(message, name) == (http[name] or ""), name
    assert message.status.name == str(http["status"]).upper()
    assert message.source.name == str(http["source"]).upper()
    assert message.created_at == "1735689600", "whole Unix seconds, as a string"


def test_the_private_key_is_base64_of_its_pem() -> None:
    pem = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    assert base64.b64decode(messages.private_key(pem)) == pem


def test_times_in_requests() -> None:
    assert times.parse_unix(messages.absent(""), "expires_at") is None
    assert times.parse_unix("1735689600", "expires_at") == datetime(2025, 1, 1, tzinfo=UTC)
    for bad in ("soon", "1.5", "9" * 30):
        with pytest.raises(InvalidRequestError, match="expires_at"):
            times.parse_unix(bad, "expires_at")


def test_every_reason_of_the_core_has_its_enum_value() -> None:
    assert messages.invalid_reason(None) == pb.InvalidReason.UNSPECIFIED
    values = {messages.invalid_reason(reason) for reason in REASONS}
    assert pb.InvalidReason.UNSPECIFIED not in values
    assert len(values) == len(REASONS)
    assert messages.invalid_reason("unknown_key").name == "UNKNOWN_KEY"


def test_claims_keep_integers_exact() -> None:
    assert messages.claims_json(None) == ""
    claims = {"exp": 2**62 + 1, "sub": "é"}
    assert json.loads(messages.claims_json(claims)) == claims


def test_the_imported_key_form() -> None:
    assert messages.public_key(pb.ImportSigningKeyRequest(pem="PEM")) == "PEM"
    assert messages.public_key(pb.ImportSigningKeyRequest(jwk_json='{"kty":"OKP"}')) == {
        "kty": "OKP"
    }
    # Neither form set: absent, for the core to refuse as it does for HTTP.
    assert messages.public_key(pb.ImportSigningKeyRequest()) is None
    assert messages.public_key(pb.ImportSigningKeyRequest(pem="")) is None
    assert messages.public_key(pb.ImportSigningKeyRequest(jwk_json="[]")) == []
    for broken in ("{", "[" * 50_000, '{"x": NaN}'):
        with pytest.raises(InvalidRequestError, match="jwk_json is not valid JSON"):
            messages.public_key(pb.ImportSigningKeyRequest(jwk_json=broken))


def test_a_keys_times_are_also_timestamps_the_same_whole_second_unset_when_empty() -> None:
    active = messages.signing_key(_key())
    assert active.create_time == datetime(2025, 1, 1, tzinfo=UTC)  # its string's second
    assert active.update_time == datetime(2025, 1, 2, tzinfo=UTC)
    wire = signing_keys_pb2.SigningKey.FromString(bytes(active))
    assert wire.create_time.seconds == int(active.created_at)
    assert not wire.HasField("revoke_time") and not wire.HasField("expire_time")
    revoked = messages.signing_key(
        _key(
            status="revoked",
            revoked_at=datetime(2025, 2, 1, tzinfo=UTC),
            expires_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
    )
    wire = signing_keys_pb2.SigningKey.FromString(bytes(revoked))
    assert wire.revoke_time.seconds == int(revoked.revoked_at)
    assert wire.expire_time.seconds == int(revoked.expires_at)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {
            "status": "revoked",
            "name": "n",
            "revoked_at": datetime(2025, 2, 1, tzinfo=UTC),
            "expires_at": datetime(2026, 1, 1, tzinfo=UTC),
        },
    ],
)
def test_the_upb_key_the_hot_rpcs_send_reads_as_the_betterproto_one(
    changes: dict[str, object],
) -> None:
    """GetSigningKey's reply is built with upb: a client reads exactly what betterproto's
    builder (every other method's) would have sent."""
    key = _key(**changes)
    upb = messages.signing_key_upb(key)
    assert pb.SigningKey.FromString(upb.SerializeToString()) == messages.signing_key(key)
    assert upb.HasField("create_time") and upb.HasField("revoke_time") == bool(changes)


def test_a_key_past_its_expiry_is_expired_over_grpc_as_over_http() -> None:
    """The stored status says active; both messages say EXPIRED once expires_at has
    passed, as the HTTP JSON says expired (a client must not read such a key as usable)."""
    key = _key(expires_at=datetime(2025, 6, 1, tzinfo=UTC))
    assert key_json(key)["status"] == "expired"
    assert messages.signing_key(key).status == pb.KeyStatus.EXPIRED
    assert messages.signing_key_upb(key).status == signing_keys_pb2.KEY_STATUS_EXPIRED
    unexpired = _key(expires_at=datetime(9000, 1, 1, tzinfo=UTC))
    assert messages.signing_key(unexpired).status == pb.KeyStatus.ACTIVE


def test_a_key_read_again_gets_the_reply_built_once() -> None:
    replies = messages.KeyReplies()
    key = _key()
    first = replies.reply(key)
    assert replies.reply(key) is first
    assert replies.reply(dataclasses.replace(key)) is first, "an equal record is the same key"
    assert first == signing_keys_pb2.GetSigningKeyResponse(key=messages.signing_key_upb(key))


def test_a_changed_record_gets_a_reply_of_its_own() -> None:
    replies = messages.KeyReplies()
    key = _key()
    before = replies.reply(key)
    revoked = dataclasses.replace(
        key, status="revoked", revoked_at=datetime(2025, 3, 1, tzinfo=UTC)
    )
    after = replies.reply(revoked)
    assert after.key.status == signing_keys_pb2.KEY_STATUS_REVOKED
    assert before.key.status == signing_keys_pb2.KEY_STATUS_ACTIVE, "the first is left as it was"
    assert replies.reply(key) is before


def test_a_cached_reply_shows_the_key_expired_once_its_expiry_passes() -> None:
    """Kept by record, but the status shown is as of each read: a reply built while the key
    was active is not sent after its expiry."""
    expiry = datetime(2030, 1, 1, tzinfo=UTC)
    key = _key(expires_at=expiry)
    now = expiry.timestamp() - 1
    replies = messages.KeyReplies(clock=lambda: now)
    assert replies.reply(key).key.status == signing_keys_pb2.KEY_STATUS_ACTIVE
    now = expiry.timestamp()
    assert replies.reply(key).key.status == signing_keys_pb2.KEY_STATUS_EXPIRED


def test_the_replies_kept_are_bounded_the_oldest_going_first() -> None:
    replies = messages.KeyReplies(size=2)
    keys = [_key(id=f"kid-{n}") for n in range(3)]
    first = replies.reply(keys[0])
    for key in keys[1:]:
        replies.reply(key)
    assert len(replies) == 2
    assert replies.reply(keys[2]) is replies.reply(keys[2])
    assert replies.reply(keys[0]) is not first, "the oldest was forgotten and built again"
