"""The asyncio Pubsub service on real hosts over TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from p2pnet.crypto.keys import KeyPair
from p2pnet.errors import P2PError
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.mux.yamux import DEFAULT_WINDOW, YamuxConfig
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.record import SIGNED_PEER_RECORD, make_peer_record
from p2pnet.protocols.identify import IdentifyService
from p2pnet.pubsub import (
    FLOODSUB_ID,
    MESHSUB_V10,
    MESHSUB_V12,
    GossipsubConfig,
    InvalidParameters,
    Message,
    MessageTooLargeError,
    NoPeersError,
    NotStartedError,
    PeerScoreThresholds,
    Pubsub,
    ValidationResult,
)
from p2pnet.resources.limits import ResourceLimits
from p2pnet.wire.framing import encode_length_prefixed
from p2pnet.wire.pb import rpc_pb2
from p2pnet.wire.varint import encode_uvarint

T = "topic"


def fast(**kw: Any) -> GossipsubConfig:
    kw.setdefault("heartbeat_interval", 0.05)
    kw.setdefault("heartbeat_initial_delay", 0.01)
    return GossipsubConfig(**kw)


Node = tuple[Host, Pubsub]
Factory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node() -> AsyncIterator[Factory]:
    nodes: list[Node] = []

    async def factory(config: GossipsubConfig | None = None, **kw: Any) -> Node:
        key = kw.pop("key", None) or KeyPair.generate()
        host = Host(key, kw.pop("host_config", None))
        await host.start()
        ps = Pubsub(host, config or fast(), **kw)
        nodes.append((host, ps))
        await ps.start()
        return host, ps

    yield factory
    for host, ps in reversed(nodes):
        await ps.close()
        await host.close()


async def until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def connect(a: Host, b: Host) -> None:
    await a.connect(b.p2p_addrs()[0])


async def collect(sub: Any, n: int, timeout: float = 10.0) -> list[Message]:
    out = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            out.append(await sub.get())
    return out


async def test_six_nodes_every_message_once(make_node: Factory) -> None:
    nodes = [await make_node() for _ in range(6)]
    for i in range(6):
        for j in range(i + 1, 6):
            await connect(nodes[i][0], nodes[j][0])
    subs = [ps.subscribe(T) for _, ps in nodes]
    await until(lambda: all(len(ps.mesh_peers(T)) == 5 for _, ps in nodes), what="meshes")
    for _, ps in nodes:
        assert len(ps.topic_peers(T)) == 5
        assert ps.topics() == [T]
    sent = []
    for k in range(10):
        for i, (_, ps) in enumerate(nodes):
            sent.append(await ps.publish(T, b"from %d #%d" % (i, k)))
    for (_, ps), sub in zip(nodes, subs, strict=True):
        got = await collect(sub, 60)
        assert sorted(m.id for m in got) == sorted(sent)
        # nothing delivered twice: 50 accepted from peers (+ 10 own), every other copy counted
        # as a duplicate by the router, which never delivers a message it has seen
        assert sub.pending() == 0
        assert ps.router.stats["msg_delivered"] == 50
    m = got[0]
    assert m.from_peer is not None and m.seqno is not None and m.topic == T
    assert m.id == m.from_peer.to_bytes() + m.seqno.to_bytes(8, "big")
    for _, ps in nodes:
        for p in ps.peers():
            assert ps.peer_protocol(p) == MESHSUB_V12
            assert ps.peer_score(p) >= 0


async def test_validators_accept_reject_ignore_and_timeout(make_node: Factory) -> None:
    (ha, a), (hb, b), (hc, c) = [await make_node(fast(validate_timeout=0.3)) for _ in range(3)]
    await connect(ha, hb)
    await connect(hb, hc)
    seen: list[tuple[PeerID, bytes]] = []

    async def check(peer: PeerID, msg: Message) -> ValidationResult | bool:
        seen.append((peer, msg.data))
        if msg.data == b"slow":
            await asyncio.sleep(5)
        if msg.data == b"bad":
            return False
        if msg.data == b"meh":
            return ValidationResult.IGNORE
        if msg.data == b"boom":
            raise RuntimeError("validator bug")
        return True

    b.set_validator(T, check)
    sub_b, sub_c = b.subscribe(T), c.subscribe(T)
    a.subscribe(T)
    await until(lambda: ha.peer_id in b.mesh_peers(T) and hc.peer_id in b.mesh_peers(T))
    for data in (b"bad", b"meh", b"slow", b"boom", b"good"):
        await a.publish(T, data)
    got_c = await collect(sub_c, 1)
    assert [m.data for m in got_c] == [b"good"]
    assert [m.data for m in await collect(sub_b, 1)] == [b"good"]
    assert {d for _, d in seen} == {b"bad", b"meh", b"slow", b"boom", b"good"}
    assert all(p == ha.peer_id for p, _ in seen)
    # the slow one times out: ignored (no penalty for a), not forwarded
    await until(lambda: b.router.stats.get("validation_timeout", 0) == 1, what="timeout")
    assert b.router.stats["validation_error"] == 1  # the one that raised
    assert sub_b.pending() == 0
    assert b.router.stats["msg_rejected"] == 1
    assert b.router.stats["msg_ignored"] == 3
    # T has no parameters of its own: the default topic parameters score only P4 (the one reject)
    assert b.score_breakdown(ha.peer_id).topics[T]["p4"] == 1.0
    b.set_validator(T, None)
    await a.publish(T, b"bad")
    # c's next message is this one: nothing else came over b -> c before it
    assert [m.data for m in await collect(sub_c, 1)] == [b"bad"]


async def test_unsubscribe_prunes_and_ends_iteration(make_node: Factory) -> None:
    (ha, a), (hb, b) = await make_node(), await make_node()
    await connect(ha, hb)
    sub_a = a.subscribe(T)
    second = a.subscribe(T)
    b.subscribe(T)
    await until(lambda: ha.peer_id in b.mesh_peers(T))
    second.cancel()
    assert T in a.topics()  # one subscription left
    received = []

    async def consume() -> None:
        async for msg in sub_a:
            received.append(msg)

    task = asyncio.create_task(consume())
    await b.publish(T, b"one")
    await until(lambda: len(received) == 1)
    sub_a.cancel()
    await asyncio.wait_for(task, 2)  # the iterator ended
    assert a.topics() == []
    await until(lambda: ha.peer_id not in b.mesh_peers(T), what="PRUNE")
    await until(lambda: ha.peer_id not in b.topic_peers(T))
    assert b.router.backoff_remaining(ha.peer_id, T) > 5  # our unsubscribe backoff (10 s)
    with pytest.raises(StopAsyncIteration):
        await sub_a.get()
    a.unsubscribe(T)  # idempotent; awaiting it is the deprecated form and still works
    with pytest.warns(DeprecationWarning, match="synchronous"):
        await a.unsubscribe(T)


async def test_floodsub_and_meshsub_v10_peers(make_node: Factory) -> None:
    hn, n = await make_node()
    hf, f = await make_node(fast(protocols=(FLOODSUB_ID,)))
    ho, o = await make_node(fast(protocols=(MESHSUB_V10,)))
    await connect(hf, hn)
    await connect(ho, hn)
    subs = [ps.subscribe(T) for ps in (n, f, o)]
    await until(lambda: len(n.topic_peers(T)) == 2 and ho.peer_id in n.mesh_peers(T))
    # f and o must have seen n's subscription too, or their publish reaches nobody.
    await until(lambda: hn.peer_id in f.topic_peers(T) and hn.peer_id in o.topic_peers(T))
    assert n.peer_protocol(hf.peer_id) == FLOODSUB_ID
    assert n.peer_protocol(ho.peer_id) == MESHSUB_V10
    assert hf.peer_id not in n.mesh_peers(T)
    ids = [await ps.publish(T, b"from %d" % i) for i, ps in enumerate((n, f, o))]
    for sub in subs:
        assert sorted(m.id for m in await collect(sub, 3)) == sorted(ids)


async def test_direct_peers_connect_and_are_not_meshed(make_node: Factory) -> None:
    hb, b = await make_node()
    addr = str(hb.p2p_addrs()[0])
    ha, a = await make_node(fast(direct_peers=[addr], direct_connect_ticks=2))
    b.add_direct_peer(ha.peer_id)
    await until(lambda: ha.is_connected(hb.peer_id), what="direct connect")
    sub_b = b.subscribe(T)
    a.subscribe(T)
    await until(lambda: hb.peer_id in a.topic_peers(T))
    ticks = a.router.heartbeat_ticks, b.router.heartbeat_ticks
    await until(  # a few heartbeats of mesh maintenance on both sides
        lambda: (
            a.router.heartbeat_ticks >= ticks[0] + 3 and b.router.heartbeat_ticks >= ticks[1] + 3
        )
    )
    assert a.mesh_peers(T) == [] and b.mesh_peers(T) == []
    await a.publish(T, b"direct")
    assert (await collect(sub_b, 1))[0].data == b"direct"
    await ha.disconnect(hb.peer_id)
    await until(lambda: ha.is_connected(hb.peer_id), what="reconnect of a direct peer")


@pytest.mark.parametrize("records", ["given", "from identify"])
async def test_peer_exchange_over_tcp(make_node: Factory, records: str) -> None:
    """Leaves that know only the hub meet through its PRUNEs: each offered peer comes with its
    signed peer record (the leaves have no other address for each other), given to the router
    or the one identify verified and kept in the hub's peer store."""
    cfg = fast(do_px=True, d=2, d_lo=1, d_hi=3, d_score=1, d_out=0, prune_backoff=30.0)
    hub_host, hub = await make_node(cfg)
    leaves = [await make_node(fast(d=2, d_lo=1, d_hi=3, d_score=1, d_out=0)) for _ in range(5)]
    identify = [IdentifyService(h) for h in (hub_host, *(h for h, _ in leaves))]
    if records == "from identify":
        for service in identify:
            await service.start()
    try:
        await _exchange_peers(hub_host, hub, leaves, records)
    finally:
        for service in identify:
            await service.close()


