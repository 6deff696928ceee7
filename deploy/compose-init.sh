#!/usr/bin/env bash
# docker-compose.yml's `crdb-init`: initialise the CockroachDB cluster once, then create the
# database. Safe to run again: an initialised cluster and an existing database are fine.
# Runs in the CockroachDB image, in --insecure mode (local demonstration only).
set -euo pipefail

host="${COCKROACH_HOST:?COCKROACH_HOST is required}"
database="${COCKROACH_DATABASE:-signing_keys}"
attempts="${INIT_ATTEMPTS:-60}"
organization="${COCKROACH_ORGANIZATION:-}"

if [[ ! "${database}" =~ ^[a-z_][a-z0-9_]*$ ]]; then
    echo "crdb-init: COCKROACH_DATABASE must be a plain lower-case identifier" >&2
    exit 2
fi

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
    sleep 1
done

for ((i = 1; i <= attempts; i++)); do
    if cockroach sql --insecure --host="${host}" --execute="SELECT 1" >/dev/null 2>&1; then
        break
    fi
    if ((i == attempts)); then
        echo "crdb-init: SQL is not answering on ${host}" >&2
        exit 1
    fi
    sleep 1
done

if [[ -n "${COCKROACH_LICENSE:-}" ]]; then
    # The licence is passed on stdin, so it shows in no process list and no log line.
    printf "SET CLUSTER SETTING cluster.organization = '%s';\nSET CLUSTER SETTING enterprise.license = '%s';\n" \
        "${organization//\'/\'\'}" "${COCKROACH_LICENSE//\'/\'\'}" |
        cockroach sql --insecure --host="${host}" >/dev/null
    echo "crdb-init: licence applied"
fi

cockroach sql --insecure --host="${host}" --execute="CREATE DATABASE IF NOT EXISTS ${database}"
echo "crdb-init: database ${database} ready; regions in the cluster:"
cockroach sql --insecure --host="${host}" --execute="SHOW REGIONS FROM CLUSTER"
