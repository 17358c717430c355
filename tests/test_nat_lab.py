"""Agents behind a real NAT (network namespaces + nftables masquerade, tests/natlab.py).

Root only: elsewhere these tests skip with the reason; with P2PNET_REQUIRE_NATLAB=1 (set by
.ci/run, which runs as root) a skip is a failure.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from natlab import NatLab, lab_unavailable, leftover_namespaces
from test_p2p_node import NodeProc

from p2pnet.agent.constants import BOOTSTRAP_REGIONS

P2P_NODE = [sys.executable, "-m", "p2pnet.cli.p2p_node"]


@pytest.fixture
def nat_lab() -> Iterator[NatLab]:
    reason = lab_unavailable()
    if reason is not None:
        if os.environ.get("P2PNET_REQUIRE_NATLAB", "") not in ("", "0"):
            pytest.fail(f"NAT lab required but unavailable: {reason}", pytrace=False)
        pytest.skip(reason)
    lab = NatLab()
    with lab:
        yield lab
    assert leftover_namespaces(lab.tag) == [], "the lab left namespaces behind"


@pytest.fixture
async def spawn_in(nat_lab: NatLab) -> AsyncIterator[Callable[..., Any]]:
    """``await spawn_in(namespace, *flags, name=...)``: a p2p-node in that namespace; every
    process is reaped before the lab's namespaces are deleted."""
    procs: list[NodeProc] = []

    async def start(namespace: str, *args: str, name: str = "") -> NodeProc:
        cmd = [*nat_lab.exec_prefix(namespace), *P2P_NODE]
        proc = await NodeProc.spawn(*args, cmd=cmd, name=name)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        await asyncio.gather(*(p.close() for p in procs))
        for p in procs:
            p.assert_clean()


def test_lab_cleans_up_even_when_a_step_fails() -> None:
    reason = lab_unavailable()
    if reason is not None:
        pytest.skip(reason)
    lab = NatLab()
    with pytest.raises(RuntimeError), lab:
        lab.add_private()
        lab.ns(lab.pub, "ip", "link", "set", "no-such-interface", "up")  # fails
    assert leftover_namespaces(lab.tag) == []


async def test_agent_behind_nat_is_reached_through_the_relay(
    nat_lab: NatLab, spawn_in: Any
) -> None:
    seg = nat_lab.add_private()
    pub, ip = nat_lab.pub, nat_lab.public_ip
    boot = await spawn_in(pub, "--bootstrap", "--host", ip, "--bootstrap-peers", "", name="boot")
    await boot.connect()
    bob = await spawn_in(pub, "--host", ip, name="bob")
    await bob.connect(bootstrapPeers=boot.addrs)
    # Behind the NAT: one agent listening on its private interfaces only, one on a relay.
    hidden = await spawn_in(seg.host, "--host", "0.0.0.0", name="hidden")
    await hidden.connect(bootstrapPeers=boot.addrs)
    relayed = await spawn_in(seg.host, "--via-relay", name="relayed")
    await relayed.connect(bootstrapPeers=boot.addrs)

    # The bootstrap node sees them come from the NAT's public address, not their own.
    seen = await boot.expect("peer_connected", peerId=hidden.peer_id)
    assert seen["addr"].startswith(f"/ip4/{seg.public_ip}/tcp/"), seen
    # 0.0.0.0 is never advertised: the private interface (and loopback) are, and mean nothing
    # from outside. This bootstrap node does not dial private addresses back (AutoNAT), so
    # `hidden` gets no verdict and takes no relay slot.
    assert any(f"/ip4/{seg.private_ip}/" in a for a in hidden.addrs), hidden.addrs
    assert not any("/0.0.0.0/" in a or "/p2p-circuit" in a for a in hidden.addrs)

    failed = await bob.request({"type": "send", "peerId": hidden.eth, "data": 1}, "sent", 40)
    assert failed["type"] == "error" and failed["code"] in ("DIAL_FAILED", "SEND_FAILED")

    assert relayed.addrs == [f"{boot.addrs[0]}/p2p-circuit/p2p/{relayed.peer_id}"]
    await bob.ok({"type": "send", "peerId": relayed.eth, "data": "through the NAT"}, "sent")
    got = await relayed.expect("message")
    assert got["data"] == "through the NAT" and got["direct"] is True
    via = await bob.expect("peer_connected", peerId=relayed.peer_id)
    assert "/p2p-circuit" in via["addr"]
    # Outbound from behind the NAT works directly.
    await hidden.ok({"type": "send", "peerId": bob.eth, "data": "out"}, "sent")
    assert (await bob.expect("message"))["data"] == "out"


