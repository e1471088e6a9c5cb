#!/usr/bin/env bash
# VM3: PostgreSQL for the Travel Recharge API, from Ubuntu's package (default) or in Docker,
# then the roles, the database, the schema (as the owner) and the runtime role's grants.
#
#   sudo deploy/vm3-postgres/install.sh SOURCE_DIR            # apt install postgresql
#   sudo deploy/vm3-postgres/install.sh --docker SOURCE_DIR   # the postgres:16 container
#
# SOURCE_DIR is a checkout of the repository (its sql/ and travel/database.py are applied). Safe to run
# again, and that is the upgrade path too: the config is installed again (PostgreSQL
# restarted only if it changed), passwords are kept, the schema is upgraded in place.
set -euo pipefail

usage() {
    echo "usage: sudo $0 [--docker] SOURCE_DIR   (a checkout of the repository)" >&2
    exit 2
}

MODE=package
if [[ "${1-}" == --docker ]]; then
    MODE=docker
    shift
fi
[[ $# -eq 1 && -f "$1/travel/database.py" && -d "$1/sql" ]] || usage
SOURCE_DIR=$(realpath "$1")
[[ $EUID -eq 0 ]] || { echo "run as root (sudo)" >&2; exit 1; }
HERE=$(dirname "$(realpath "$0")")
# shellcheck source=deploy/common.sh
. "$HERE/../common.sh"

# python3-asyncpg: migrate.sh applies the schema with the API's own code (travel/database.py).
install_packages "$MODE" "postgresql python3-asyncpg openssl" "postgresql-client python3-asyncpg openssl"
# Passwords are made once, kept in root-only files.
API_PASSWORD_FILE=$(password_file /root/travel_api.pgpass)

if [[ $MODE == package ]]; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    conf=/etc/postgresql/$version/main
    changed=no
    install_conf() {  # install_conf SOURCE TARGET: copy if different, note the change
        if ! cmp -s "$1" "$2"; then
            install -o postgres -g postgres -m 0640 "$1" "$2"
            changed=yes
        fi
    }
    [[ -f "$conf/pg_hba.conf.dpkg-orig" ]] || cp "$conf/pg_hba.conf" "$conf/pg_hba.conf.dpkg-orig"
    install -d -o postgres -g postgres -m 0755 "$conf/conf.d"
    install_conf "$HERE/postgresql.conf" "$conf/conf.d/travel.conf"
    install_conf "$HERE/pg_hba.conf" "$conf/pg_hba.conf"
    systemctl enable "postgresql@$version-main"
    # listen_addresses and shared_buffers take effect only at a restart; skip it when
    # nothing changed, so that re-running this for a schema upgrade does not cut clients.
    if [[ $changed == yes ]]; then
        systemctl restart "postgresql@$version-main"
    fi
    # The superuser is the postgres OS user over the local socket (peer authentication).
    export PGHOST=/var/run/postgresql PGUSER=postgres
    as_superuser() { runuser -u postgres -- "$@"; }
    runuser -u postgres -- test -r "$SOURCE_DIR/travel/database.py" \
        || { echo "the postgres user cannot read $SOURCE_DIR: clone it somewhere readable" >&2; exit 1; }
else
    SUPERUSER_PASSWORD_FILE=$(password_file /root/postgres-superuser.password)
    POSTGRES_PASSWORD=$(cat "$SUPERUSER_PASSWORD_FILE") \
        docker compose -f "$HERE/docker-compose.yml" up -d
    # The container's superuser over loopback, with its password (pg_hba.conf's second line).
    export PGHOST=127.0.0.1 PGUSER=postgres PGPASSWORD
    PGPASSWORD=$(cat "$SUPERUSER_PASSWORD_FILE")
    as_superuser() { "$@"; }
fi

for _ in $(seq 60); do
    as_superuser pg_isready -q -d postgres && break
    sleep 1
done

# Roles and database; the password goes over stdin, never on a command line.
{
    printf '\\set owner_role travel_owner\n\\set api_role travel_api\n\\set database travel\n'
    printf '\\set api_password %s\n' "$(cat "$API_PASSWORD_FILE")"
    cat "$HERE/roles.sql"
} | as_superuser psql -X -q -d postgres -f -

# The schema as travel_owner, then the grants of travel_api.
as_superuser env PGDATABASE=travel "$HERE/migrate.sh" "$SOURCE_DIR"

echo "PostgreSQL is ready. On VM1:"
echo "  DATABASE_URL=postgresql://travel_api:<password>@192.168.100.30:5432/travel"
echo "  with the password of $API_PASSWORD_FILE"
