#!/usr/bin/env bash
# Sets up p2pnet on a fresh machine and runs the local agent network on loopback: four bootstrap
# nodes and six agents that find each other through the DHT and exchange signed messages.
# Ctrl-C stops it. Extra arguments go to `p2pnet devnet` (e.g. --agents 10 --duration 30).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[registry]'
# anvil (the local chain the devnet's agent registry runs on), from npm; without Node.js the
# devnet says so and runs with the registry policy off.
if command -v npm >/dev/null 2>&1; then
    (cd contracts && npm ci --no-audit --no-fund --loglevel=error) ||
        echo "run.sh: installing anvil failed; the devnet runs without the registry" >&2
fi
exec .venv/bin/p2pnet devnet "$@"