async def test_agent_learns_it_is_behind_nat_and_takes_a_relay_slot(
    nat_lab: NatLab, spawn_in: Any
) -> None:
    """AutoNAT v2 with the bootstrap node (allowed to dial the lab's private ranges): the agent
    behind the NAT is not dialled back (after paying the dial data: its address is not the IP
    the request came from), concludes it is private and reserves; the public agent is dialled
    back and does not."""
    seg = nat_lab.add_private()
    pub, ip = nat_lab.pub, nat_lab.public_ip
    boot = await spawn_in(
        pub,
        "--bootstrap",
        "--autonat-allow-private",
        "--host",
        ip,
        "--bootstrap-peers",
        "",
        "--log-level",
        "info",
        name="boot",
    )
    await boot.connect()
    bob = await spawn_in(pub, "--host", ip, "--log-level", "info", name="bob")
    await bob.connect(bootstrapPeers=boot.addrs)
    natted = await spawn_in(seg.host, "--host", "0.0.0.0", "--log-level", "info", name="natted")
    await natted.connect(bootstrapPeers=boot.addrs)

    assert not any("/p2p-circuit" in a for a in bob.addrs), bob.addrs
    assert any(
        e["message"].endswith("reachability public") for e in bob.events if e["type"] == "log"
    )
    relayed = [a for a in natted.addrs if "/p2p-circuit" in a]
    assert relayed == [f"{boot.addrs[0]}/p2p-circuit/p2p/{natted.peer_id}"], natted.addrs
    assert any(
        e["message"].endswith("reachability private") for e in natted.events if e["type"] == "log"
    )
    await bob.ok({"type": "send", "peerId": natted.eth, "data": "found you"}, "sent", 40)
    assert (await natted.expect("message"))["data"] == "found you"
    via = await bob.expect("peer_connected", peerId=natted.peer_id)
    assert "/p2p-circuit" in via["addr"], via


#: The design's four regions, as the constants name them (US East, US West, EU West, SEA).
REGIONS = BOOTSTRAP_REGIONS


async def test_four_regions_public_and_natted_agents_all_reach_each_other(
    nat_lab: NatLab, spawn_in: Any
) -> None:
    """Four bootstrap nodes in four public hosts (the design's regions), two public agents and
    two behind NATs (which find out by AutoNAT and take relay slots): every agent finds every
    other by ETH address, and every direct and broadcast message arrives."""
    hosts = [(nat_lab.pub, nat_lab.public_ip)]
    for _ in REGIONS[1:]:
        name = nat_lab.add_public()
        hosts.append((name, nat_lab.public[-1][1]))
    boots: list[NodeProc] = []
    for region, (ns, ip) in zip(REGIONS, hosts, strict=True):
        boot = await spawn_in(
            ns, "--bootstrap", "--autonat-allow-private", "--host", ip, name=f"boot-{region}"
        )
        await boot.connect(bootstrapPeers=[a for b in boots for a in b.addrs])
        boots.append(boot)
    seeds = [a for b in boots for a in b.addrs]
    natted = [nat_lab.add_private() for _ in range(2)]
    places = [(hosts[0][0], hosts[0][1]), (hosts[2][0], hosts[2][1])]
    agents = [
        await spawn_in(ns, "--host", ip, name=f"public-{i}") for i, (ns, ip) in enumerate(places)
    ]
    agents += [
        await spawn_in(seg.host, "--host", "0.0.0.0", name=f"natted-{i}")
        for i, seg in enumerate(natted)
    ]
    await asyncio.gather(*(a.connect(bootstrapPeers=seeds) for a in agents))
    for agent in agents[2:]:
        assert any("/p2p-circuit" in a for a in agent.addrs), (agent.name, agent.addrs)
    for agent in agents[:2]:
        assert not any("/p2p-circuit" in a for a in agent.addrs), (agent.name, agent.addrs)

    async def greet_all(sender: NodeProc) -> None:
        for other in agents:
            if other is not sender:
                cmd = {"type": "send", "peerId": other.eth, "data": {"from": sender.name}}
                await sender.ok(cmd, "sent", timeout=40)

    await asyncio.gather(*(greet_all(a) for a in agents))
    for agent in agents:
        senders = set()
        for _ in range(len(agents) - 1):
            got = await agent.wait_for(lambda e: e["type"] == "message" and e.get("direct"), 20)
            senders.add(got["data"]["from"])
        assert senders == {a.name for a in agents if a is not agent}

    for agent in agents:
        await agent.ok({"type": "send", "topic": "agent-messages", "data": agent.name}, "sent")
    for agent in agents:
        heard = set()
        for _ in range(len(agents) - 1):
            got = await agent.wait_for(
                lambda e: e["type"] == "message" and e.get("topic") == "agent-messages", 30
            )
            heard.add(got["data"])
        assert heard == {a.name for a in agents if a is not agent}
