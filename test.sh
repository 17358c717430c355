#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine and runs lint, types and the whole suite,
# interop tests against the js-libp2p peer included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,dev,registry]'
(cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
# solc-js and anvil (the local chain of the registry tests), pinned by contracts/package-lock.json
(cd contracts && npm ci --no-audit --no-fund --loglevel=error)
# The explorer's browser tests drive Debian's chromium through Playwright (never a browser
# download). CI runs as root and installs it; elsewhere install it with apt-get yourself.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
# The NAT lab tests (tests/natlab.py) need ip and nft, as root; elsewhere they skip.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && { ! command -v nft >/dev/null || ! command -v ip >/dev/null; }; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables iproute2
fi
.venv/bin/tox run -e lint,type,test -- -q "$@"
