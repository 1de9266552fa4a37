#!/bin/sh
# Builds dist/edge-agent-<version>-bundle.tar: the .deb of every architecture that builds here
# (amd64, arm64, armhf: each needs its wheelhouse, see scripts/build-deb.sh) and a README on
# installing from a USB stick without a network. usage: scripts/bundle.sh (make bundle)
set -e
cd "$(dirname "$0")/.."
upstream=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
VERSION=$upstream-1
stage=build/bundle
rm -rf "$stage"
mkdir -p "$stage/edge-agent-$upstream" dist
built=
for arch in amd64 arm64 armhf; do
    if scripts/build-deb.sh "$arch"; then
        cp "dist/edge-agent_${VERSION}_$arch.deb" "$stage/edge-agent-$upstream/"
        built="$built $arch"
    else
        echo "bundle: no .deb for $arch (its wheelhouse cannot be built here): left out" >&2
    fi
done
[ -n "$built" ] || { echo "bundle: no .deb built" >&2; exit 1; }
sed -e "s/@VERSION@/$VERSION/g" -e "s/@UPSTREAM@/$upstream/g" -e "s/@ARCHES@/$built/" \
    packaging/bundle-README >"$stage/edge-agent-$upstream/README"
out=dist/edge-agent-$upstream-bundle.tar
tar --owner=0 --group=0 --numeric-owner --sort=name -cf "$out" -C "$stage" "edge-agent-$upstream"
echo "$out:$built"
