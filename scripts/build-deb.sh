#!/bin/sh
# Builds dist/edge-agent_<version>_<arch>.deb with Debian's own tools (dpkg-deb).
# usage: scripts/build-deb.sh [amd64|arm64|armhf]      (make deb ARCH=...)
#
# It makes build/wheelhouse-<arch>/ with scripts/wheelhouse.sh (or takes $WHEELHOUSE as it is)
# and build/edge-agent.1 with python -m agent.manpage. What goes where: packaging/README.md.
# TRUSTED_ROOT=REPO/metadata/1.root.json ships the vendor's update root (docs/updates.md).
set -e
cd "$(dirname "$0")/.."
ARCH=${1:-amd64}
case "$ARCH" in
amd64 | arm64 | armhf) ;;
*) echo "unknown architecture '$ARCH' (amd64, arm64 or armhf)" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python

upstream=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
[ -n "$upstream" ] || { echo "no version in pyproject.toml" >&2; exit 2; }
# Debian revision 1: the package is built from this tree, not from a Debian source package.
VERSION=$upstream-1
# The wheelhouse and the man page are made afresh (a stale agent wheel must never be packaged),
# unless WHEELHOUSE names one already made.
if [ -n "${WHEELHOUSE:-}" ]; then
    WH=$WHEELHOUSE
else
    WH=build/wheelhouse-$ARCH
    PYTHON=$PY scripts/wheelhouse.sh "$WH" "$ARCH" >&2
fi
ls "$WH"/edge_agent-*-py3-none-any.whl >/dev/null 2>&1 ||
    { echo "build-deb: no agent wheel in $WH" >&2; exit 3; }
ls "$WH"/installer-*.whl >/dev/null 2>&1 ||
    { echo "build-deb: no installer-*.whl in $WH: the postinst could not install" >&2; exit 3; }
mkdir -p build
"$PY" -m agent.manpage >build/edge-agent.1

# The release data (units, scripts, example config) lives in agent/data/, as in the wheel.
UNITS=agent/data/systemd
EXAMPLE=agent/data/config/example.yaml

stage=build/deb-$ARCH
rm -rf "$stage"
umask 022
d() { install -d -m 0755 "$stage$1"; }
f() { install -D -m 0644 "$1" "$stage$2"; }
x() { install -D -m 0755 "$1" "$stage$2"; }

x "$UNITS"/pre-start /usr/lib/edge-agent/pre-start
x "$UNITS"/post-stop /usr/lib/edge-agent/post-stop
x "$UNITS"/rollback /usr/lib/edge-agent/rollback
f "$UNITS"/edge-agent.service /lib/systemd/system/edge-agent.service
f "$UNITS"/edge-agent-rollback.service /lib/systemd/system/edge-agent-rollback.service
f "$UNITS"/edge-agent-update.service /lib/systemd/system/edge-agent-update.service
f "$UNITS"/edge-agent-update.path /lib/systemd/system/edge-agent-update.path
f "$UNITS"/edge-agent.sysusers /usr/lib/sysusers.d/edge-agent.conf
f "$UNITS"/edge-agent.tmpfiles /usr/lib/tmpfiles.d/edge-agent.conf
f "$EXAMPLE" /usr/share/edge-agent/config.example.yaml
# The vendor's TUF root (release init made it: REPO/metadata/1.root.json), the first root every
# gateway of this package trusts (update.trusted_root). Without TRUSTED_ROOT the package has none
# and refuses every update until the site sets update.trusted_root.
if [ -n "${TRUSTED_ROOT:-}" ]; then
    f "$TRUSTED_ROOT" /usr/share/edge-agent/trusted-root.json
fi
d /usr/lib/edge-agent/wheelhouse
for wheel in "$WH"/*.whl; do
    f "$wheel" "/usr/lib/edge-agent/wheelhouse/${wheel##*/}"
done
doc=/usr/share/doc/edge-agent
f README.md "$doc/README.md"
f "$UNITS"/README.md "$doc/systemd.md"
f packaging/debian/copyright "$doc/copyright"
f packaging/debian/lintian-overrides /usr/share/lintian/overrides/edge-agent
date=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
sed -e "s/@VERSION@/$VERSION/" -e "s/@DATE@/$date/" packaging/debian/changelog |
    gzip -9n >"$stage$doc/changelog.Debian.gz"
chmod 0644 "$stage$doc/changelog.Debian.gz"
d /usr/share/man/man1
gzip -9n <build/edge-agent.1 >"$stage/usr/share/man/man1/edge-agent.1.gz"
chmod 0644 "$stage/usr/share/man/man1/edge-agent.1.gz"

install -d -m 0755 "$stage/DEBIAN"
for script in postinst prerm postrm; do
    sed "s/@VERSION@/$VERSION/" "packaging/debian/$script" >"$stage/DEBIAN/$script"
    chmod 0755 "$stage/DEBIAN/$script"
done
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort |
    xargs md5sum) >"$stage/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$size/" \
    packaging/debian/control.in >"$stage/DEBIAN/control"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums"

mkdir -p dist
out=dist/edge-agent_${VERSION}_$ARCH.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$out" >/dev/null
echo "$out $(stat -c %s "$out") bytes"
