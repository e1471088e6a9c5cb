#!/usr/bin/env bash
# Restore a dump made by backup.sh into a NEW database, then check that the money
# reconciles: every card's balance = opening_balance + its recharges - its fares charged.
# Exits non-zero if the restore fails or any card disagrees (listing the first ones).
#
#   restore.sh DUMP_FILE NEW_DATABASE
#
# It never touches an existing database: it refuses one that exists. Switching the API to
# the restored database is a separate, deliberate step (deploy/README.md, "Restore").
# The connection is libpq's environment (PGHOST, PGPORT, PGUSER, PGPASSWORD) as a role
# that may create databases; the new database belongs to RESTORE_OWNER (default
# travel_owner). PG_BIN_DIR: where pg_restore and psql are, when they are not on PATH.
set -euo pipefail

usage() {
    echo "usage: $0 DUMP_FILE NEW_DATABASE" >&2
    exit 2
}
[[ $# -eq 2 && -f "$1" && -n "$2" ]] || usage
DUMP=$1
TARGET=$2
RESTORE_OWNER=${RESTORE_OWNER:-travel_owner}
if [[ -n "${PG_BIN_DIR-}" ]]; then PATH="$PG_BIN_DIR:$PATH"; fi

# A checksum written by backup.sh beside the dump must match (a dump copied back from the
# backup host, say).
if [[ -f "$DUMP.sha256" ]]; then
    (cd "$(dirname "$DUMP")" && sha256sum --quiet --check "$(basename "$DUMP").sha256")
fi

# psql interpolates :'name' (quoted safely) in scripts, not in -c: hence stdin.
exists=$(printf "SELECT 1 FROM pg_database WHERE datname = :'name'\n" \
         | psql -X -d postgres -tAq -v ON_ERROR_STOP=1 -v name="$TARGET" -f -)
if [[ -n "$exists" ]]; then
    echo "database $TARGET exists: restore into a new one" >&2
    exit 1
fi
printf 'CREATE DATABASE :"name" OWNER :"owner" TEMPLATE template0\n' \
    | psql -X -d postgres -q -v ON_ERROR_STOP=1 -v name="$TARGET" -v owner="$RESTORE_OWNER" -f -

# All or nothing: a restore that fails half-way leaves an empty database, not a partial one.
pg_restore --exit-on-error --single-transaction --no-owner --role="$RESTORE_OWNER" \
           --dbname="$TARGET" "$DUMP"

# The reconciliation, over every card. Cards with neither recharges nor trips are checked
# too (their balance must be their opening balance).
mismatches=$(psql -X -d "$TARGET" -tAq -v ON_ERROR_STOP=1 <<'SQL'
SELECT format('card %s: balance %s, expected %s', c.card_id, c.balance, expected)
FROM cards c
CROSS JOIN LATERAL (
    SELECT c.opening_balance
           + coalesce((SELECT sum(r.amount) FROM recharges r WHERE r.card_id = c.card_id), 0)
           - coalesce((SELECT sum(t.fare_charged) FROM trips t WHERE t.card_id = c.card_id), 0)
           AS expected
) e
WHERE c.balance <> e.expected
ORDER BY c.card_id
SQL
)
cards=$(psql -X -d "$TARGET" -tAq -v ON_ERROR_STOP=1 -c 'SELECT count(*) FROM cards')
if [[ -n "$mismatches" ]]; then
    echo "restored $TARGET, but $(wc -l <<< "$mismatches") of $cards cards do not reconcile:" >&2
    head -n 20 <<< "$mismatches" >&2
    exit 1
fi
echo "restored $TARGET from $DUMP: $cards cards reconcile"
