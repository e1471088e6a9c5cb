#!/usr/bin/env bash
# PgBouncer >= 1.21 (the first with max_prepared_statements, which asyncpg's prepared
# statements need in transaction mode), from the distribution when it is recent enough:
#
#   Debian 13, Ubuntu 24.04: apt-get install pgbouncer           (1.24, 1.22)
#   Debian 12, Ubuntu 22.04: 1.18 / 1.16, too old: Debian 13's source package (with Debian's
#                            patches) is built and installed under PREFIX (/usr/local)
#
#   sudo deploy/pgbouncer/install-pgbouncer.sh        # then: pgbouncer --version
#
# Only Debian's archive is used (apt's own clients, a private list directory for the source:
# the machine's sources.list is not changed). The package's own service, if apt installed
# one, is left alone: deploy/README.md ("PgBouncer") says how to configure it.
set -euo pipefail
[[ $EUID -eq 0 ]] || { echo "run as root (sudo)" >&2; exit 1; }
MIN=1.21
PREFIX=${PREFIX:-/usr/local}
SOURCE_SUITE=${SOURCE_SUITE:-trixie}   # Debian 13: pgbouncer 1.24
export DEBIAN_FRONTEND=noninteractive

recent_enough() { [[ -n "$1" && "$1" != "(none)" ]] && dpkg --compare-versions "$1" ge "$MIN"; }

for found in "$PREFIX/bin/pgbouncer" /usr/sbin/pgbouncer; do
    if [[ -x "$found" ]]; then
        have=$("$found" --version | awk 'NR == 1 {print $2}')
        if recent_enough "$have"; then echo "$found is PgBouncer $have: nothing to do"; exit 0; fi
    fi
done

apt-get update -qq
candidate=$(apt-cache policy pgbouncer | awk '/Candidate:/ {print $2}')
if recent_enough "${candidate%%-*}"; then
    apt-get install -y -q pgbouncer
    exit 0
fi

echo "the distribution's pgbouncer is ${candidate:-missing}: building Debian $SOURCE_SUITE's" >&2
apt-get install -y -q --no-install-recommends build-essential pkg-config dpkg-dev \
    libevent-dev libssl-dev libc-ares-dev
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
echo "deb-src http://deb.debian.org/debian $SOURCE_SUITE main" > "$work/sources.list"
apt_private=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
             -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
apt-get "${apt_private[@]}" update -qq
chmod 777 "$work/src"   # apt fetches as _apt where it can
(cd "$work/src" && apt-get "${apt_private[@]}" source --download-only -q pgbouncer)
(cd "$work/src" && dpkg-source -x ./pgbouncer_*.dsc build >/dev/null)   # applies Debian's patches
cd "$work/src/build"
./configure --prefix="$PREFIX" --without-systemd --without-pam >/dev/null
make -j"$(nproc)" >/dev/null
make install >/dev/null
"$PREFIX/bin/pgbouncer" --version | head -1
