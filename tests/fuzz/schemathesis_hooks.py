"""Schemathesis hooks for the OpenAPI fuzz run: the rules that JSON Schema cannot state
portably, so that "a schema-valid request is accepted" and "a schema-invalid one is
refused" stay checked promises everywhere else.

Loaded by the ``hooks`` setting of ``tests/fuzz/schemathesis.toml``.
"""

from __future__ import annotations

import time
from typing import Any

import schemathesis

IMPORT_OPERATION = "POST /system/v1/signing-keys/import"
# An update's expiry is compared with the stored key's (no later, and in the future); a
# rotation's not_before with the old key's expiry: relations with stored state.
STATEFUL_EXPIRY_OPERATIONS = frozenset(
    {"PATCH /system/v1/signing-keys/{id}", "POST /system/v1/signing-keys/{id}/rotate"}
)
CONSISTENCY_HEADER = "X-Consistency-Token"
ENVIRONMENT_HEADER = "X-Environment-Id"


@schemathesis.hook
def filter_body(context: schemathesis.HookContext, body: Any) -> bool:
    """A key's ``name`` must be printable text (``str.isprintable``: no control, format,
    private-use, unassigned or separator character other than the space). The document's
    pattern says the portable part (no C0/C1 controls, no line separators); the rest needs
    Unicode categories, which an ECMA-262 pattern without flags cannot name. Such bodies
    are dropped rather than sent as "valid"."""
    name = body.get("name") if isinstance(body, dict) else None
    return (not isinstance(name, str) or name.isprintable()) and not _expired(body)


def _expired(body: Any) -> bool:
    """An ``expires_at`` that has passed is refused (400): a key is never stored already
    expired. "Not before now" moves with the clock, which no schema can state; such bodies
    are dropped rather than sent as "valid"."""
    expires_at = body.get("expires_at") if isinstance(body, dict) else None
    if isinstance(expires_at, str) and expires_at.isascii() and expires_at.isdigit():
        expires_at = int(expires_at)
    if isinstance(expires_at, float) and expires_at.is_integer():
        expires_at = int(expires_at)
    return (
        isinstance(expires_at, int)
        and not isinstance(expires_at, bool)
        and (expires_at <= time.time() + 60)
    )


@schemathesis.hook
def filter_headers(context: schemathesis.HookContext, headers: Any) -> bool:
    """Whitespace around a header's value is not part of it (RFC 9110, 5.5): HTTP strips it
    before the service reads the value, so ``Idempotency-Key: "k "`` arrives as the valid
    ``k``, and a case sent as "invalid" would be a valid one. Such cases are dropped."""
    values = headers.values() if isinstance(headers, dict) else ()
    return not any(isinstance(value, str) and value != value.strip(" \t") for value in values)


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext,
    failure: Any,
    case: Any,
    response: schemathesis.Response,
) -> bool:
    """Whether a PEM text or a JWK object is a usable public key is beyond JSON Schema, and
    so is whether a consistency token names this database: a schema-valid import, or a
    request carrying a made-up token, may be refused with 400. Every other check still
    applies to them."""
    refused = response.status_code == 400 and type(failure).__name__ == "RejectedPositiveData"
    refused_import = refused and case.operation.label == IMPORT_OPERATION
    # A consistency token of the right shape still names a database (its system identifier):
    # one made up names another, and is refused as such.
    refused_token = refused and CONSISTENCY_HEADER in (case.headers or {})
    # The header, the query parameter and the body's or path's environment_id may each name
    # the environment: two that name different ones are refused (a relation between
    # parameters, which JSON Schema cannot state).
    refused_choice = refused and len(set(_environments(case))) > 1
    # An expiry already passed (the coverage phase's boundary values: 0, …) is refused as
    # _expired says, and named as the field at fault.
    refused_expiry = refused and _expired(case.body)
    # A list's cursor is opaque and names a position this service issued for the same
    # filters (and never beside ``page``): one made up is refused, as a made-up token is.
    refused_cursor = refused and "cursor" in (case.query or {})
    # A key's expires_at must be later than its not_before (a relation between members), and
    # an update or a rotation is checked against the stored key.
    body = case.body if isinstance(case.body, dict) else {}
    refused_times = refused and (
        _starts_after_expiry(body)
        or (case.operation.label in STATEFUL_EXPIRY_OPERATIONS and body.keys() & _TIMES)
    )
    return not (
        refused_import
        or refused_token
        or refused_choice
        or refused_expiry
        or refused_cursor
        or refused_times
    )


_TIMES = frozenset({"expires_at", "not_before"})


def _starts_after_expiry(body: dict[str, Any]) -> bool:
    try:
        return float(body["expires_at"]) <= float(body["not_before"])
    except (KeyError, TypeError, ValueError):
        return False


def _environments(case: Any) -> list[str]:
    """The environments a case names (an empty value names none)."""
    body = case.body if isinstance(case.body, dict) else {}
    named = [
        (case.headers or {}).get(ENVIRONMENT_HEADER),
        (case.query or {}).get("environment_id"),
        (case.path_parameters or {}).get("environment_id"),
        body.get("environment_id"),
    ]
    return [value for value in named if isinstance(value, str) and value]
