-- Access tokens carry the time of their last change, so that every instance can hold them
-- all in memory and poll for what changed, as it does for keys: checking a credential then
-- costs no database read, whether or not its id exists.
-- Whoever changes a token (revoking it: revoked_at = now()) sets updated_at = now() too.
-- One statement, no index: CockroachDB advises one schema change per transaction, and
-- tokens are few enough for a poll to scan them.
-- Portable SQL: runs unchanged on PostgreSQL (>= 13) and CockroachDB (>= 23.1).

ALTER TABLE access_tokens ADD COLUMN IF NOT EXISTS updated_at TIMESTAMPTZ NOT NULL DEFAULT now();
