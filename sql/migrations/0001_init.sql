-- Signing keys, audit events, access tokens and idempotency records.
-- Portable SQL: runs unchanged on PostgreSQL (>= 13) and CockroachDB (>= 23.1).
-- Every write the service makes is idempotent by construction (server-chosen ids,
-- ON CONFLICT), so a write retried after an ambiguous commit lands exactly once.

CREATE TABLE IF NOT EXISTS signing_keys (
    id             TEXT        NOT NULL PRIMARY KEY,
    environment_id TEXT        NOT NULL,
    algorithm      TEXT        NOT NULL CHECK (algorithm IN ('RS256', 'ES256', 'EdDSA')),
    -- SubjectPublicKeyInfo DER: public material only. No private key is ever stored.
    public_key     BYTEA       NOT NULL,
    fingerprint    TEXT        NOT NULL,
    status         TEXT        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    source         TEXT        NOT NULL CHECK (source IN ('generated', 'imported')),
    name           TEXT,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    revoked_at     TIMESTAMPTZ,
    expires_at     TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS signing_keys_by_environment
    ON signing_keys (environment_id, created_at, id);

-- The change poller reads "everything updated since T minus an overlap window".
CREATE INDEX IF NOT EXISTS signing_keys_by_update ON signing_keys (updated_at, id);

CREATE TABLE IF NOT EXISTS audit_events (
    id             TEXT        NOT NULL PRIMARY KEY,
    environment_id TEXT        NOT NULL,
    key_id         TEXT,
    action         TEXT        NOT NULL CHECK (action IN ('create', 'import', 'revoke')),
    actor          TEXT        NOT NULL,
    api            TEXT        NOT NULL,
    request_id     TEXT,
    created_at     TIMESTAMPTZ NOT NULL
);

CREATE INDEX IF NOT EXISTS audit_events_by_environment
    ON audit_events (environment_id, created_at);

CREATE TABLE IF NOT EXISTS access_tokens (
    id           TEXT        NOT NULL PRIMARY KEY,
    -- SHA-256 of a 256-bit random secret: high entropy makes a slow hash unnecessary.
    secret_hash  BYTEA       NOT NULL,
    scopes       TEXT[]      NOT NULL,
    environments TEXT[]      NOT NULL,
    name         TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS idempotency_keys (
    environment_id TEXT        NOT NULL,
    key            TEXT        NOT NULL,
    request_hash   BYTEA       NOT NULL,
    signing_key_id TEXT        NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (environment_id, key)
);
