#!/usr/bin/env bash
# VM2: Redis for the Travel Recharge API, from Ubuntu's package (default) or in Docker.
#
#   sudo deploy/vm2-redis/install.sh            # apt install redis-server, our config
#   sudo deploy/vm2-redis/install.sh --docker   # the redis:7 container of docker-compose.yml
#
# Safe to run again: passwords are made once (/root/redis-*.password, 0600) and kept; the
# config and ACL file are installed again and Redis restarted (the cache starts cold).
set -euo pipefail

usage() {
    echo "usage: sudo $0 [--docker]" >&2
    exit 2
}

MODE=package
case "${1-}" in
    "") ;;
    --docker) MODE=docker ;;
    *) usage ;;
esac
[[ $# -le 1 ]] || usage
[[ $EUID -eq 0 ]] || { echo "run as root (sudo)" >&2; exit 1; }
HERE=$(dirname "$(realpath "$0")")
# shellcheck source=deploy/common.sh
. "$HERE/../common.sh"

sha256_of() { tr -d '\n' < "$1" | sha256sum | cut -d' ' -f1; }

install_packages "$MODE" "redis-server openssl" "openssl"

# One password per user, made once.
API_PASSWORD_FILE=$(password_file /root/redis-travel_api.password)
ADMIN_PASSWORD_FILE=$(password_file /root/redis-admin.password)

# The ACL file holds SHA-256 digests only: a leaked copy gives no password away.
install -d -m 0755 /etc/redis
acl=$(mktemp)
trap 'rm -f "$acl"' EXIT
sed -e "s/@API_PASSWORD_SHA256@/$(sha256_of "$API_PASSWORD_FILE")/" \
    -e "s/@ADMIN_PASSWORD_SHA256@/$(sha256_of "$ADMIN_PASSWORD_FILE")/" \
    "$HERE/users.acl.template" > "$acl"

if [[ $MODE == package ]]; then
    # Keep Debian's own file once, for reference; ours replaces it.
    [[ -f /etc/redis/redis.conf.dpkg-orig ]] || cp /etc/redis/redis.conf /etc/redis/redis.conf.dpkg-orig
    install -o redis -g redis -m 0640 "$HERE/redis.conf" /etc/redis/redis.conf
    install -o redis -g redis -m 0640 "$acl" /etc/redis/users.acl
    install -d -m 0755 /etc/systemd/system/redis-server.service.d
    install -m 0644 "$HERE/redis-server.override.conf" /etc/systemd/system/redis-server.service.d/travel.conf
    systemctl daemon-reload
    systemctl enable redis-server
    systemctl restart redis-server
else
    # The container's redis user (not one of this host's) must read it: digests only.
    install -m 0644 "$acl" /etc/redis/users.acl
    docker compose -f "$HERE/docker-compose.yml" up -d --force-recreate
fi

# Check as the API will connect: the travel_api user over the private address.
# REDISCLI_AUTH, not -a: a password on a command line shows in `ps`.
ping_as_api() {
    local password
    password=$(cat "$API_PASSWORD_FILE")
    if [[ $MODE == package ]]; then
        REDISCLI_AUTH=$password redis-cli -h 192.168.100.20 --user travel_api ping
    else
        REDISCLI_AUTH=$password docker exec -e REDISCLI_AUTH travel-redis \
            redis-cli -h 192.168.100.20 --user travel_api ping
    fi
}
for _ in $(seq 20); do
    if [[ $(ping_as_api 2>/dev/null) == PONG ]]; then
        echo "Redis answers travel_api on 192.168.100.20:6379."
        echo "On VM1: REDIS_URL=redis://travel_api:<password>@192.168.100.20:6379/0, password in $API_PASSWORD_FILE"
        exit 0
    fi
    sleep 0.5
done
echo "Redis did not answer travel_api on 192.168.100.20:6379" >&2
exit 1
