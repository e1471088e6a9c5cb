#!/usr/bin/env bash
# VM1: install or upgrade the Travel Recharge API as a systemd service on a unix socket,
# with nginx in front of it on 192.168.100.10:8000 (nginx.conf beside this script).
#
#   sudo deploy/vm1-api/install.sh SOURCE_DIR
#
# SOURCE_DIR is a checkout of this repository (the directory holding server.py). Safe to run
# again: an upgrade is `git pull` in SOURCE_DIR, then this script, which restarts the service.
# It never overwrites an existing /etc/travel-recharge-api/env (it holds the passwords).
set -euo pipefail

APP_USER=travel
APP_DIR=/opt/travel-recharge-api
CONF_DIR=/etc/travel-recharge-api
UNIT=travel-recharge-api.service
SOCKET=/run/travel-recharge-api/api.sock  # as in env.example, nginx.conf and the unit's RuntimeDirectory

usage() {
    echo "usage: sudo $0 SOURCE_DIR   (a checkout of the repository, holding server.py)" >&2
    exit 2
}

[[ $# -eq 1 ]] || usage
SOURCE_DIR=$(realpath "$1")
[[ -f "$SOURCE_DIR/server.py" && -f "$SOURCE_DIR/requirements.txt" ]] || usage
[[ $EUID -eq 0 ]] || { echo "run as root (sudo)" >&2; exit 1; }
HERE=$(dirname "$(realpath "$0")")

# python3-venv: Ubuntu's python3 has no ensurepip without it. rsync copies the code,
# openssl makes the admin token, curl checks the health endpoint at the end, nginx fronts it.
apt-get update -q
apt-get install -y -q python3 python3-venv rsync openssl curl nginx

# A system user with no shell and no home to log into: it only runs the service.
if ! id -u "$APP_USER" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir "$APP_DIR" --no-create-home \
            --shell /usr/sbin/nologin "$APP_USER"
fi

# The code belongs to root and is only readable by the service: a compromised process
# cannot rewrite what it will run next time. .venv is built here, so the copy leaves it be.
install -d -o root -g root -m 0755 "$APP_DIR"
rsync -a --delete --chown=root:root --chmod=D755,F644 \
      --exclude .git/ --exclude .venv/ --exclude .data/ --exclude __pycache__/ \
      --exclude .pytest_cache/ --exclude bench/results/ \
      "$SOURCE_DIR"/ "$APP_DIR"/

# A venv of its own, made again only when it no longer runs (its Python was upgraded away
# under it); pip install is idempotent and keeps the pins of requirements.txt.
if [[ ! -x "$APP_DIR/.venv/bin/python" ]] || ! "$APP_DIR/.venv/bin/python" -c 'import sys' 2>/dev/null; then
    rm -rf "$APP_DIR/.venv"
    python3 -m venv "$APP_DIR/.venv"
fi
"$APP_DIR/.venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$APP_DIR/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$APP_DIR/requirements.txt"
# The service runs with a read-only tree (ProtectSystem=strict): compile the bytecode now.
"$APP_DIR/.venv/bin/python" -m compileall -q "$APP_DIR" -x '/\.venv/' >/dev/null

# The env file holds the passwords: root writes it, the service's group reads it.
install -d -o root -g "$APP_USER" -m 0750 "$CONF_DIR"
if [[ ! -f "$CONF_DIR/env" ]]; then
    sed "s/^ADMIN_TOKEN=CHANGE_ME$/ADMIN_TOKEN=$(openssl rand -hex 32)/" \
        "$HERE/env.example" > "$CONF_DIR/env"
    echo "created $CONF_DIR/env: set the DATABASE_URL and REDIS_URL passwords, then run this again" >&2
fi
chown root:"$APP_USER" "$CONF_DIR/env"
chmod 0640 "$CONF_DIR/env"
# An env file from before nginx served on HOST:PORT, the address nginx now takes: move the
# API to the socket nginx.conf names.
if ! grep -q '^UNIX_SOCKET=.' "$CONF_DIR/env"; then
    echo "UNIX_SOCKET=$SOCKET" >> "$CONF_DIR/env"
    echo "added UNIX_SOCKET=$SOCKET to $CONF_DIR/env: nginx now listens on the API's old address" >&2
fi

install -o root -g root -m 0644 "$HERE/$UNIT" "/etc/systemd/system/$UNIT"
systemctl daemon-reload
systemctl enable "$UNIT"

# Do not start on placeholder passwords: the service would only fail its way into the
# start limit.
if grep -q CHANGE_ME "$CONF_DIR/env"; then
    echo "$CONF_DIR/env still has CHANGE_ME placeholders: edit it, then run this again" >&2
    exit 1
fi
# restart, not start: after an upgrade the new code must be the one running (and the API
# must leave HOST:PORT before nginx takes that address).
systemctl restart "$UNIT"

# nginx: the whole /etc/nginx/nginx.conf is ours (the package's is kept once as .dist); a
# configuration that fails `nginx -t` is never loaded.
[[ -f /etc/nginx/nginx.conf.dist ]] || cp /etc/nginx/nginx.conf /etc/nginx/nginx.conf.dist
install -o root -g root -m 0644 "$HERE/nginx.conf" /etc/nginx/nginx.conf
nginx -t
systemctl enable nginx
systemctl reload-or-restart nginx

# Healthy means PostgreSQL answered (503 otherwise); wait out the start (schema check,
# pools) for up to 30 s on the socket, then through nginx; show the journal either way.
socket=$(sed -n 's/^UNIX_SOCKET=//p' "$CONF_DIR/env")
listen=$(sed -n 's/^ *listen \([^;]*\);.*/\1/p' /etc/nginx/nginx.conf | head -n 1)
url="http://$listen/api/v1/health"
for _ in $(seq 30); do
    if curl -fsS --max-time 2 --unix-socket "$socket" http://api/api/v1/health >/dev/null \
            && curl -fsS --max-time 2 "$url"; then
        echo
        echo "$UNIT is up on $socket, and through nginx: $url"
        exit 0
    fi
    sleep 1
done
journalctl -u "$UNIT" --no-pager -n 30 >&2
tail -n 20 /var/log/nginx/error.log >&2 || true
echo "$UNIT did not become healthy on $socket and through nginx at $url" >&2
exit 1