async def _exchange_peers(hub_host: Host, hub: Pubsub, leaves: list[Node], records: str) -> None:
    for host, ps in leaves:
        await connect(host, hub_host)
        ps.set_app_score(hub_host.peer_id, 2.0)  # trusted enough to follow its PX (>= 10)
        if records == "given":
            record = make_peer_record(host.key, host.listen_addrs, 1)
            hub.router.peer_records[host.peer_id] = record
        else:
            await until(
                lambda h=host: (
                    hub_host.peerstore.get_metadata(h.peer_id, SIGNED_PEER_RECORD) is not None
                ),
                what="the hub identified the leaf",
            )
    hub.subscribe(T)
    for _, ps in leaves:
        ps.subscribe(T)

    def leaf_links() -> int:
        return sum(
            1
            for h1, _ in leaves
            for h2, _ in leaves
            if h1 is not h2 and h1.is_connected(h2.peer_id)
        )

    await until(lambda: leaf_links() > 0, what="leaves connected through PX")
    assert sum(ps.router.stats.get("px_offered", 0) for _, ps in leaves) > 0


async def test_bad_frames_reset_the_stream_only(make_node: Factory) -> None:
    (ha, a), (hb, b) = await make_node(fast(max_message_size=4096)), await make_node()
    await connect(hb, ha)
    sub = a.subscribe(T)
    b.subscribe(T)
    await until(lambda: hb.peer_id in a.mesh_peers(T))
    # two whole frames in one chunk (the decoder's path; one frame alone takes a shorter one)
    raw0 = await hb.new_stream(ha.peer_id, [MESHSUB_V12])
    received = a.router.stats.get("rpc_received", 0)
    await raw0.write(encode_length_prefixed(b"") * 2)
    await until(lambda: a.router.stats.get("rpc_received", 0) == received + 2, what="2 frames")
    raw = await hb.new_stream(ha.peer_id, [MESHSUB_V12])
    await raw.write(encode_length_prefixed(b"\xff\xff\xff\xff"))  # not a protobuf RPC
    with pytest.raises(Exception):  # noqa: B017 - reset, EOF or closed: all fine
        async with asyncio.timeout(2):
            while await raw.read():
                pass
            await raw.write(b"more")
    assert a.router.stats["frame_undecodable"] == 1
    raw2 = await hb.new_stream(ha.peer_id, [MESHSUB_V12])
    await raw2.write(encode_length_prefixed(bytes(10_000)))  # above max_message_size
    await until(lambda: a.router.stats.get("frame_oversized", 0) == 1, what="oversized frame")
    assert ha.is_connected(hb.peer_id)
    raw3 = await hb.new_stream(ha.peer_id, [MESHSUB_V12])
    await raw3.write(encode_length_prefixed(bytes(100))[:20])  # a frame cut off by EOF
    await raw3.close()
    await until(lambda: a.router.stats.get("frame_truncated", 0) == 1, what="truncated frame")
    assert ha.is_connected(hb.peer_id)
    stats = a.router.stats
    # each reported once; what each costs is the router's decision (tests/test_pubsub_router.py)
    assert [stats[f"frame_{f}"] for f in ("undecodable", "oversized", "truncated")] == [1, 1, 1]
    await b.publish(T, b"still fine")
    assert (await collect(sub, 1))[0].data == b"still fine"


