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


async def fund(url: str, address: str, wei: int = 10**20) -> None:
    """Give ``address`` ether on anvil (its anvil_setBalance method), to pay for gas."""
    from p2pnet.registry.transactions import _web3

    w3 = await _web3(url, 10)
    try:
        await w3.provider.make_request("anvil_setBalance", [address, hex(wei)])
    finally:
        await w3.provider.disconnect()


__all__ += ["fund"]
