#!/usr/bin/env bash
# Patroni's on_role_change callback (deploy/patroni/patroni-vm*.yml): Patroni runs it as the
# postgres user with three arguments, ACTION ROLE SCOPE, after this member changed role.
#
# On the member that has just become primary, it moves the API's cache to a new epoch
# (bump_cache_epoch(): UPDATE cache_state, NOTIFY cache_epoch). Every API instance hears it, or
# reads the epoch when its LISTEN connection reconnects to the new primary, and from then on
# never reads a Redis key written before the switch: nothing the old primary had and the new one
# lacks (a commit cancelled while it waited for the standby, a write of the degraded,
# single-host time) can be served from the cache. Idempotent; a failure is logged, never fatal.
# The psql below runs inside an if: under -e its failure is retried, not fatal.
set -euo pipefail
action=${1:-} role=${2:-} scope=${3:-}
database=${TRAVEL_DATABASE:-travel}
case "$role" in
    master | primary) ;;
    *) exit 0 ;;
esac
for attempt in 1 2 3 4 5 6 7 8 9 10; do
    # Until the promotion finishes the server may still be read-only: retry for a few seconds.
    if out=$(psql -X -q -At -h "${PGHOST:-/var/run/postgresql}" -p "${PGPORT:-5432}" -d "$database" \
        -c "SELECT bump_cache_epoch()" 2>&1); then
        echo "on-role-change: $action $role $scope: cache epoch now $out"
        exit 0
    fi
    sleep 0.5
done
echo "on-role-change: $action $role $scope: could not bump the cache epoch: $out" >&2
exit 0
