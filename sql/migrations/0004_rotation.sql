-- Safe rotation: a key may carry the moment it starts signing (not_before), and the key it
-- was rotated to (rotated_to), so that a key is rotated at most once.
-- Safe while regions and releases roll out one by one: both columns are nullable with no
-- default (no table rewrite, and an older release's inserts, which name their columns, leave
-- them NULL: no not_before, not rotated), and an older release's reads name their columns,
-- so it never sees them. An older release does not refuse a token signed before a key's
-- not_before; keys with a not_before are made only through the new API.
-- The audit trail gains actions (rotate, update): the CHECK that listed the three old ones is
-- dropped (under its PostgreSQL and its CockroachDB name) rather than replaced, so that no
-- release's audit insert can fail on a list another release wrote; the service's own type
-- names the actions it writes.
-- Portable SQL: runs unchanged on PostgreSQL (>= 13) and CockroachDB (>= 23.1).

ALTER TABLE signing_keys ADD COLUMN IF NOT EXISTS not_before TIMESTAMPTZ;
ALTER TABLE signing_keys ADD COLUMN IF NOT EXISTS rotated_to TEXT;
ALTER TABLE audit_events DROP CONSTRAINT IF EXISTS audit_events_action_check;
ALTER TABLE audit_events DROP CONSTRAINT IF EXISTS check_action;
