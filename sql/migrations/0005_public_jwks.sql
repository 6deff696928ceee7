-- Per-environment settings, set by operators: for now only whether the environment's JWK
-- Set is served without credentials (GET /v1/public/environments/{id}/jwks.json), for
-- verifiers that cannot send ours (Envoy remote_jwks, Istio, JOSE remote key sets).
-- No row means the defaults: nothing public. Whoever changes a row sets updated_at = now().
-- One statement: CockroachDB advises one schema change per transaction.
-- Portable SQL: runs unchanged on PostgreSQL (>= 13) and CockroachDB (>= 23.1).

CREATE TABLE IF NOT EXISTS environment_settings (
    environment_id TEXT NOT NULL PRIMARY KEY,
    public_jwks BOOLEAN NOT NULL DEFAULT false,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
