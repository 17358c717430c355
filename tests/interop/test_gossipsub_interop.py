"""Gossipsub between p2pnet and js-libp2p (@libp2p/gossipsub 17.1.1 via mod_gossipsub.mjs).

Both sides use one message-ID function (from ‖ seqno unless a test says otherwise): IHAVE,
IWANT and IDONTWANT only work when the IDs agree.
"""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from p2pnet.crypto.keys import KeyPair
from p2pnet.host.host import Host
from p2pnet.peer.peer_id import PeerID
from p2pnet.pubsub import (
    MESHSUB_V12,
    GossipsubConfig,
    Message,
    Pubsub,
    SignaturePolicy,
    Subscription,
    msg_id_js_strict_sign,
)

from .jspeer import JsPeer, JsPeerFactory

T = "interop-topic"
HEARTBEAT_MS = 200


def js_options(**gossipsub: Any) -> dict[str, Any]:
    gossipsub.setdefault("heartbeatInterval", HEARTBEAT_MS)
    return {"modules": ["gossipsub"], "gossipsub": gossipsub}


def py_config(**kw: Any) -> GossipsubConfig:
    kw.setdefault("heartbeat_interval", HEARTBEAT_MS / 1000)
    kw.setdefault("heartbeat_initial_delay", 0.05)
    return GossipsubConfig(**kw)


PyNode = tuple[Host, Pubsub]


@pytest.fixture
async def py_nodes() -> AsyncIterator[Callable[..., Awaitable[PyNode]]]:
    made: list[PyNode] = []

    async def make(config: GossipsubConfig | None = None) -> PyNode:
        host = Host(KeyPair.generate())
        await host.start()
        ps = Pubsub(host, config or py_config())
        made.append((host, ps))
        await ps.start()
        return host, ps

    yield make
    for host, ps in reversed(made):
        await ps.close()
        await host.close()


async def start_js(factory: JsPeerFactory, n: int, **gossipsub: Any) -> list[JsPeer]:
    return list(
        await asyncio.gather(
            *(factory(name=f"js-gossip-{i}", options=js_options(**gossipsub)) for i in range(n))
        )
    )


