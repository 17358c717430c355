"""AutoNAT v2 against js-libp2p's @libp2p/autonat-v2 (pinned in package.json), both ways.

js's server never dials private or loopback addresses and its client never asks about them, so
both sides run in a network namespace of their own whose loopback carries a global address
(traffic never leaves the namespace). Needs root, like the NAT lab; skips elsewhere with the
reason, fails under P2PNET_REQUIRE_NATLAB=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from .conftest import ensure_interop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from natlab import NatLab, lab_unavailable, leftover_namespaces

#: A global address, used only on the loopback of an isolated namespace.
GLOBAL_IP = "11.77.0.1"
PROBE = Path(__file__).resolve().parent / "autonat_netns_probe.py"


async def test_autonat_v2_with_js_both_ways() -> None:
    ensure_interop()
    reason = lab_unavailable()
    if reason is not None:
        if os.environ.get("P2PNET_REQUIRE_NATLAB", "") not in ("", "0"):
            pytest.fail(f"needs a network namespace: {reason}", pytrace=False)
        pytest.skip(reason)
    lab = NatLab()
    with lab:
        lab.ns(lab.pub, "ip", "addr", "add", f"{GLOBAL_IP}/32", "dev", "lo")
        proc = await asyncio.create_subprocess_exec(
            *lab.exec_prefix(lab.pub),
            sys.executable,
            str(PROBE),
            GLOBAL_IP,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 90)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert leftover_namespaces(lab.tag) == []
    assert proc.returncode == 0, err.decode()[-3000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["py_asks_js"] == {"reachable": True, "status": "OK"}, result
    assert result["js_asks_py"]["dial_backs"] >= 1, result
