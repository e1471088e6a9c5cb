#!/usr/bin/env bash
# Apply the API's schema (sql/ of SOURCE_DIR) as the owner role, then the runtime role's
# grants. Run it before the first start of the API and before starting a new version:
# the API applies the schema itself only when its role owns it, and travel_api does not.
#
#   sudo -u postgres deploy/vm3-postgres/migrate.sh SOURCE_DIR      (on VM3, local socket)
#
# The connection is libpq's environment, as for psql: PGHOST (default: the local socket),
# PGPORT, PGUSER, PGPASSWORD, PGDATABASE (default travel). The user must be able to SET
# ROLE to OWNER_ROLE (the superuser can). Also read:
#   OWNER_ROLE  owns what is created (default travel_owner)
#   API_ROLE    gets grants.sql's privileges (default travel_api)
#   PYTHON      a Python 3.10+ with asyncpg (default python3; Ubuntu: apt install python3-asyncpg)
#   PG_BIN_DIR  where psql is, when it is not on PATH
set -euo pipefail

usage() {
    echo "usage: $0 SOURCE_DIR   (a checkout of the repository, holding travel/database.py and sql/)" >&2
    exit 2
}
[[ $# -eq 1 && -f "$1/travel/database.py" && -d "$1/sql" ]] || usage
SOURCE_DIR=$(realpath "$1")
HERE=$(dirname "$(realpath "$0")")
export PGDATABASE=${PGDATABASE:-travel}
OWNER_ROLE=${OWNER_ROLE:-travel_owner}
API_ROLE=${API_ROLE:-travel_api}
PYTHON=${PYTHON:-python3}
if [[ -n "${PG_BIN_DIR-}" ]]; then PATH="$PG_BIN_DIR:$PATH"; fi

# The API's own code applies the schema (travel.database.apply_schema: the same files, the same digest
# and advisory lock as the API's start), so what the API checks at start is what is here.
PYTHONPATH="$SOURCE_DIR" "$PYTHON" - "$OWNER_ROLE" <<'PY'
import asyncio
import sys

import asyncpg

from travel import database


async def main(owner: str) -> None:
    conn = await asyncpg.connect()  # libpq's PG* environment
    try:
        await conn.execute("SELECT set_config('role', $1, false)", owner)
        applied = await database.apply_schema(conn)
        print("schema applied" if applied else "schema already current", "as", owner)
    finally:
        await conn.close()


asyncio.run(main(sys.argv[1]))
PY

psql -X -q -v ON_ERROR_STOP=1 -v owner_role="$OWNER_ROLE" -v api_role="$API_ROLE" \
     -f "$HERE/grants.sql"
echo "grants applied to $API_ROLE"