async def until(
    pred: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition"
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def js_mesh(js: JsPeer, topic: str = T) -> set[str]:
    return set((await js.command("ps_mesh", topic=topic))["peers"])


def py_mesh(ps: Pubsub, topic: str = T) -> set[str]:
    return {str(p) for p in ps.mesh_peers(topic)}


async def drain(sub: Subscription, n: int, timeout: float = 20.0) -> list[Message]:
    out: list[Message] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            out.append(await sub.get())
    return out


def b64(msg_id: bytes) -> str:
    """How js shows a message ID: unpadded base64 (multiformats)."""
    return base64.b64encode(msg_id).decode().rstrip("=")


# --------------------------------------------------------------------------------------------


async def test_mixed_network_five_and_five(
    js_peer_factory: JsPeerFactory, py_nodes: Callable[..., Awaitable[PyNode]]
) -> None:
    js = await start_js(js_peer_factory, 5)
    py = [await py_nodes() for _ in range(5)]
    # alternate py and js around a ring with chords: degree 4, every path crosses stacks
    order: list[Any] = [x for pair in zip(py, js, strict=True) for x in pair]
    n = len(order)

    def peer_id(x: Any) -> str:
        return x.peer_id if isinstance(x, JsPeer) else str(x[0].peer_id)

    def addr(x: Any) -> str:
        return x.addr if isinstance(x, JsPeer) else str(x[0].p2p_addrs()[0])

    for i in range(n):
        for j in (i + 1, i + 3):
            a, b = order[i], order[j % n]
            if isinstance(a, JsPeer):
                await a.command("dial", addr=addr(b))
            else:
                await a[0].connect(addr(b))
    subs = [ps.subscribe(T) for _, ps in py]
    for j in js:
        await j.command("ps_subscribe", topic=T)

    async def meshes_ready() -> bool:
        for i, x in enumerate(order):
            neighbours = {peer_id(order[(i + d) % n]) for d in (-3, -1, 1, 3)}
            mesh = await js_mesh(x) if isinstance(x, JsPeer) else py_mesh(x[1])
            if mesh != neighbours:
                return False
        return True

    await until(meshes_ready, what="every mesh = the 4 neighbours")
    # meshes include js peers and agree on both sides
    for host, ps in py:
        js_in_mesh = {p for p in py_mesh(ps) if p in {j.peer_id for j in js}}
        assert js_in_mesh
        for j in js_in_mesh:
            assert str(host.peer_id) in await js_mesh(next(x for x in js if x.peer_id == j))
            assert ps.peer_protocol(PeerID.from_string(j)) == MESHSUB_V12

    # every node publishes 3 messages
    expected: set[tuple[str, int]] = set()
    for k in range(3):
        for _, ps in py:
            await ps.publish(T, b"py message %d" % k)
        for j in js:
            await j.command("ps_publish", topic=T, data=f"js message {k}")
    total = 3 * n
    for sub in subs:
        got = await drain(sub, total)
        keys = [(str(m.from_peer), m.seqno) for m in got]
        assert len(set(keys)) == total
        expected = expected or set(keys)
        assert set(keys) == expected
    await asyncio.sleep(0.5)
    assert all(sub.pending() == 0 for sub in subs)  # nothing twice
    for j in js:
        msgs = (await j.command("ps_messages", topic=T))["messages"]
        keys = [(m["from"], int(m["seqno"])) for m in msgs]
        assert Counter(keys) == Counter(expected), j.name
        for m in msgs:  # both sides computed the same message IDs
            assert m["msgId"] == b64(
                PeerID.from_string(m["from"]).to_bytes() + int(m["seqno"]).to_bytes(8, "big")
            )
    # nobody penalised anybody
    for _, ps in py:
        assert all(ps.peer_score(p) >= 0 for p in ps.peers())
    for j in js:
        scores = (await j.command("ps_scores"))["scores"]
        assert all(v >= 0 for v in scores.values()), scores


async def test_graft_prune_and_backoff_with_js(
    js_peer_factory: JsPeerFactory, py_nodes: Callable[..., Awaitable[PyNode]]
) -> None:
    (js,) = await start_js(js_peer_factory, 1, unsubscribeBackoff=1000)
    host, ps = await py_nodes(py_config(unsubscribe_backoff=1.0))
    await host.connect(js.addr)
    ps.subscribe(T)
    await js.command("ps_subscribe", topic=T)
    me = str(host.peer_id)

    async def linked() -> bool:
        return me in await js_mesh(js) and js.peer_id in py_mesh(ps)

    async def unlinked() -> bool:
        return me not in await js_mesh(js) and js.peer_id not in py_mesh(ps)

    await until(linked, what="GRAFT in both meshes")
    # we leave: js gets our PRUNE (with a 1 s backoff) and drops us from its mesh
    ps.unsubscribe(T)
    await until(unlinked, what="PRUNE from p2pnet")
    ev = await js.next_event("ps_prune", timeout=5)
    while ev["direction"] != "inbound":
        ev = await js.next_event("ps_prune", timeout=5)
    assert ev["peerId"] == me and ev["topic"] == T
    ps.subscribe(T)  # we may graft js again once the backoff is over
    await until(linked, what="re-GRAFT after our backoff")
    # js leaves: its PRUNE tells us to back off for 1 s
    await js.command("ps_unsubscribe", topic=T)
    await until(unlinked, what="PRUNE from js")
    remaining = ps.router.backoff_remaining(PeerID.from_string(js.peer_id), T)
    assert 0 < remaining <= 1.0
    await js.command("ps_subscribe", topic=T)
    await until(linked, what="re-GRAFT by js after its backoff")
    assert ps.router.stats.get("graft_backoff_violation", 0) == 0


async def test_js_honours_our_prune_backoff(
    js_peer_factory: JsPeerFactory, py_nodes: Callable[..., Awaitable[PyNode]]
) -> None:
    js = await start_js(js_peer_factory, 2)
    # a tiny mesh: one of the two js peers gets pruned at once (backoff 60 s)
    host, ps = await py_nodes(py_config(d=1, d_lo=1, d_hi=1, d_score=0, d_out=0))
    for j in js:
        await host.connect(j.addr)
        await j.command("ps_subscribe", topic=T)
    ps.subscribe(T)
    me = str(host.peer_id)

    async def settled() -> bool:
        in_js = [me in await js_mesh(j) for j in js]
        mesh = py_mesh(ps)
        # The js peer outside our mesh must have tried to GRAFT and been pruned (a backoff is
        # recorded), not merely be waiting for its next heartbeat.
        outside = [PeerID.from_string(j.peer_id) for j in js if j.peer_id not in mesh]
        pruned = all(ps.router.backoff_remaining(p, T) > 0 for p in outside)
        return len(mesh) == 1 and sum(in_js) == 1 and pruned

    await until(settled, what="one js peer pruned")
    (kept,) = py_mesh(ps)
    pruned = next(j for j in js if j.peer_id != kept)
    backoff = ps.router.backoff_remaining(PeerID.from_string(pruned.peer_id), T)
    assert backoff > 50  # 60 s prune backoff, sent in the PRUNE
    # js wants Dlo = 4 mesh peers and has only us: it would GRAFT at every heartbeat, but not
    # while backed off
    await asyncio.sleep(10 * HEARTBEAT_MS / 1000)
    assert me not in await js_mesh(pruned)
    assert ps.router.stats.get("graft_backoff_violation", 0) == 0
    assert ps.peer_score(PeerID.from_string(pruned.peer_id)) >= 0


async def test_idontwant_with_js(
    js_peer_factory: JsPeerFactory, py_nodes: Callable[..., Awaitable[PyNode]]
) -> None:
    (js,) = await start_js(js_peer_factory, 1)
    (h1, p1), (h2, p2) = await py_nodes(), await py_nodes()
    # a triangle: every message reaches each node twice
    await h1.connect(js.addr)
    await h2.connect(js.addr)
    await h1.connect(h2.p2p_addrs()[0])
    s1, s2 = p1.subscribe(T), p2.subscribe(T)
    await js.command("ps_subscribe", topic=T)

    async def full() -> bool:
        return len(await js_mesh(js)) == 2 and len(py_mesh(p1)) == 2 and len(py_mesh(p2)) == 2

    await until(full, what="triangle meshes")
    big = bytes(range(256)) * 8  # 2 KiB: above both IDONTWANT thresholds
    for k in range(5):
        await p1.publish(T, big + bytes([k]))
        await js.command("ps_publish", topic=T, dataHex=(big + bytes([100 + k])).hex())
    for sub in (s1, s2):
        got = await drain(sub, 10)
        assert len({m.id for m in got}) == 10
    # js told p2 it already had p1's messages, and p2 told js
    assert p2.router.stats.get("idontwant_received", 0) > 0
    assert p2.router.stats.get("idontwant_sent", 0) > 0
    msgs = (await js.command("ps_messages", topic=T))["messages"]
    assert len(msgs) == 10 and len({m["msgId"] for m in msgs}) == 10


async def test_js_default_message_ids(
    js_peer_factory: JsPeerFactory, py_nodes: Callable[..., Awaitable[PyNode]]
) -> None:
    # js's own default (public key ‖ seqno) on js; the same function on our side
    (js,) = await start_js(js_peer_factory, 1, msgId="js-default")
    host, ps = await py_nodes(py_config(msg_id_fn=msg_id_js_strict_sign))
    await host.connect(js.addr)
    sub = ps.subscribe(T)
    await js.command("ps_subscribe", topic=T)
    await until(lambda: _true(js.peer_id in py_mesh(ps)), what="mesh")
    mid = await ps.publish(T, b"py")
    await js.command("ps_publish", topic=T, data="js")
    got = await drain(sub, 2)
    msgs = (await js.command("ps_messages", topic=T))["messages"]
    assert {m["msgId"] for m in msgs} == {b64(m.id) for m in got}
    assert b64(mid) in {m["msgId"] for m in msgs}


async def test_strict_no_sign_with_js(
    js_peer_factory: JsPeerFactory, py_nodes: Callable[..., Awaitable[PyNode]]
) -> None:
    (js,) = await start_js(js_peer_factory, 1, signaturePolicy="StrictNoSign", msgId="js-default")
    host, ps = await py_nodes(py_config(signature_policy=SignaturePolicy.STRICT_NO_SIGN))
    await host.connect(js.addr)
    sub = ps.subscribe(T)
    await js.command("ps_subscribe", topic=T)
    await until(lambda: _true(js.peer_id in py_mesh(ps)), what="mesh")
    await ps.publish(T, b"anonymous py")
    await js.command("ps_publish", topic=T, data="anonymous js")
    got = await drain(sub, 2)
    assert {m.data for m in got} == {b"anonymous py", b"anonymous js"}
    assert all(m.from_peer is None and m.seqno is None for m in got)
    msgs = (await js.command("ps_messages", topic=T))["messages"]
    assert sorted(bytes.fromhex(m["dataHex"]) for m in msgs) == [b"anonymous js", b"anonymous py"]
    assert all(m["from"] is None for m in msgs)


async def _true(value: bool) -> bool:
    return value
