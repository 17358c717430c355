"""Protocol cores are sans-IO: they never import asyncio, socket, time (or selectors, threading).

Each core gets bytes, events and ``now`` in and gives bytes, events and timers out; adapters do
the I/O and read the node's clock. A core that imported one of these modules could block, sleep
or read a clock of its own, and a simulation on a virtual clock would silently stop being
deterministic. Add every new core module to ``CORE_MODULES``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import p2pnet

ROOT = Path(p2pnet.__file__).parent

#: The protocol cores, relative to the p2pnet package.
CORE_MODULES = [
    "multistream/core.py",
    "wire/framing.py",
    "wire/varint.py",
    "security/noise.py",
    "mux/yamux.py",
    "protocols/identify_messages.py",
    "kad/query.py",
    "kad/routing_table.py",
    "kad/records.py",
    "kad/messages.py",
    "pubsub/router.py",
    "pubsub/score.py",
    "pubsub/mcache.py",
    "pubsub/messages.py",
    "pubsub/rpc_wire.py",
    "backoff.py",
    "resources/manager.py",
    "resources/connmgr.py",
    "resources/limits.py",
    "resources/relay.py",
    "kad/quota.py",
    "wire/json_bounded.py",
    "host/addresses.py",
    "host/dial_ranker.py",
    "host/dial_scheduler.py",
    "relay/messages.py",
    "relay/reservations.py",
    "autonat/messages.py",
    "dcutr/core.py",
]
FORBIDDEN = {"asyncio", "socket", "time", "selectors", "threading"}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth of its code."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_imports_no_io_and_no_clock(module: str) -> None:
    path = ROOT / module
    assert path.exists(), f"core module {module} is gone: update CORE_MODULES"
    bad = imported_modules(path) & FORBIDDEN
    assert not bad, f"{module} imports {sorted(bad)}: cores take bytes and `now`, adapters do I/O"


def test_the_check_catches_an_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import time\n    from asyncio import sleep\n")
    assert imported_modules(sample) & FORBIDDEN == {"asyncio", "time"}
