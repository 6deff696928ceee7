-- CockroachDB multi-region setup for the signing_keys database (reference for operators).
--
-- `signing-keys migrate` applies these statements by itself, after the portable migrations,
-- when `SELECT version()` says CockroachDB; it builds them from SIGNING_KEYS_REGIONS with
-- service/store/cockroach.py:multiregion_statements() (service/store/migrations.py decides
-- which region is primary). This file is those statements written out for the three example
-- regions, aws-us-east-1 primary, as they apply to a database that is not multi-region yet;
-- tests/store/test_cockroach.py checks that the two agree. On a re-run the service first reads
-- the database's state (SHOW REGIONS FROM DATABASE, SHOW SURVIVAL GOAL FROM DATABASE, SHOW
-- TABLES) and issues only the statements that differ: SET PRIMARY REGION on a database that
-- already has it takes the switch-primary path and rewrites zone configurations, and it and
-- SURVIVE REGION FAILURE are refused once anyone has run CONFIGURE ZONE.
-- Run them by hand only to set up a new database outside the service (as a member of admin):
--
--   cockroach sql --url "$DSN" --file sql/cockroach/multiregion.sql
--
-- Prerequisites (https://www.cockroachlabs.com/docs/stable/multiregion-overview):
-- * every node is started with `--locality=cloud=<cloud>,region=<region>,zone=<zone>`, where
--   <region> is exactly one of our region names (`SHOW REGIONS FROM CLUSTER` lists them);
-- * three or more regions for SURVIVE REGION FAILURE
--   (https://www.cockroachlabs.com/docs/stable/multiregion-survival-goals);
-- * each statement runs on its own, not inside an explicit transaction
--   (https://www.cockroachlabs.com/docs/stable/online-schema-changes).
-- Do not re-run the whole file on a database already set up: see above.

-- The primary region must be set before other regions can be added
-- (https://www.cockroachlabs.com/docs/stable/alter-database).
ALTER DATABASE "signing_keys" SET PRIMARY REGION "aws-us-east-1";
ALTER DATABASE "signing_keys" ADD REGION IF NOT EXISTS "gcp-us-central1";
ALTER DATABASE "signing_keys" ADD REGION IF NOT EXISTS "aws-eu-west-1";

-- Three regions: keep serving reads and writes when a whole region is lost.
ALTER DATABASE "signing_keys" SURVIVE REGION FAILURE;

-- Read on every request in every region, written rarely: consistent local reads everywhere
-- (https://www.cockroachlabs.com/docs/stable/table-localities#global-tables).
ALTER TABLE "signing_keys" SET LOCALITY GLOBAL;
ALTER TABLE "access_tokens" SET LOCALITY GLOBAL;
-- Read by the locality router's probe in every region, never written on CockroachDB.
ALTER TABLE "heartbeat" SET LOCALITY GLOBAL;
-- Read by anonymous JWK Set requests in every region, written by operators now and then.
ALTER TABLE "environment_settings" SET LOCALITY GLOBAL;

-- Written only inside the key-write transaction, read rarely: stay in the primary region
-- (CockroachDB's default, stated so that a re-run restores it). See the comment on
-- PRIMARY_REGION_TABLES in service/store/cockroach.py for why not REGIONAL BY ROW.
ALTER TABLE "audit_events" SET LOCALITY REGIONAL BY TABLE IN PRIMARY REGION;
ALTER TABLE "idempotency_keys" SET LOCALITY REGIONAL BY TABLE IN PRIMARY REGION;