async def test_slow_subscription_drops_oldest(make_node: Factory) -> None:
    _, a = await make_node(fast(subscription_queue_size=5))
    sub = a.subscribe(T)
    for i in range(20):
        await a.publish(T, b"%d" % i)
    assert sub.dropped == 15 and sub.pending() == 5
    assert [m.data for m in await collect(sub, 5)] == [b"%d" % i for i in range(15, 20)]


async def test_publish_errors_and_lifecycle(make_node: Factory) -> None:
    host = Host(KeyPair.generate())
    await host.start()
    try:
        ps = Pubsub(host, fast(d_lo=9))
        with pytest.raises(NotStartedError):
            ps.subscribe(T)
        with pytest.raises(InvalidParameters, match="d_lo"):
            await ps.start()
        ps2 = Pubsub(host, fast(), score_thresholds=PeerScoreThresholds(gossip_threshold=1))
        with pytest.raises(InvalidParameters, match="gossip"):
            await ps2.start()
    finally:
        await host.close()
    _, a = await make_node(fast(allow_publish_to_zero_peers=False, max_message_size=2048))
    with pytest.raises(NoPeersError):
        await a.publish(T, b"nobody")
    with pytest.raises(MessageTooLargeError):
        await a.publish(T, bytes(4096))


async def test_graylisted_peer_ignored_and_close_is_clean(make_node: Factory) -> None:
    (ha, a), (hb, b) = await make_node(), await make_node()
    await connect(ha, hb)
    sub = a.subscribe(T)
    b.subscribe(T)
    await until(lambda: hb.peer_id in a.mesh_peers(T))
    a.set_app_score(hb.peer_id, -10.0)  # -100: below the graylist threshold
    assert a.peer_score(hb.peer_id) == -100.0
    await b.publish(T, b"ignored")
    await until(lambda: a.router.stats.get("rpc_graylisted", 0) > 0)
    assert sub.pending() == 0
    await until(lambda: hb.peer_id not in a.mesh_peers(T), what="negative peer pruned")
    received: list[Message] = []

    async def consume() -> None:
        async for msg in sub:
            received.append(msg)

    task = asyncio.create_task(consume())
    await a.close()
    await asyncio.wait_for(task, 2)  # close ends the subscriptions
    assert len(a._tasks) == 0
    assert not [p for p in ha.protocols if "sub" in p]
    with pytest.raises(NotStartedError):
        a.subscribe(T)


