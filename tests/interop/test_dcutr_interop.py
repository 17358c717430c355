"""DCUtR against js-libp2p's @libp2p/dcutr (pinned in package.json), in the NAT lab.

p2pnet is B: behind a NAT, reachable through a p2pnet relay; js is A, behind another NAT, and
dials p2pnet through the relay. p2pnet starts the exchange (CONNECT, RTT, SYNC, its timer); js
dials on SYNC, p2pnet half an RTT later, from its listening port; the SYNs cross both NATs (a
TCP simultaneous open). js is the initiator of the upgrade on that connection, p2pnet the
responder, as the spec's implementations fix it.

What js needs for this, and why the test sets it up so:
- js's DCUtR offers, accepts and dials only *global* addresses (``isPublicAndDialable``): the
  lab's public segment gets a global /24 (``public_net``), which never leaves its namespaces.
- js's TCP transport dials from an ephemeral port and does not set SO_REUSEPORT, so it cannot
  dial from a port it listens on: js listens on no TCP port here (only dials) and makes every
  dial from one fixed local port (``dialOpts.localPort``; libuv sets SO_REUSEADDR);
- js offers in CONNECT only what its address manager lists: the NAT's mapping of that port is
  announced (``appendAnnounce``); an unconfirmed observed address is not offered by js.

The other direction (js as B) does not work with js-libp2p 3.3.11: @libp2p/dcutr dials with
``initiator: false`` but libp2p's dial queue drops that option, so js upgrades its hole-punched
connection as the Noise initiator, as A does: both sides initiate and the handshake fails
(seen here: "handshake stage 1 validation fail"). docs/relay.md, "Hole punching", says so.

Root only (network namespaces), like the NAT lab: skips elsewhere, fails under
P2PNET_REQUIRE_NATLAB=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from .conftest import ensure_interop
from .jspeer import JsPeer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from natlab import NatLab, lab_unavailable, leftover_namespaces
from test_p2p_node import P2P_NODE, NodeProc

PROBE = Path(__file__).resolve().parent / "dcutr_netns_probe.py"
#: The local port every js dial leaves from (and so its NAT mapping).
JS_PORT = 40002


async def test_hole_punch_with_js_dcutr_through_two_nats() -> None:
    ensure_interop()
    reason = lab_unavailable()
    if reason is not None:
        if os.environ.get("P2PNET_REQUIRE_NATLAB", "") not in ("", "0"):
            pytest.fail(f"needs the NAT lab: {reason}", pytrace=False)
        pytest.skip(reason)
    lab = NatLab(public_net="11.77.0")
    with lab:
        seg_py = lab.add_private(firewall=True)
        seg_js = lab.add_private(firewall=True)
        relay = await NodeProc.spawn(
            "--bootstrap",
            "--host",
            lab.public_ip,
            "--bootstrap-peers",
            "",
            cmd=[*lab.exec_prefix(lab.pub), *P2P_NODE],
            name="relay",
        )
        js: JsPeer | None = None
        proc: asyncio.subprocess.Process | None = None
        try:
            await relay.connect()
            proc = await asyncio.create_subprocess_exec(
                *lab.exec_prefix(seg_py.host),
                sys.executable,
                str(PROBE),
                relay.addrs[0],
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            assert proc.stdout is not None and proc.stderr is not None
            first = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert first, (await proc.stderr.read()).decode()[-3000:]
            circuit = json.loads(first)["circuit"]
            js = await JsPeer.start(
                prefix=lab.exec_prefix(seg_js.host),
                listen=[],
                options={
                    "modules": ["relay", "dcutr"],
                    "tcp": {"dialOpts": {"localPort": JS_PORT}},
                    "appendAnnounce": [f"/ip4/{seg_js.public_ip}/tcp/{JS_PORT}"],
                },
            )
            relayed = await js.command("dial", addr=circuit)
            out, err = await asyncio.wait_for(proc.communicate(), 90)
            assert proc.returncode == 0, err.decode()[-3000:]
            result = json.loads(out.decode().strip().splitlines()[-1])
            # js's side: a direct connection to p2pnet's NAT, opened by js's own dial.
            py_id = circuit.rsplit("/", 1)[-1]
            opened = await js.next_event("connection_open", timeout=5)
            while opened["peerId"] != py_id or "/p2p-circuit" in opened["remoteAddr"]:
                opened = await js.next_event("connection_open", timeout=5)
        finally:
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
            if js is not None:
                await js.stop()
            await relay.close()
    assert leftover_namespaces(lab.tag) == []

    assert "/p2p-circuit" in relayed["remoteAddr"], relayed
    assert f"/ip4/{seg_py.public_ip}/tcp/" in " ".join(result["offered"]), result
    assert result["result"]["success"] is True, result
    assert result["result"]["role"] == "initiator", result  # B: p2pnet started the exchange
    assert result["result"]["addr"] == f"/ip4/{seg_js.public_ip}/tcp/{JS_PORT}", result
    assert result["direct_direction"] == "inbound"  # the responder of the upgrade
    assert result["rtt_direct"] >= 0
    # js dialled too and its connection is the same one: to p2pnet's NAT, as the initiator
    assert opened["remoteAddr"].startswith(f"/ip4/{seg_py.public_ip}/tcp/"), opened
    assert opened["direction"] == "outbound", opened
