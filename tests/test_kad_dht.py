"""The kad DHT service over real loopback TCP: modes, lookups, records, providers, bad input.

The helpers at the top (KadNode, make_node, make_network) are shared with the scale test.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from multiaddr import Multiaddr

import p2pnet.kad.dht as kad_dht_module
from p2pnet.agent.record import AGENT_NAMESPACE, AgentRecordValidator, sign_agent_record
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.errors import P2PError, ProtocolNotSupported, StreamReset
from p2pnet.host.host import Host
from p2pnet.kad import (
    InvalidRecord,
    KadConfig,
    KadDHT,
    KadError,
    Mode,
    PeerNotFound,
    RecordNotFound,
)
from p2pnet.kad import messages as m
from p2pnet.kad.records import StoredRecord
from p2pnet.kad.routing_table import distance, kad_key
from p2pnet.multistream.core import MultistreamDialer
from p2pnet.peer.peer_id import PeerID
from p2pnet.protocols.identify import IdentifyService
from p2pnet.stream import Stream
from p2pnet.wire.framing import (
    read_length_prefixed,
    read_length_prefixed_or_eof,
    write_length_prefixed,
)

PROTO = "/ipfs/kad/1.0.0"


@dataclass
class KadNode:
    host: Host
    identify: IdentifyService
    dht: KadDHT

    @property
    def peer_id(self) -> PeerID:
        return self.host.peer_id

    @property
    def addr(self) -> Multiaddr:
        return self.host.p2p_addrs()[0]

    async def close(self) -> None:
        # host first: a DHT closing on a live host withdraws its protocol, which makes identify
        # push to every connected peer (right for a running node, wasted work at teardown)
        await self.host.close()
        await self.dht.close()


HostFactory = Callable[[KeyPair], Host]


def tcp_host(key: KeyPair) -> Host:
    return Host(key)


async def make_node(
    mode: Mode = Mode.SERVER,
    *,
    host_factory: HostFactory = tcp_host,
    key: KeyPair | None = None,
    **config: Any,
) -> KadNode:
    config.setdefault("auto_refresh", False)
    host = host_factory(key or KeyPair.generate())
    await host.start()
    identify = IdentifyService(host)
    dht = KadDHT(host, identify, KadConfig(mode=mode, **config))
    dht.validator.register(AGENT_NAMESPACE, AgentRecordValidator())
    await dht.start()
    return KadNode(host, identify, dht)


async def make_network(
    n: int,
    *,
    clients: int = 0,
    host_factory: HostFactory = tcp_host,
    concurrency: int = 50,
    **config: Any,
) -> list[KadNode]:
    """``n`` servers (and ``clients`` clients) bootstrapped off the first server; every
    server then refreshes its table once."""
    nodes = [await make_node(host_factory=host_factory, **config) for _ in range(n)]
    nodes += [
        await make_node(Mode.CLIENT, host_factory=host_factory, **config) for _ in range(clients)
    ]
    boot = nodes[0]
    sem = asyncio.Semaphore(concurrency)

    async def connect(node: KadNode) -> None:
        async with sem:
            await link(node, boot)

    async def self_lookup(node: KadNode) -> None:
        async with sem:
            await node.dht.get_closest_peers(node.peer_id.to_bytes())

    await asyncio.gather(*(connect(x) for x in nodes[1:]))
    await asyncio.gather(*(self_lookup(x) for x in nodes))
    return nodes


async def close_all(nodes: list[KadNode]) -> None:
    await asyncio.gather(*(x.close() for x in nodes), return_exceptions=True)


async def link(x: KadNode, y: KadNode) -> None:
    """Connect x to y and wait until both identified each other (no lookup)."""
    await x.host.connect(y.addr)
    await x.identify.wait_identified(y.peer_id)
    await y.identify.wait_identified(x.peer_id)


def no_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


@pytest.fixture
async def net10() -> AsyncIterator[list[KadNode]]:
    nodes = await make_network(10, clients=2)
    try:
        yield nodes
    finally:
        await close_all(nodes)


# -- modes ----------------------------------------------------------------------------------------


async def test_server_advertises_client_does_not(net10: list[KadNode]) -> None:
    servers, clients = net10[:10], net10[10:]
    boot = servers[0]
    for s in servers[1:]:
        assert PROTO in boot.host.peerstore.get_protocols(s.peer_id)
    for c in clients:
        assert PROTO not in boot.host.peerstore.get_protocols(c.peer_id)
        assert c.peer_id not in boot.dht.routing_table
        # clients have a table of servers to query
        assert len(c.dht.routing_table) > 0
        assert all(p not in {x.peer_id for x in clients} for p in c.dht.routing_table)
    # only servers ever enter tables
    client_ids = {c.peer_id for c in clients}
    for s in servers:
        assert not client_ids & set(s.dht.routing_table)
    # a client answers nothing
    with pytest.raises(ProtocolNotSupported):
        await boot.host.new_stream(clients[0].peer_id, [PROTO])


async def test_mode_switch_is_announced(net10: list[KadNode]) -> None:
    boot, client = net10[0], net10[10]
    client.dht.mode = Mode.SERVER
    await boot.dht.wait_until(lambda: client.peer_id in boot.dht.routing_table)
    resp = await boot.dht._rpc(client.peer_id, m.find_node(b"x"))
    assert resp is not None and resp.type == m.FIND_NODE
    client.dht.set_mode("client")
    await boot.dht.wait_until(lambda: client.peer_id not in boot.dht.routing_table)
    with pytest.raises(ProtocolNotSupported):
        await boot.dht._rpc(client.peer_id, m.find_node(b"x"))


async def test_a_request_to_a_server_goes_with_the_proposal_once_identified(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = await make_node(), await make_node()
    stranger = await make_node()
    try:
        await link(a, b)
        # what a's kad server handler sees first on b's stream: the request already there.
        # The lazy path opens its stream itself (what its multistream dialer is given); the
        # plain one goes through host.new_stream.
        early: list[bytes] = []
        real_new_stream = a.host.new_stream
        real_dialer = MultistreamDialer

        async def spy(peer: PeerID, protocols: Any, **kw: Any) -> Stream:
            early.append(kw.get("early_data", b""))
            return await real_new_stream(peer, protocols, **kw)

        def dialer_spy(protocols: Any, **kw: Any) -> MultistreamDialer:
            early.append(kw.get("early_data", b""))
            return real_dialer(protocols, **kw)

        a.host.new_stream = spy  # type: ignore[method-assign]
        monkeypatch.setattr(kad_dht_module, "MultistreamDialer", dialer_spy)
        resp = await a.dht._rpc(b.peer_id, m.find_node(b"x"))
        assert resp is not None and resp.type == m.FIND_NODE
        assert early and early[0].endswith(m.encode(m.find_node(b"x")))
        # a new connection: the request waits for its identify, then goes with the proposal
        await a.host.connect(stranger.addr)
        resp = await a.dht._rpc(stranger.peer_id, m.find_node(b"y"))
        assert resp is not None and resp.type == m.FIND_NODE
        assert early[-1].endswith(m.encode(m.find_node(b"y")))
        # protocols unknown after identify (it failed, or said nothing): a plain negotiation
        await a.dht._close_pooled_streams()
        a.host.peerstore.set_protocols(stranger.peer_id, [])
        resp = await a.dht._rpc(stranger.peer_id, m.find_node(b"z"))
        assert resp is not None and resp.type == m.FIND_NODE
        assert early[-1] == b""
    finally:
        await close_all([a, b, stranger])


# -- lookups --------------------------------------------------------------------------------------


async def test_every_node_finds_every_other(net10: list[KadNode]) -> None:
    for a in net10:
        for b in net10:
            if a is b:
                continue
            info = await a.dht.find_peer(b.peer_id)
            assert info.peer == b.peer_id
            assert b.host.listen_addrs[0] in info.addrs


async def test_find_peer_through_a_chain_of_strangers() -> None:
    """A knows only B, B only C, C only T: A finds T in two hops."""
    a, b, c, t = [await make_node() for _ in range(4)]
    try:
        await link(b, c)
        await link(c, t)
        await link(a, b)
        await a.host.disconnect(b.peer_id)  # the lookup has to dial from the table
        assert set(a.dht.routing_table) == {b.peer_id}
        assert t.peer_id not in a.host.peerstore.peers()
        info = await a.dht.find_peer(t.peer_id)
        assert info.peer == t.peer_id and t.host.listen_addrs[0] in info.addrs
        stats = a.dht.lookup_history[-1]
        assert stats.kind == "find_peer" and stats.found
        assert stats.hops == 2 and stats.messages >= 2
        with pytest.raises(PeerNotFound):
            await a.dht.find_peer(PeerID.from_public_key(KeyPair.generate().public_key))
    finally:
        await close_all([a, b, c, t])


async def test_get_closest_peers_are_the_true_closest() -> None:
    nodes = await make_network(24, k=6)
    try:
        key = b"some content key"
        target = kad_key(key)
        for asker in (nodes[0], nodes[7], nodes[-1]):
            got = await asker.dht.get_closest_peers(key)
            others = [x.peer_id for x in nodes if x is not asker]
            want = sorted(others, key=lambda p: distance(kad_key(p.to_bytes()), target))[:6]
            assert got == want
            stats = asker.dht.lookup_history[-1]
            assert stats.kind == "get_closest_peers" and 1 <= stats.hops <= 5
    finally:
        await close_all(nodes)


async def test_lookup_with_an_empty_table_returns_nothing() -> None:
    lone = await make_node()
    try:
        assert await lone.dht.get_closest_peers(b"k") == []
        with pytest.raises(PeerNotFound):
            await lone.dht.find_peer(PeerID.from_public_key(KeyPair.generate().public_key))
        with pytest.raises(KadError, match="bootstrap"):
            await lone.dht.bootstrap(["/ip4/127.0.0.1/tcp/1"])
    finally:
        await lone.close()


async def test_custom_protocol_id_keeps_networks_apart() -> None:
    private = [await make_node(protocol_id="/private/kad/1.0.0") for _ in range(3)]
    public = await make_node()
    try:
        for x in private[1:]:
            await x.dht.bootstrap([private[0].addr])
        await public.host.connect(private[0].addr)
        await public.identify.wait_identified(private[0].peer_id)
        await private[0].identify.wait_identified(public.peer_id)
        assert len(public.dht.routing_table) == 0
        assert public.peer_id not in private[0].dht.routing_table
        info = await private[1].dht.find_peer(private[2].peer_id)
        assert info.peer == private[2].peer_id
        assert "/private/kad/1.0.0" in private[0].host.protocols
        assert PROTO not in private[0].host.protocols
    finally:
        await close_all([*private, public])


async def test_full_bucket_keeps_live_peers_and_replaces_dead_ones() -> None:
    """k = 1: a newcomer to a full bucket triggers a liveness check of the resident; a live
    resident stays, a dead one is replaced by the newcomer."""
    a = await make_node(k=1, liveness_timeout=1.0)
    others = [await make_node() for _ in range(40)]
    try:
        by_cpl: dict[int, list[KadNode]] = {}
        for x in others:
            by_cpl.setdefault(a.dht.routing_table.cpl(x.peer_id), []).append(x)
        resident, newcomer, dead_one = next(v for v in by_cpl.values() if len(v) >= 3)[:3]
        await link(a, resident)
        assert a.dht.routing_table.peers() == [resident.peer_id]
        # a live resident is kept
        await link(a, newcomer)
        await a.dht.wait_until(lambda: a.dht.counters.get("liveness checks", 0) >= 1)
        assert resident.dht.counters.get("received FIND_NODE", 0) >= 1
        assert a.dht.routing_table.peers() == [resident.peer_id]
        assert newcomer.peer_id in a.dht.routing_table.replacements(
            a.dht.routing_table.cpl(newcomer.peer_id)
        )
        # once the resident is gone, the next check replaces it
        gone = asyncio.Event()
        a.host.on_disconnected(
            lambda conn: gone.set() if conn.remote_peer == resident.peer_id else None
        )
        await resident.close()
        async with asyncio.timeout(5):
            await gone.wait()
        await link(a, dead_one)
        await a.dht.wait_until(lambda: resident.peer_id not in a.dht.routing_table)
        assert a.dht.routing_table.peers() in ([dead_one.peer_id], [newcomer.peer_id])
    finally:
        await close_all([a, *others])


# -- records --------------------------------------------------------------------------------------


async def test_put_and_get_public_key_record(net10: list[KadNode]) -> None:
    owner = net10[3]
    key = b"/pk/" + owner.peer_id.to_bytes()
    value = owner.host.key.public_key.to_protobuf()
    stored = await owner.dht.put_value(key, value)
    assert stored == 9  # every other server (k = 20 > 9); clients do not store
    holders = [x for x in net10[:10] if x.dht.records.get(key) is not None]
    assert len(holders) == 10
    for reader in (net10[0], net10[7], net10[11]):
        assert await reader.dht.get_value(key) == value
    with pytest.raises(InvalidRecord):
        await owner.dht.put_value(key, KeyPair.generate().public_key.to_protobuf())


async def test_agent_record_put_get_newest_wins_and_outdated_holders_corrected(
    net10: list[KadNode],
) -> None:
    agent = KeyPair.generate(KeyType.Secp256k1)
    writer, reader = net10[2], net10[11]  # a server writes, a client reads
    key, v1 = sign_agent_record(agent, writer.peer_id, writer.host.listen_addrs, seq=1)
    assert await writer.dht.put_value(key, v1) >= 5
    assert await reader.dht.get_value(key) == v1
    _, v2 = sign_agent_record(agent, writer.peer_id, writer.host.listen_addrs, seq=2)
    assert await writer.dht.put_value(key, v2) >= 5
    # Someone still holds v1 (e.g. was offline during the second put).
    stale = net10[5]
    stale.dht.records.put(StoredRecord(key, v1, time.time()))
    # An older record is refused by a server that holds a newer one.
    with pytest.raises(InvalidRecord, match="better"):
        net10[6].dht.behaviour.store_local(key, v1, time.time())
    assert await reader.dht.get_value(key, quorum=0) == v2  # quorum 0: ask everybody
    await stale.dht.wait_until(lambda: getattr(stale.dht.records.get(key), "value", None) == v2)


async def test_records_with_bad_signatures_are_refused_on_put_and_get(
    net10: list[KadNode], caplog: pytest.LogCaptureFixture
) -> None:
    agent = KeyPair.generate(KeyType.Secp256k1)
    key, good = sign_agent_record(agent, net10[0].peer_id, [], seq=5)
    forged = good[:70] + bytes([good[70] ^ 1]) + good[71:]
    # PUT: the local validator refuses, and so does a remote server
    with pytest.raises(InvalidRecord):
        await net10[1].dht.put_value(key, forged)
    with pytest.raises(StreamReset):
        await net10[1].dht._rpc(net10[2].peer_id, m.put_value(key, forged))
    assert net10[2].dht.records.get(key) is None
    with pytest.raises(StreamReset):
        await net10[1].dht._rpc(net10[2].peer_id, m.put_value(key, b"x" * 20000))
    # GET: a hostile server holding a forged record cannot make anyone accept it
    for x in net10[:10]:
        x.dht.records.put(StoredRecord(key, forged, time.time()))
    with pytest.raises(RecordNotFound):
        await net10[11].dht.get_value(key, quorum=0)
    # ... and a valid record held by one honest node wins over the forged ones
    net10[4].dht.records.put(StoredRecord(key, good, time.time()))
    assert await net10[11].dht.get_value(key, quorum=0) == good
    with pytest.raises(InvalidRecord, match="no validator"):
        await net10[11].dht.get_value(b"/unknown-namespace/x")
    no_errors(caplog)


# -- providers ------------------------------------------------------------------------------------


async def test_provide_and_find_providers(net10: list[KadNode]) -> None:
    content = b"\x12\x20" + bytes(range(32))  # a sha2-256 multihash, as js requires
    p1, p2 = net10[3], net10[8]
    assert await p1.dht.provide(content) == 9
    assert await p2.dht.provide(content) == 9
    for asker in (net10[0], net10[11]):
        found = await asker.dht.find_providers(content, count=2)
        assert {f.peer for f in found} == {p1.peer_id, p2.peer_id}
        for f in found:
            owner = p1 if f.peer == p1.peer_id else p2
            assert owner.host.listen_addrs[0] in f.addrs
    only_one = await net10[11].dht.find_providers(content, count=1)
    assert len(only_one) == 1
    assert await net10[1].dht.find_providers(b"\x12\x20" + bytes(32)) == []


async def test_add_provider_for_someone_else_is_ignored(net10: list[KadNode]) -> None:
    liar, victim, server = net10[1], net10[2], net10[3]
    key = b"\x12\x20" + bytes([7]) * 32
    msg = m.add_provider(key, victim.dht.self_info())
    await liar.dht._rpc(server.peer_id, msg, expect_response=False)
    msg = m.add_provider(key, liar.dht.self_info())
    await liar.dht._rpc(server.peer_id, msg, expect_response=False)
    await server.dht.wait_until(lambda: server.dht.providers.get_providers(key, time.time()) != [])
    assert server.dht.providers.get_providers(key, time.time()) == [liar.peer_id]


# -- the RPC server -------------------------------------------------------------------------------


async def test_several_requests_on_one_stream(net10: list[KadNode]) -> None:
    a, b = net10[0], net10[1]
    stream = await a.host.new_stream(b.peer_id, [PROTO])
    async with stream:
        for msg in (
            m.find_node(b"one"),
            m.request(m.PING, b""),
            m.get_providers(b"\x12\x20" + bytes(32)),
        ):
            await write_length_prefixed(stream, m.encode(msg))
            resp = m.decode(await read_length_prefixed(stream))
            assert resp.type == msg.type
            if msg.type == m.FIND_NODE:
                assert len(resp.closerPeers) > 0
                assert a.peer_id.to_bytes() not in [p.id for p in resp.closerPeers]
        await stream.close()
        assert await stream.read() == b""


async def test_find_node_for_the_server_itself_includes_it(net10: list[KadNode]) -> None:
    a, b = net10[0], net10[1]
    resp = await a.dht._rpc(b.peer_id, m.find_node(b.peer_id.to_bytes()))
    assert resp is not None
    assert resp.closerPeers[0].id == b.peer_id.to_bytes()


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",  # not protobuf
        b"\x08\x09\x12\x01k",  # unknown message type
        m.encode(m.find_node(b"")),  # no key
        m.encode(m.request(m.PUT_VALUE, b"/pk/x")),  # PUT without a record
        m.encode(m.put_value(b"/pk/x", b"v")),  # invalid record
        m.encode(m.find_node(b"k" * 5000)),  # key too long
    ],
)
async def test_malformed_requests_reset_the_stream_and_the_server_survives(
    net10: list[KadNode], payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = net10[0], net10[1]
    stream = await a.host.new_stream(b.peer_id, [PROTO])
    await write_length_prefixed(stream, payload)
    with pytest.raises((StreamReset, Exception)) as info:
        await read_length_prefixed(stream)
    assert isinstance(info.value, StreamReset)
    assert (await a.dht._rpc(b.peer_id, m.find_node(b"still alive"))) is not None
    assert b.dht.counters.get("bad requests", 0) >= 1
    no_errors(caplog)


async def test_oversized_message_is_refused(net10: list[KadNode]) -> None:
    a, b = net10[0], net10[1]
    b.dht.config.max_message_size = 1000
    stream = await a.host.new_stream(b.peer_id, [PROTO])
    await stream.write(b"\xff\xff\x03")  # announces 65535 bytes
    with pytest.raises(StreamReset):
        await read_length_prefixed(stream)


# -- hostile and broken peers during lookups ---------------------------------------------------


async def _fake_server(handler: Callable[[Stream], Any]) -> tuple[Host, IdentifyService]:
    host = Host(KeyPair.generate())
    await host.start()
    identify = IdentifyService(host)
    host.set_stream_handler(PROTO, handler)
    return host, identify


async def test_lookups_survive_garbage_silence_and_lies(
    net10: list[KadNode], caplog: pytest.LogCaptureFixture
) -> None:
    """Hostile servers: one answers garbage, one never answers, one names the asker and
    unreachable peers as closer. Every lookup still terminates with the honest result; the
    garbage and silent peers are dropped from the table."""

    async def garbage(stream: Stream) -> None:
        await read_length_prefixed(stream)
        await write_length_prefixed(stream, b"\xff\xfe garbage")
        await stream.close()

    async def silent(stream: Stream) -> None:
        await read_length_prefixed(stream)
        await asyncio.Event().wait()  # never answers

    liar_ref: list[Host] = []

    async def liar(stream: Stream) -> None:
        data = await read_length_prefixed(stream)
        req = m.decode(data)
        asker = stream.conn.remote_peer
        resp = m.request(req.type, req.key)
        fakes = [PeerID.from_public_key(KeyPair.generate().public_key) for _ in range(20)]
        resp.closerPeers.append(
            m.peer_to_pb(m.PeerInfo(asker, [Multiaddr("/ip4/127.0.0.1/tcp/1")]))
        )
        for f in fakes:
            resp.closerPeers.append(
                m.peer_to_pb(m.PeerInfo(f, [Multiaddr("/ip4/127.0.0.1/tcp/1")]))
            )
        resp.closerPeers.append(m.peer_to_pb(m.PeerInfo(fakes[0], [])))  # a duplicate
        await write_length_prefixed(stream, m.encode(resp))
        await stream.close()

    hostile = [await _fake_server(h) for h in (garbage, silent, liar)]
    liar_ref.append(hostile[2][0])
    asker = await make_node(request_timeout=1.0, query_timeout=20.0, max_failures=1)
    try:
        for host, _ in hostile:
            await asker.host.connect(host.p2p_addrs()[0])
            await asker.identify.wait_identified(host.peer_id)
        assert all(h.peer_id in asker.dht.routing_table for h, _ in hostile)
        await asker.dht.bootstrap([net10[0].addr])
        t0 = time.monotonic()
        target = net10[6]
        asker.dht.routing_table.remove(target.peer_id)
        await asker.host.disconnect(target.peer_id)
        info = await asker.dht.find_peer(target.peer_id)
        assert info.peer == target.peer_id
        got = await asker.dht.get_closest_peers(b"anything")
        honest = {x.peer_id for x in net10[:10]}
        assert got and set(got) <= honest | {h.peer_id for h, _ in hostile}
        assert time.monotonic() - t0 < 15
        for host, _ in hostile[:2]:
            assert host.peer_id not in asker.dht.routing_table
        assert asker.dht.counters.get("failed requests", 0) >= 2
        assert asker.peer_id not in got
    finally:
        await asker.close()
        for host, _ in hostile:
            await host.close()
    no_errors(caplog)


async def test_outbound_streams_are_reused_and_stale_ones_replaced(net10: list[KadNode]) -> None:
    a, b = net10[0], net10[1]
    await a.dht._rpc(b.peer_id, m.find_node(b"one"))
    muxer = a.host.connections(b.peer_id)[0].muxed
    before = muxer.num_streams
    pooled = a.dht._idle_streams[b.peer_id][0][0]
    for i in range(5):
        await a.dht._rpc(b.peer_id, m.find_node(b"again %d" % i))
    assert muxer.num_streams == before
    assert [s for s, _ in a.dht._idle_streams[b.peer_id]] == [pooled]
    # the server drops idle streams: the next request notices and uses a fresh stream
    b.dht.config.inbound_idle_timeout = 0.05
    await a.dht._rpc(b.peer_id, m.find_node(b"arm the short timeout"))
    await b.dht.wait_until(lambda: b.dht.counters.get("idle inbound streams reset", 0) >= 1)
    resp = await a.dht._rpc(b.peer_id, m.find_node(b"after the reset"))
    assert resp is not None and resp.type == m.FIND_NODE
    assert [s for s, _ in a.dht._idle_streams[b.peer_id]] != [pooled]


# -- upkeep bugs found against other implementations ------------------------------------------


async def test_a_peer_that_answers_add_provider_keeps_its_place(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """py-libp2p answers ADD_PROVIDER (js and go do not). That answer must not be read as the
    answer to the next request on a reused stream ("answered FIND_NODE with ADD_PROVIDER"),
    which used to drop a good peer from the routing table."""
    stale_sent = asyncio.Event()

    async def answers_everything(stream: Stream) -> None:
        while (data := await read_length_prefixed_or_eof(stream)) is not None:
            req = m.decode(data)
            resp = m.request(req.type, req.key)
            resp.providerPeers.extend(req.providerPeers)
            await write_length_prefixed(stream, m.encode(resp))
            if req.type == m.ADD_PROVIDER:
                stale_sent.set()
        await stream.close()

    host, _ = await _fake_server(answers_everything)
    asker = await make_node()
    try:
        await asker.host.connect(host.p2p_addrs()[0])
        await asker.identify.wait_identified(host.peer_id)
        assert asker.dht.routing_table.peers() == [host.peer_id]
        result = await asker.dht.add_provider(b"\x12\x20" + bytes([9]) * 32)
        assert result.stored == [host.peer_id] and result.failed == []
        async with asyncio.timeout(5):
            await stale_sent.wait()
        for i in range(3):
            assert await asker.dht.get_closest_peers(b"next %d" % i) == [host.peer_id]
        assert asker.dht.routing_table.peers() == [host.peer_id]
        assert asker.dht.counters.get("failed requests", 0) == 0
    finally:
        await asker.close()
        await host.close()
    no_errors(caplog)


async def test_a_stale_answer_on_a_pooled_stream_is_not_the_peers_fault(
    net10: list[KadNode],
) -> None:
    """Whatever leaves an unread answer on a pooled stream, the request is retried on a fresh
    stream instead of counting the peer as broken."""
    a, b = net10[0], net10[1]
    await a.dht._rpc(b.peer_id, m.find_node(b"pool a stream"))
    pooled = a.dht._idle_streams[b.peer_id][-1][0]
    # an answer nobody read: the server answers a PING the client wrote behind our back
    await write_length_prefixed(pooled, m.encode(m.request(m.PING, b"")))
    await b.dht.wait_until(lambda: b.dht.counters.get("received PING", 0) >= 1)
    resp = await a.dht._rpc(b.peer_id, m.find_node(b"after the stray ping"))
    assert resp is not None and resp.type == m.FIND_NODE
    assert a.dht.counters.get("stale pooled streams", 0) == 1
    assert b.peer_id in a.dht.routing_table


async def test_routing_table_follows_the_network_from_an_empty_start() -> None:
    """A node whose table is empty looks itself up once identify shows a kad server (no
    bootstrap call), and again after its table emptied and a new server turned up."""
    a = await make_node(auto_refresh=True)
    b, c, d, e, f = [await make_node() for _ in range(5)]
    try:
        await link(b, c)
        await link(c, d)
        await link(e, f)
        await link(a, b)  # a learns b only through identify
        await a.dht.wait_until(
            lambda: {b.peer_id, c.peer_id, d.peer_id} <= set(a.dht.routing_table)
        )
        assert a.dht.counters.get("sent FIND_NODE", 0) >= 2  # its self lookup found them
        # the refresh that began with that self lookup goes on (bucket lookups) and would put
        # b, c and d back after they are removed: the table must be truly empty when e comes
        refreshing = a.dht._refreshing
        if refreshing is not None:
            await asyncio.wait_for(asyncio.shield(refreshing), 10)
        for x in (b, c, d):
            a.dht.routing_table.remove(x.peer_id)
        assert len(a.dht.routing_table) == 0
        await link(a, e)
        await a.dht.wait_until(lambda: f.peer_id in a.dht.routing_table)
    finally:
        await close_all([a, b, c, d, e, f])


@pytest.mark.parametrize(
    "answer",
    [
        b"\xff\xff\xff\x7f",  # announces 256 MiB
        b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # an over-long varint
        b"\x20cut short",  # the stream ends inside the answer
    ],
    ids=["oversized", "bad varint", "cut short"],
)
async def test_a_bad_answer_read_as_it_arrives_fails_the_request(answer: bytes) -> None:
    """The requester reads the echo and the answer by a push consumer: an answer it cannot
    take fails the request (and resets the stream), and the peer is counted as failed."""

    async def liar(stream: Stream) -> None:
        await read_length_prefixed(stream)
        await stream.write(answer)
        await stream.close()

    host, _ = await _fake_server(liar)
    asker = await make_node()
    try:
        await asker.host.connect(host.p2p_addrs()[0])
        await asker.identify.wait_identified(host.peer_id)
        with pytest.raises(P2PError):
            async with asyncio.timeout(5):
                await asker.dht._rpc(host.peer_id, m.find_node(b"x"))
        assert asker.dht._idle_streams.get(host.peer_id) in (None, [])
        # the stream was reset, not left open (nor pooled)
        assert asker.host.connections(host.peer_id)[0].muxed.num_streams == 0
    finally:
        await asker.close()
        await host.close()
