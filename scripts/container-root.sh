#!/bin/sh
# Prints the path of a Debian 12 (bookworm) root file system for the container tests
# (tests/test_container.py), building it once with mmdebstrap (about 20 s, needs the network).
# It is cached outside the work tree, named by a hash of what it holds, and reused by later runs
# and CI: /var/cache/edge-agent-tests/bookworm-<hash>/ ($EDGE_AGENT_TEST_CACHE moves it).
# The tests copy it per test and never change it. Root only.
set -e
SUITE=bookworm
INCLUDE=systemd,systemd-sysv,dbus,python3
cache=${EDGE_AGENT_TEST_CACHE:-/var/cache/edge-agent-tests}
hash=$(printf '%s %s\n' "$SUITE" "$INCLUDE" | sha256sum | cut -c1-12)
root=$cache/$SUITE-$hash
if [ -d "$root" ]; then
    echo "$root"
    exit 0
fi
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is not installed" >&2; exit 2; }
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mmdebstrap --quiet --variant=apt --include="$INCLUDE" "$SUITE" "$tmp/root" >&2
# The rename is the mark of a finished build; a concurrent build that lost the race is dropped.
mv -T "$tmp/root" "$root" 2>/dev/null || true
echo "$root"
