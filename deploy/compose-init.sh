#!/usr/bin/env bash
# docker-compose.yml's `crdb-init`: initialise the CockroachDB cluster once, wait until every
# node has joined with its region, then create the database and its two roles. Safe to run
# again: an initialised cluster, an existing database and existing roles are fine.
# Runs in the CockroachDB image, in --insecure mode (local demonstration only).
#
# The roles: `signing_keys_migrator` runs `signing-keys migrate` (DDL; a member of admin,
# which SHOW REGIONS and the multi-region ALTER DATABASE statements need), and
# `signing_keys_app` is what the service instances connect as: data only (SELECT, INSERT,
# UPDATE, DELETE on the tables the migrator creates), no DDL.
set -euo pipefail

host="${COCKROACH_HOST:?COCKROACH_HOST is required}"
database="${COCKROACH_DATABASE:-signing_keys}"
regions="${COCKROACH_REGIONS:?COCKROACH_REGIONS is required: the regions every node must join with}"
attempts="${INIT_ATTEMPTS:-60}"
interval="${INIT_INTERVAL:-1}"
organization="${COCKROACH_ORGANIZATION:-}"
migrator="signing_keys_migrator"
app="signing_keys_app"

if [[ ! "${database}" =~ ^[a-z_][a-z0-9_]*$ ]]; then
    echo "crdb-init: COCKROACH_DATABASE must be a plain lower-case identifier" >&2
    exit 2
fi

sql() {
    cockroach sql --insecure --host="${host}" "$@"
}

# https://www.cockroachlabs.com/docs/stable/cockroach-init: fails until the node listens, and
# says "already been initialized" on a second run.
for ((i = 1; i <= attempts; i++)); do
    if output="$(cockroach init --insecure --host="${host}" 2>&1)"; then
        echo "crdb-init: cluster initialised"
        break
    fi
    if grep -q "already been initialized" <<<"${output}"; then
        echo "crdb-init: cluster was already initialised"
        break
    fi
    if ((i == attempts)); then
        echo "crdb-init: cockroach init did not succeed: ${output}" >&2
        exit 1
    fi
    sleep "${interval}"
done

# `ALTER DATABASE … ADD REGION` fails with "region … does not exist" for a region none of
# whose nodes has joined yet: wait until the cluster lists every region `migrate` will add.
IFS=',' read -r -a wanted <<<"${regions}"
for ((i = 1; i <= attempts; i++)); do
    listed="$(sql --format=csv --execute="SELECT region FROM [SHOW REGIONS FROM CLUSTER]" 2>/dev/null || true)"
    missing=()
    for region in "${wanted[@]}"; do
        if ! grep -qx -- "${region}" <<<"${listed}"; then
            missing+=("${region}")
        fi
    done
    if ((${#missing[@]} == 0)); then
        echo "crdb-init: every region has joined: ${regions}"
        break
    fi
    if ((i == attempts)); then
        echo "crdb-init: regions not in the cluster after ${attempts} tries: ${missing[*]}" >&2
        exit 1
    fi
    sleep "${interval}"
done

if [[ -n "${COCKROACH_LICENSE:-}" ]]; then
    # The licence is passed on stdin, so it shows in no process list and no log line.
    printf "SET CLUSTER SETTING cluster.organization = '%s';\nSET CLUSTER SETTING enterprise.license = '%s';\n" \
        "${organization//\'/\'\'}" "${COCKROACH_LICENSE//\'/\'\'}" |
        sql >/dev/null
    echo "crdb-init: licence applied"
else
    # CockroachDB counts the grace period from this cluster's `cockroach init`; the data
    # volumes keep the cluster (and its clock) across `docker compose down`.
    echo "crdb-init: no licence: CockroachDB's 7-day grace period runs from this cluster's init;" \
        "'docker compose down -v' deletes the cluster and starts a new one"
fi

sql <<SQL
CREATE DATABASE IF NOT EXISTS ${database};
CREATE USER IF NOT EXISTS ${migrator};
CREATE USER IF NOT EXISTS ${app};
GRANT admin TO ${migrator};
USE ${database};
ALTER DEFAULT PRIVILEGES FOR ROLE ${migrator} IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ${app};
SQL
echo "crdb-init: database ${database} ready (roles ${migrator}: DDL, ${app}: data); regions:"
sql --execute="SHOW REGIONS FROM CLUSTER"
