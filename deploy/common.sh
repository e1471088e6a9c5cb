#!/usr/bin/env bash
# What the VMs' install scripts share, sourced by them from a checkout of the repository:
#   . "$HERE/../common.sh"
set -euo pipefail

# password_file FILE: a password made once and kept in FILE (root only, 0600); prints FILE.
# Hex: it goes into REDIS_URL and DATABASE_URL on VM1 unescaped.
password_file() {
    if [[ ! -s "$1" ]]; then
        (umask 077 && openssl rand -hex 32 > "$1")
    fi
    echo "$1"
}

# install_packages MODE PACKAGES DOCKER_PACKAGES: Ubuntu's packages for MODE, `package` (the
# server from Ubuntu) or `docker` (Docker and Compose, then DOCKER_PACKAGES); space-separated lists.
install_packages() {
    local wanted
    if [[ $1 == package ]]; then
        read -ra wanted <<< "$2"
    else
        read -ra wanted <<< "docker.io docker-compose-v2 $3"
    fi
    apt-get update -q
    apt-get install -y -q "${wanted[@]}"
}
