"""Test helpers: a real anvil chain with our registry deployed (skips without anvil, fails
instead when P2PNET_REQUIRE_INTEROP is set, as in CI)."""

from __future__ import annotations

import os

import pytest

from p2pnet.registry.anvil import CONTRACTS_DIR, Anvil, anvil_binary


def require_anvil() -> None:
    if anvil_binary() is not None:
        return
    msg = f"anvil not installed (cd {CONTRACTS_DIR} && npm ci)"
    if os.environ.get("P2PNET_REQUIRE_INTEROP", "").strip() not in ("", "0", "false", "no"):
        pytest.fail(msg + " [P2PNET_REQUIRE_INTEROP is set]", pytrace=False)
    pytest.skip(msg)


__all__ = ["Anvil", "require_anvil"]
