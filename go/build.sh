#!/bin/sh
# Build the Go version (go/bin/travel-go) offline, from Debian's packages, in GOPATH mode:
# no module proxy is needed or reachable. Idempotent: installs what is missing (as root),
# then builds; `go build` itself skips work when nothing changed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
packages="golang-go golang-github-jackc-pgx-v4-dev golang-github-gomodule-redigo-dev"
gocode=/usr/share/gocode

missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "go/build.sh: missing Debian packages:$missing (run as root, or: apt-get install$missing)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

GO=go
command -v go >/dev/null 2>&1 || GO=/usr/lib/go/bin/go
export GOPATH="$gocode" GO111MODULE=off GOFLAGS="" GOPROXY=off CGO_ENABLED=0
# The build cache outside the tree when HOME is not writable (a CI user, a container).
[ -w "${HOME:-/nonexistent}" ] || export GOCACHE="${GOCACHE:-${TMPDIR:-/tmp}/travel-go-cache}"
cd "$here"
$GO build -trimpath -o bin/travel-go .
echo "built $here/bin/travel-go ($($GO version | cut -d' ' -f3))"
