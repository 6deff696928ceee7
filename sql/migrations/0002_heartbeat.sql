-- The replication heartbeat: one row that the locality router of every instance updates on
-- the PostgreSQL primary every probe interval. A standby's data is then at most as old as
-- the newest heartbeat it has replayed (its now() minus the row's `at`), a bound that keeps
-- growing while nothing reaches it, even when no instance can see the primary.
-- On CockroachDB the table is GLOBAL and nobody writes it: reads there are consistent, and
-- the probe reads the row only to prove that the gateway still reaches its ranges.
-- Portable SQL: runs unchanged on PostgreSQL (>= 13) and CockroachDB (>= 23.1).

CREATE TABLE IF NOT EXISTS heartbeat (
    id       INT         NOT NULL PRIMARY KEY CHECK (id = 1),
    -- The writer's now() (its transaction start): everything the primary had committed
    -- before this moment is in the WAL before the heartbeat itself.
    at       TIMESTAMPTZ NOT NULL,
    -- PostgreSQL: the timeline of the primary that wrote the row, so that a standby whose
    -- walreceiver is not running still tells which timeline its data came from.
    timeline BIGINT
);

INSERT INTO heartbeat (id, at) VALUES (1, now()) ON CONFLICT (id) DO NOTHING;
