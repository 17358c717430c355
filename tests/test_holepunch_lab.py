"""Hole punching (DCUtR + TCP simultaneous open) between agents behind two NATs of the NAT lab
(tests/natlab.py). Root only, like the other lab tests; never skipped in CI.

The lab's "public" segment is 10.77.0.0/24, a private range, so the agents run with
``--autonat-allow-private`` (hole punching then offers and dials private addresses too); the
NATs drop unsolicited inbound packets as home routers do.
"""

from __future__ import annotations

from typing import Any

from natlab import NatLab
from test_nat_lab import nat_lab, spawn_in  # noqa: F401  (the lab's fixtures)
from test_p2p_node import NodeProc

#: Seconds to wait for a hole punch to end (3 attempts of at most ~5 s dials each, plus slack).
PUNCH_TIMEOUT = 40.0


def punch_log(node: NodeProc, success: bool | None = None) -> Any:
    """The log event of a finished hole punch (of the given outcome)."""

    def match(event: dict[str, Any]) -> bool:
        if event["type"] != "log" or "hole punch with" not in event["message"]:
            return False
        if success is None:
            return True
        return ("stays relayed" not in event["message"]) == success

    return node.wait_for(match, PUNCH_TIMEOUT)


async def _natted_pair(
    lab: NatLab, spawn: Any, *, random_ports: bool = False
) -> tuple[NodeProc, NodeProc, NodeProc, Any, Any]:
    seg_a = lab.add_private(firewall=True, random_ports=random_ports)
    seg_b = lab.add_private(firewall=True)
    boot = await spawn(
        lab.pub,
        "--bootstrap",
        "--autonat-allow-private",
        "--host",
        lab.public_ip,
        "--bootstrap-peers",
        "",
        name="boot",
    )
    await boot.connect()
    flags = ("--host", "0.0.0.0", "--autonat-allow-private", "--log-level", "info")
    alice = await spawn(seg_a.host, *flags, name="alice")
    bob = await spawn(seg_b.host, *flags, name="bob")
    await alice.connect(bootstrapPeers=boot.addrs)
    await bob.connect(bootstrapPeers=boot.addrs)
    # Both learnt by AutoNAT that they cannot be dialled, and took a slot on the relay.
    for agent in (alice, bob):
        assert any("/p2p-circuit" in a for a in agent.addrs), (agent.name, agent.addrs)
    return boot, alice, bob, seg_a, seg_b


async def test_hole_punch_upgrades_the_relayed_connection(
    nat_lab: NatLab,  # noqa: F811
    spawn_in: Any,  # noqa: F811
) -> None:
    _, alice, bob, seg_a, seg_b = await _natted_pair(nat_lab, spawn_in)

    # alice finds bob by ETH address; bob can only be dialled through the relay.
    await alice.ok({"type": "send", "peerId": bob.eth, "data": "via relay"}, "sent", 40)
    first = await bob.expect("message")
    assert first["data"] == "via relay" and "/p2p-circuit" in first["via"], first

    # bob received the relayed connection: it runs DCUtR with alice (B's side) and both NATs
    # let the simultaneous open through.
    done = await punch_log(bob)
    assert "as initiator: direct" in done["message"], done
    assert "as responder: direct" in (await punch_log(alice))["message"]

    await alice.ok({"type": "send", "peerId": bob.eth, "data": "direct"}, "sent", 20)
    second = await bob.expect("message")
    assert second["data"] == "direct"
    # Carried by the direct connection, from alice's NAT's public address (her listening port
    # kept by the masquerade), not by the relay.
    assert second["via"].startswith(f"/ip4/{seg_a.public_ip}/tcp/"), second
    assert "/p2p-circuit" not in second["via"]
    # And the other way: bob's reply uses the direct connection too.
    await bob.ok({"type": "send", "peerId": alice.eth, "data": "back"}, "sent", 20)
    back = await alice.expect("message")
    assert back["data"] == "back" and back["via"].startswith(f"/ip4/{seg_b.public_ip}/tcp/")


async def test_hole_punch_fails_behind_a_symmetric_nat_and_the_relay_still_carries(
    nat_lab: NatLab,  # noqa: F811
    spawn_in: Any,  # noqa: F811
) -> None:
    """alice's NAT picks a random port for every mapping: the address she offers is not where
    her SYN comes from, so neither NAT lets the other's SYN in. bob gives up after three
    attempts and the messages keep going through the relay."""
    _, alice, bob, _, _ = await _natted_pair(nat_lab, spawn_in, random_ports=True)
    await alice.ok({"type": "send", "peerId": bob.eth, "data": 1}, "sent", 40)
    assert "/p2p-circuit" in (await bob.expect("message"))["via"]

    done = await punch_log(bob)
    assert "as initiator: stays relayed" in done["message"], done
    assert "3 attempts" in done["message"], done

    await alice.ok({"type": "send", "peerId": bob.eth, "data": 2}, "sent", 20)
    second = await bob.expect("message")
    assert second["data"] == 2 and "/p2p-circuit" in second["via"], second
    await bob.ok({"type": "send", "peerId": alice.eth, "data": 3}, "sent", 20)
    assert (await alice.expect("message"))["data"] == 3


async def test_a_public_sender_is_dialled_directly_by_the_agent_behind_nat(
    nat_lab: NatLab,  # noqa: F811
    spawn_in: Any,  # noqa: F811
) -> None:
    """The spec's unilateral upgrade: the sender has a public address, so the agent behind the
    NAT that received the relayed connection simply dials it; no hole punch is needed."""
    seg = nat_lab.add_private(firewall=True)
    ip = nat_lab.public_ip
    boot = await spawn_in(
        nat_lab.pub,
        "--bootstrap",
        "--autonat-allow-private",
        "--host",
        ip,
        "--bootstrap-peers",
        "",
        name="boot",
    )
    await boot.connect()
    flags = ("--autonat-allow-private", "--log-level", "info")
    pub = await spawn_in(nat_lab.pub, "--host", ip, *flags, name="public")
    natted = await spawn_in(seg.host, "--host", "0.0.0.0", *flags, name="natted")
    await pub.connect(bootstrapPeers=boot.addrs)
    await natted.connect(bootstrapPeers=boot.addrs)
    assert any("/p2p-circuit" in a for a in natted.addrs), natted.addrs

    await pub.ok({"type": "send", "peerId": natted.eth, "data": "first"}, "sent", 40)
    assert "/p2p-circuit" in (await natted.expect("message"))["via"]
    done = await punch_log(natted)
    assert "as initiator: direct (unilateral direct dial" in done["message"], done
    await pub.ok({"type": "send", "peerId": natted.eth, "data": "second"}, "sent", 20)
    second = await natted.expect("message")
    assert second["data"] == "second" and second["via"].startswith(f"/ip4/{ip}/tcp/"), second
    await natted.ok({"type": "send", "peerId": pub.eth, "data": "back"}, "sent", 20)
    back = await pub.expect("message")
    assert back["via"].startswith(f"/ip4/{seg.public_ip}/tcp/"), back
