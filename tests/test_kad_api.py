"""The DHT through the Node API, as docs/api.md shows it: validators an application registers,
which peers stored a record or answered a GET, provider keys from CID text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from p2pnet.clock import VirtualClock
from p2pnet.config import NodeConfig
from p2pnet.kad import InvalidRecord, KadConfig, Mode, RecordNotFound, UnknownNamespace
from p2pnet.kad.cid import provider_key
from p2pnet.node import Node
from p2pnet.security.plaintext import PlaintextSecurity
from p2pnet.sim.loop import run_virtual
from p2pnet.transport.memory import MemoryNetwork

CID_V1 = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
CID_V0 = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    net = MemoryNetwork()
    out: list[Node] = []
    try:
        for i in range(4):
            cfg = NodeConfig(
                listen_addrs=["/memory/0"],
                kad=KadConfig(mode=Mode.SERVER, auto_refresh=False),
                enable_pubsub=False,
                seed=i,
            )
            node = Node(cfg, transports=[net.transport()], security=[PlaintextSecurity()])
            await node.start()
            out.append(node)
        for node in out[1:]:
            await node.bootstrap([str(out[0].p2p_addrs()[0])])
        yield out
    finally:
        for node in out:
            await node.close()


def newest(key: bytes, values: Sequence[bytes]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def not_empty(key: bytes, value: bytes) -> None:
    if not value:
        raise ValueError("myapp records are not empty")


async def test_put_value_needs_a_registered_validator(nodes: list[Node]) -> None:
    writer, reader = nodes[1], nodes[3]
    with pytest.raises(UnknownNamespace, match=r"'myapp'.*register_validator"):
        await writer.put_value(b"/myapp/x", b"hello")
    with pytest.raises(UnknownNamespace, match="'myapp'"):
        await reader.get_value(b"/myapp/x")
    for node in nodes:
        node.register_validator("myapp", not_empty, newest)
    result = await writer.put_record(b"/myapp/x", b"hello")
    others = {n.peer_id for n in nodes if n is not writer}
    assert set(result.stored) == others and result.failed == []
    assert await writer.put_value(b"/myapp/x", b"hello, again") == 3
    with pytest.raises(InvalidRecord, match="not empty"):
        await writer.put_value(b"/myapp/y", b"")
    # which peer answered: drop the reader's copy so the answer comes from the network
    assert reader.dht is not None
    reader.dht.records.delete(b"/myapp/x")
    got = await reader.get_record(b"/myapp/x", quorum=2)
    assert got.value == b"hello, again"
    assert got.peer in {n.peer_id for n in nodes if n is not reader}
    assert got.peer in got.holders and len(got.holders) >= 2  # answers already in flight count
    # the writer's own copy answers first: quorum 1 asks nobody
    mine = await writer.get_record(b"/myapp/x", quorum=1)
    assert mine.value == b"hello, again" and mine.peer is None


async def test_a_server_without_the_validator_refuses_the_record(nodes: list[Node]) -> None:
    for node in nodes[:3]:
        node.register_validator("myapp", not_empty)
    result = await nodes[1].put_record(b"/myapp/z", b"v")
    assert result.failed == [nodes[3].peer_id]
    assert set(result.stored) == {nodes[0].peer_id, nodes[2].peer_id}


async def test_provider_keys_from_cid_text(nodes: list[Node]) -> None:
    provider, asker = nodes[2], nodes[0]
    told = await provider.add_provider(CID_V1)
    assert set(told.stored) == {n.peer_id for n in nodes if n is not provider}
    assert told.key == provider_key(CID_V1) and told.key.startswith(b"\x12\x20")
    found = await asker.find_providers(CID_V1, count=1)
    assert [f.peer for f in found] == [provider.peer_id] and found[0].addrs
    # the same content by its multihash bytes
    assert [f.peer for f in await asker.find_providers(provider_key(CID_V1))] == [provider.peer_id]
    assert await provider.provide(CID_V0) == 3
    assert [f.peer for f in await nodes[3].find_providers(CID_V0)] == [provider.peer_id]
    with pytest.raises(ValueError, match="not a CID"):
        await provider.provide("not a cid")


def test_records_and_providers_age_on_the_nodes_clock() -> None:
    """The DHT reads time only from the node's Clock: on a virtual clock, records carry its wall
    time, and virtual hours expire provider records and records without a second passing."""
    clock = VirtualClock()

    async def main() -> None:
        net = MemoryNetwork()
        nodes: list[Node] = []
        try:
            for i in range(3):
                cfg = NodeConfig(
                    listen_addrs=["/memory/0"],
                    kad=KadConfig(
                        mode=Mode.SERVER,
                        auto_refresh=False,
                        provider_ttl=3600.0,
                        max_record_age=1800.0,
                    ),
                    enable_pubsub=False,
                    clock=clock,
                    seed=i,
                )
                node = Node(cfg, transports=[net.transport()], security=[PlaintextSecurity()])
                await node.start()
                node.register_validator("myapp", not_empty)
                nodes.append(node)
            for node in nodes[1:]:
                await node.bootstrap([str(nodes[0].p2p_addrs()[0])])
            await nodes[1].put_record(b"/myapp/t", b"v")
            assert nodes[2].dht is not None and nodes[1].dht is not None
            stored = nodes[2].dht.records.get(b"/myapp/t")
            assert stored is not None and stored.time_received == clock.time()
            await nodes[1].provide(CID_V1)
            assert [p.peer for p in await nodes[2].find_providers(CID_V1)] == [nodes[1].peer_id]
            nodes[1].dht.stop_providing(CID_V1)  # no republishing
            await asyncio.sleep(3601)  # virtual: costs no real time
            assert await nodes[0].find_providers(CID_V1) == []
            with pytest.raises(RecordNotFound):
                await nodes[0].get_value(b"/myapp/t", quorum=0)
        finally:
            for node in nodes:
                await node.close()

    run_virtual(main(), clock)
    assert clock.monotonic() >= 3600
