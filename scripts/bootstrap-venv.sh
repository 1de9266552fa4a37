#!/usr/bin/env bash
# Creates the project's virtual environment and installs the pinned dependencies.
# usage: bootstrap-venv.sh PYTHON VENV runtime|dev
set -euo pipefail
python=$1 venv=$2 kind=$3

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "edge-agent needs Python >= 3.11; '$python' is $("$python" --version 2>&1 || echo missing)." >&2
    echo "Install it (Debian: apt-get install python3) or run: make PYTHON=python3.11 ..." >&2
    exit 2
fi
if [[ ! -x $venv/bin/python ]]; then
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        rm -rf "$venv"
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv
            "$python" -m venv "$venv"
        else
            echo "Cannot create a virtual environment: run 'sudo apt-get install python3-venv' and retry." >&2
            exit 2
        fi
    fi
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
if [[ $kind == dev ]]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]"
else
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e .
fi