async def test_thirty_nodes_over_tcp(make_node: Factory) -> None:
    rng = random.Random(4)
    nodes = [await make_node(fast(heartbeat_interval=0.1)) for _ in range(30)]
    for i, (host, _) in enumerate(nodes):
        for j in rng.sample([x for x in range(30) if x != i], 4):
            await host.connect(nodes[j][0].p2p_addrs()[0])
    subs = [ps.subscribe(T) for _, ps in nodes]
    cfg = GossipsubConfig()

    def meshes_ok() -> bool:
        return all(cfg.d_lo <= len(ps.mesh_peers(T)) <= cfg.d_hi for _, ps in nodes)

    await until(meshes_ok, timeout=10, what="all meshes within [Dlo, Dhi]")
    ids = []
    for k in range(200):
        ids.append(await nodes[rng.randrange(30)][1].publish(T, b"m%d" % k))
        if k % 20 == 19:
            await asyncio.sleep(0.01)  # pacing: let the writers drain (queues are bounded)
    for (host, ps), sub in zip(nodes, subs, strict=True):
        got = await collect(sub, 200, timeout=30)
        assert sorted(m.id for m in got) == sorted(ids)
        # delivered once: the router accepted exactly the messages other nodes published
        own = sum(1 for m in got if m.from_peer == host.peer_id)
        assert sub.pending() == 0 and ps.router.stats["msg_delivered"] == 200 - own


