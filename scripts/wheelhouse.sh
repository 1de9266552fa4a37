#!/usr/bin/env bash
# The wheelhouse of one Debian architecture: the agent wheel, a wheel of every pinned runtime
# dependency (and theirs) for that platform, and the `installer` wheel the postinst bootstraps
# with. Binary wheels only, from PyPI: a dependency without a wheel for the platform fails the
# script with the list of what is missing (never a half wheelhouse).
# usage: wheelhouse.sh OUT_DIR [amd64|arm64|armhf]   (default: amd64)
#   PYTHON   the interpreter running pip (default: .venv/bin/python, else python3)
set -euo pipefail
out=${1:?usage: wheelhouse.sh OUT_DIR [amd64|arm64|armhf]}
arch=${2:-amd64}
cd "$(dirname "$0")/.."
python=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}

# Debian bookworm has glibc 2.36: every manylinux tag from 2014 (glibc 2.17) to 2.36 fits.
case $arch in
    amd64) machine=x86_64 ;;
    arm64) machine=aarch64 ;;
    armhf) machine=armv7l ;;
    *) echo "wheelhouse.sh: unknown architecture '$arch' (amd64, arm64 or armhf)" >&2; exit 2 ;;
esac
pip=("$python" -m pip --disable-pip-version-check)
platform=manylinux_2_36_$machine
target=(--only-binary=:all: --implementation cp --python-version 3.11 --abi cp311
        --platform "manylinux2014_$machine")
for glibc in $(seq 17 36); do target+=(--platform "manylinux_2_${glibc}_$machine"); done

# The exact pins of pyproject.toml's runtime dependencies (installer among them).
mapfile -t pins < <("$python" -c '
import tomllib
for pin in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    print(pin)')

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${pip[@]}" wheel . --no-deps -q -w "$tmp/agent" >/dev/null
if ! "${pip[@]}" download -q "${target[@]}" -d "$tmp/deps" "${pins[@]}" >"$tmp/log" 2>&1; then
    # Which pins (or which of their dependencies: armhf has cryptography but not cffi) lack one.
    missing=()
    for pin in "${pins[@]}"; do
        if ! "${pip[@]}" download -q "${target[@]}" -d "$tmp/probe" "$pin" >"$tmp/probe.log" 2>&1; then
            lacking=$(sed -n 's/.*No matching distribution found for \([^ ;]*\).*/\1/p' "$tmp/probe.log")
            [[ $lacking == "$pin" ]] && missing+=("$pin") || missing+=("${lacking:-?} (for $pin)")
        fi
    done
    echo "wheelhouse.sh: no $arch ($machine, glibc <= 2.36) wheel on PyPI for: ${missing[*]}" >&2
    echo "wheelhouse.sh: $arch wheelhouse NOT written (no compiler, no sdists: build those wheels for $arch elsewhere and add them)" >&2
    exit 1
fi
rm -rf "$out"
mkdir -p "$out"
cp "$tmp"/agent/*.whl "$tmp"/deps/*.whl "$out"/
echo "wheelhouse $out ($arch): $(ls "$out" | wc -l) wheels"
