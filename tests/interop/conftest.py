"""Fixtures for tests that talk to a real js-libp2p peer (see README.md in this directory).

Everything collected under tests/interop gets the ``interop`` marker. When Node.js or the npm
dependencies are missing the fixtures skip, unless ``P2PNET_REQUIRE_INTEROP=1`` (set in CI), in
which case they fail.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .jspeer import INTEROP_DIR, JsPeer, JsPeerFactory, missing_requirements

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.interop)


def _require_interop() -> bool:
    return os.environ.get("P2PNET_REQUIRE_INTEROP", "").strip() not in ("", "0", "false", "no")


def ensure_interop() -> None:
    """Skip (or, with P2PNET_REQUIRE_INTEROP=1, fail) when the js peer cannot run here."""
    reason = missing_requirements()
    if reason is None:
        return
    msg = f"js-libp2p interop peer unavailable: {reason} (install: cd {INTEROP_DIR} && npm ci)"
    if _require_interop():
        pytest.fail(msg + " [P2PNET_REQUIRE_INTEROP is set]", pytrace=False)
    pytest.skip(msg)


@pytest.fixture
async def js_peer_factory() -> AsyncIterator[JsPeerFactory]:
    """``await js_peer_factory(key_type=..., seed=..., listen=..., ...)`` starts a JsPeer
    (same keyword arguments as JsPeer.start); every peer started is stopped at teardown."""
    ensure_interop()
    peers: list[JsPeer] = []

    async def factory(**kwargs: Any) -> JsPeer:
        kwargs.setdefault("name", f"js-peer-{len(peers)}")
        peer = await JsPeer.start(**kwargs)
        peers.append(peer)
        return peer

    try:
        yield factory
    finally:
        errors: list[BaseException] = []
        for peer in reversed(peers):
            try:
                await peer.stop()
            except BaseException as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
async def js_peer(js_peer_factory: JsPeerFactory) -> JsPeer:
    """A js-libp2p peer with a random Ed25519 identity listening on 127.0.0.1."""
    return await js_peer_factory()