async def test_a_trickled_frame_must_complete_within_its_deadline(make_node: Factory) -> None:
    """Issue 11: the deadline is for the whole frame from its first byte, not for each read: a
    byte every 20 ms never lets a single read time out, yet the frame is refused after
    ``frame_read_timeout`` (a truncated frame) and its stream reset."""
    (ha, a), (hb, _) = await make_node(fast(frame_read_timeout=0.3)), await make_node()
    await connect(hb, ha)
    raw = await hb.new_stream(ha.peer_id, [MESHSUB_V12])
    loop = asyncio.get_running_loop()
    start = loop.time()
    await raw.write(encode_uvarint(1000))
    with pytest.raises(P2PError):  # reset while we trickle
        async with asyncio.timeout(5):
            for _ in range(1000):
                await raw.write(b"x")
                await asyncio.sleep(0.02)  # the attacker's pace: 20 s for the whole frame
    await until(lambda: a.router.stats.get("frame_truncated", 0) == 1, what="frame deadline")
    assert loop.time() - start < 3.0
    assert ha.is_connected(hb.peer_id)


async def test_inbound_frames_pushed_timeouts_and_bad_prefixes(make_node: Factory) -> None:
    """The inbound stream is read in push mode: a frame cut off mid-way times out (its held
    bytes given back to the stream's scope), a malformed length prefix resets the stream, and
    the peer's own stream keeps working."""
    (ha, a), (hb, b) = await make_node(fast(frame_read_timeout=0.3)), await make_node()
    await connect(hb, ha)
    sub = a.subscribe(T)
    b.subscribe(T)
    await until(lambda: hb.peer_id in a.mesh_peers(T))
    # a frame whose last bytes never come: reported once, the stream reset
    conn_scope = ha.connections(hb.peer_id)[0].scope
    assert conn_scope is not None
    before = conn_scope.scope.used("memory")
    raw = await hb.new_stream(ha.peer_id, [MESHSUB_V12])
    await raw.write(encode_length_prefixed(bytes(1000))[:500])
    # the bytes of the frame under assembly are held against the stream's (connection's) scope
    await until(lambda: conn_scope.scope.used("memory") >= before + 490, what="bytes held")
    await until(lambda: a.router.stats.get("frame_truncated", 0) == 1, what="timed-out frame")
    await until(lambda: raw.is_reset, what="reset of the cut-off stream")
    assert conn_scope.scope.used("memory") == before
    # a length prefix that is not a minimal varint: the stream is reset, nothing reported
    raw2 = await hb.new_stream(ha.peer_id, [MESHSUB_V12])
    await raw2.write(b"\x80\x00")
    await until(lambda: raw2.is_reset, what="reset after a malformed prefix")
    assert a.router.stats.get("frame_undecodable", 0) == 0
    # the peer's own stream still delivers
    published = await b.publish(T, b"whole")
    assert (await collect(sub, 1))[0].id == published
    assert ha.is_connected(hb.peer_id)


#: a reader whose window stays at 256 KiB: what it does not read leaves a fixed amount in flight
FIXED_WINDOW = HostConfig(yamux=YamuxConfig(max_window=DEFAULT_WINDOW))


def _stop_reading(ps: Pubsub, sender: PeerID) -> list[Any]:
    """``ps`` stops reading what ``sender`` writes to it (its inbound pubsub stream)."""
    streams = list(ps._peers[sender].inbound)
    assert streams
    for s in streams:
        s.pause_reading()
    return streams


