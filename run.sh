#!/usr/bin/env bash
# Sets up p2pnet on a fresh machine and runs the local network on loopback.
# Extra arguments go to `p2pnet demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/p2pnet demo "$@"
