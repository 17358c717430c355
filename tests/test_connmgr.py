"""The connection manager: trims the least useful peers above the high watermark."""

from __future__ import annotations

import asyncio

import pytest

from p2pnet.config import NodeConfig
from p2pnet.crypto.keys import KeyPair
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.kad.config import KadConfig, Mode
from p2pnet.node import Node
from p2pnet.peer.peer_id import PeerID
from p2pnet.resources.connmgr import ConnManager, ConnManagerConfig


def peer() -> PeerID:
    return PeerID.from_public_key(KeyPair.generate().public_key)


def test_trims_least_useful_first_and_spares_protected_and_new_peers() -> None:
    cm = ConnManager(ConnManagerConfig(low_water=2, high_water=3, grace_period=10))
    boot, mesh, used, idle, idle2, young = (peer() for _ in range(6))
    cm.tag(boot, "bootstrap", 0, protect=True)
    cm.add_value("mesh", lambda p: 50 if p == mesh else 0)
    cm.used(used, 95.0)
    connected = [(boot, 0.0), (mesh, 0.0), (used, 0.0), (idle, 0.0), (idle2, 1.0), (young, 95.0)]
    trimmed = cm.to_trim(connected, 100.0)
    assert len(trimmed) == 4 and set(trimmed) == {idle, idle2, used, mesh}
    assert trimmed[:2] == [idle2, idle]  # no value: the newer one first
    assert boot not in trimmed and young not in trimmed
    assert cm.to_trim(connected[:3], 100.0) == []  # at or below the high watermark
    with pytest.raises(ValueError):
        ConnManagerConfig(low_water=5, high_water=4)


async def test_a_host_above_its_high_watermark_disconnects_down_to_the_low_one() -> None:
    config = HostConfig(connmgr=ConnManagerConfig(low_water=2, high_water=3, grace_period=0))
    async with Host(KeyPair.generate(), config) as hub:
        keeper = Host(KeyPair.generate())
        others = [Host(KeyPair.generate()) for _ in range(4)]
        for h in [keeper, *others]:
            await h.start()
        hub.connmgr.tag(keeper.peer_id, "bootstrap", 0, protect=True)
        await keeper.connect(hub.p2p_addrs()[0])
        for h in others:
            await h.connect(hub.p2p_addrs()[0])
        async with asyncio.timeout(5):
            # the 4th peer crossed the high watermark (3): two were trimmed, down to 2; the 5th
            # made it 3 again, which is allowed
            while hub.connmgr.trimmed < 2 or len(hub.connected_peers()) > 3:
                await asyncio.sleep(0.02)
        assert keeper.peer_id in hub.connected_peers()
        for h in [keeper, *others]:
            await h.close()


async def test_a_node_tags_bootstrap_mesh_and_dht_table_peers() -> None:
    """The node tells its connection manager what each peer is worth: its bootstrap peers are
    protected, a gossipsub mesh member counts 50, a DHT routing-table member 20."""
    server = NodeConfig(kad=KadConfig(mode=Mode.SERVER))
    async with Node(server) as boot:
        config = NodeConfig(
            kad=KadConfig(mode=Mode.SERVER), bootstrap_peers=[str(boot.p2p_addrs()[0])]
        )
        async with Node(config) as node, Node(server) as other:
            connmgr = node.host.connmgr
            assert connmgr.is_protected(boot.peer_id)
            node.subscribe("t")
            other.subscribe("t")
            await other.connect(node.p2p_addrs()[0])
            now = node.clock.monotonic()
            async with asyncio.timeout(10):
                # identify says `other` is a DHT server (table: 20) and subscribed (mesh: 50)
                while connmgr.value(other.peer_id, now) < 70:
                    await asyncio.sleep(0.05)
                    now = node.clock.monotonic()
            assert not connmgr.is_protected(other.peer_id)


def test_no_trim_scan_until_a_grace_period_ends_or_a_protection_is_lifted() -> None:
    cm = ConnManager(ConnManagerConfig(low_water=1, high_water=2, grace_period=10))
    boot, a, b = peer(), peer(), peer()
    cm.tag(boot, "bootstrap", 0, protect=True)
    connected = [(boot, 0.0), (a, 5.0), (b, 7.0)]
    assert cm.trim_may_help(6.0)
    assert cm.to_trim(connected, 6.0) == []  # a and b in their grace period, boot protected
    assert not cm.trim_may_help(14.9)  # a's grace ends at 15
    assert cm.trim_may_help(15.0)
    assert cm.to_trim(connected, 15.0) == [a]
    assert not cm.trim_may_help(16.0)  # b's ends at 17 (a trim could not reach the low mark)
    cm.untag(boot, "bootstrap")  # lifting a protection may give a trim a candidate at once
    assert cm.trim_may_help(16.0)
    assert set(cm.to_trim(connected, 16.0)) == {boot, a}