async def test_queued_frames_count_against_the_peer_scope(make_node: Factory) -> None:
    """Issue 11: the frames queued for a peer that does not read are reserved in its scope
    (through our outbound stream's scope), given back as they are written, and all of them once
    the stream is reset or the peer leaves; nothing dropped while the limits allow them."""
    (ha, a), (hb, b) = await make_node(), await make_node(host_config=FIXED_WINDOW)
    await connect(ha, hb)
    a.subscribe(T)
    sub = b.subscribe(T)
    await until(lambda: hb.peer_id in a.mesh_peers(T))
    state = a._peers[hb.peer_id]
    scope = state.scope
    assert scope is not None
    tasks_before = len(a._tasks)
    paused = _stop_reading(b, ha.peer_id)
    payload = bytes(32 * 1024)
    for _ in range(64):  # 2 MiB: more than the stream's send window
        await a.publish(T, payload)
    await until(lambda: state.queued_bytes > 256 * 1024, what="frames queued")
    # the outbound stream buffers nothing else: its memory is exactly what waits for the peer,
    # and it shows in the peer's scope
    assert scope.memory == state.queued_bytes
    assert ha.resources.peer_usage(hb.peer_id)["memory"] >= state.queued_bytes
    assert a.dropped_frames == 0
    for s in paused:
        s.resume_reading()
    got = await collect(sub, 64)
    assert len(got) == 64
    await until(lambda: state.queued_bytes == 0, what="queue written")
    assert scope.memory == 0
    # the peer stops reading again and resets our stream: every queued byte is given back
    paused = _stop_reading(b, ha.peer_id)
    for _ in range(32):
        await a.publish(T, payload)
    await until(lambda: state.queued_bytes > 256 * 1024, what="frames queued again")
    assert scope.memory == state.queued_bytes
    for s in paused:
        await s.reset()
    await until(lambda: a._peers.get(hb.peer_id) is not state, what="stream dropped")
    assert state.queued_bytes == 0 and scope.memory == 0
    # then it leaves: its scope holds nothing, no task of ours for it remains
    await ha.disconnect(hb.peer_id)
    await until(lambda: not ha.resources.peer_usage(hb.peer_id), what="peer scope released")
    await until(lambda: len(a._tasks) < tasks_before, what="no task left for the peer")


async def test_frames_over_the_peer_memory_limit_are_dropped(make_node: Factory) -> None:
    """Issue 11: when the peer's scope refuses a frame's bytes, the frame is dropped like one
    to a full queue (``dropped_frames``), no error escapes, the peer stays connected and gets
    the later messages once it reads again; its memory returns to 0."""
    limit = 256 * 1024
    cfg = HostConfig(resources=ResourceLimits(stream_memory=limit))
    (ha, a), (hb, b) = await make_node(host_config=cfg), await make_node(host_config=FIXED_WINDOW)
    await connect(ha, hb)
    a.subscribe(T)
    sub = b.subscribe(T)
    await until(lambda: hb.peer_id in a.mesh_peers(T))
    state = a._peers[hb.peer_id]
    assert state.scope is not None
    paused = _stop_reading(b, ha.peer_id)
    payload = bytes(32 * 1024)
    for _ in range(128):  # 4 MiB: the window, then the limit, then drops
        await a.publish(T, payload)
    assert a.dropped_frames > 0
    assert ha.resources.refused["stream/memory"] > 0
    assert 0 < state.queued_bytes <= limit and state.queue.qsize() < 128
    assert ha.is_connected(hb.peer_id)
    for s in paused:
        s.resume_reading()
    await until(lambda: state.queued_bytes == 0, what="queue written")
    assert state.scope.memory == 0
    published = await a.publish(T, b"after")
    received = 0
    async with asyncio.timeout(10):
        while (await sub.get()).id != published:
            received += 1
    assert 0 < received < 128  # what was queued arrived, the dropped frames did not
    # it stops reading again and leaves while frames wait: all given back, the queue emptied
    _stop_reading(b, ha.peer_id)
    for _ in range(32):
        await a.publish(T, payload)
    await until(lambda: state.queued_bytes > 0, what="frames queued again")
    await ha.disconnect(hb.peer_id)
    await until(lambda: not ha.resources.peer_usage(hb.peer_id), what="peer scope released")
    assert state.queued_bytes == 0 and state.queue.empty() and state.scope.memory == 0
    assert hb.peer_id not in a._peers


async def test_a_dropped_peers_late_frames_are_refused(make_node: Factory) -> None:
    """Frames that a dropped peer's inbound stream still hands over (before its reset lands)
    are refused with that stream, even once the peer is back with a new state: the router never
    sees them."""
    (ha, a), (hb, b) = await make_node(), await make_node()
    await connect(hb, ha)
    a.subscribe(T)
    b.subscribe(T)
    await until(lambda: hb.peer_id in a.mesh_peers(T))
    old = a._peers[hb.peer_id]
    frame = rpc_pb2.RPC(subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid="x")])
    assert a._handle_frames(hb.peer_id, old, [frame.SerializeToString()])
    a._drop_peer(hb.peer_id)
    a._ensure_outbound(hb.peer_id)  # the peer is back (still connected): a new state
    assert a._peers[hb.peer_id] is not old
    received = dict(a.router.stats)
    assert not a._handle_frames(hb.peer_id, old, [frame.SerializeToString()])
    assert a.router.stats == received
