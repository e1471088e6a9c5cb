#!/usr/bin/env bash
# Dump the travel database (pg_dump -Fc), check the dump reads back, copy it to another
# host, keep the last KEEP_DAYS days here. Run daily by travel-backup.timer as postgres on
# VM3; prints the dump's path on success.
#
#   backup.sh
#
# The connection is libpq's environment (as for psql): PGHOST, PGPORT, PGUSER, PGPASSWORD,
# PGDATABASE (default travel); on VM3 the postgres user over the local socket needs none.
# Also read (the timer's unit takes them from /etc/travel-backup/env):
#   BACKUP_DIR     where dumps are kept (default /var/backups/travel)
#   BACKUP_REMOTE  rsync target on another host, e.g. backup@192.168.100.40:/srv/backups/travel/;
#                  empty: keep the dump here only (and say so: a backup on the same disk as
#                  the database is not a backup against losing the VM)
#   KEEP_DAYS      local dumps older than this are deleted (default 14)
#   PG_BIN_DIR     where pg_dump and pg_restore are, when they are not on PATH (a pg_dump
#                  at least as new as the server)
set -euo pipefail

export PGDATABASE=${PGDATABASE:-travel}
BACKUP_DIR=${BACKUP_DIR:-/var/backups/travel}
BACKUP_REMOTE=${BACKUP_REMOTE-}
KEEP_DAYS=${KEEP_DAYS:-14}
if [[ -n "${PG_BIN_DIR-}" ]]; then PATH="$PG_BIN_DIR:$PATH"; fi

umask 077  # dumps hold every user's personal data
mkdir -p "$BACKUP_DIR"
name="$PGDATABASE-$(date -u +%Y%m%dT%H%M%SZ).dump"
partial="$BACKUP_DIR/.$name.partial"
trap 'rm -f "$partial"' EXIT

# One consistent snapshot (pg_dump's single repeatable-read transaction), compressed,
# in the custom format pg_restore can restore selectively and in parallel.
pg_dump --format=custom --compress=6 --file="$partial" --dbname="$PGDATABASE"
# A dump that pg_restore cannot list is no backup: fail now, not on the day it is needed.
pg_restore --list "$partial" > /dev/null
mv "$partial" "$BACKUP_DIR/$name"
(cd "$BACKUP_DIR" && sha256sum "$name" > "$name.sha256")

if [[ -n "$BACKUP_REMOTE" ]]; then
    # Dump first, checksum second: the remote side never holds a checksum without its dump.
    rsync --timeout=300 --partial "$BACKUP_DIR/$name" "$BACKUP_DIR/$name.sha256" "$BACKUP_REMOTE"
else
    echo "BACKUP_REMOTE is not set: $name is kept on this host only" >&2
fi

find "$BACKUP_DIR" -maxdepth 1 -name "$PGDATABASE-*.dump*" -mtime "+$KEEP_DAYS" -delete
echo "$BACKUP_DIR/$name"
