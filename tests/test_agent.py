"""The agent network in one event loop: presence in the DHT, direct and broadcast messages."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from multiaddr import Multiaddr

from p2pnet.agent.agent import Agent, AgentConfig, AgentDiscovered, AgentMessage, topic_key
from p2pnet.agent.envelope import (
    InvalidEnvelope,
    ReplayGuard,
    canonical_json,
    open_envelope,
    seal,
)
from p2pnet.agent.errors import InvalidFields, NotConnected, PeerNotFound, SendFailed
from p2pnet.crypto.eth import personal_sign
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.errors import CryptoError
from p2pnet.events import EventStream
from p2pnet.peer.peer_id import PeerID
from p2pnet.pubsub.params import GossipsubConfig

FAST = GossipsubConfig(heartbeat_interval=0.1)


def _seal_now(key: KeyPair, kind: str, data: object, **kw: Any) -> bytes:
    """An envelope as an agent would seal it now (tests read the system clock themselves)."""
    return seal(key, kind, data, now=time.time(), nonce=os.urandom(8), **kw)


def cfg(name: str, **kw: object) -> AgentConfig:
    return AgentConfig(name=name, pubsub=FAST, status_interval=0.5, **kw)  # type: ignore[arg-type]


async def next_of(events: EventStream[object], kind: type, timeout: float = 10.0) -> object:
    async with asyncio.timeout(timeout):
        async for ev in events:
            if isinstance(ev, kind):
                return ev
    raise AssertionError("event stream ended")


@pytest.fixture
async def network() -> AsyncIterator[list[Agent]]:
    """Two bootstrap agents (DHT servers) and three regular agents (DHT clients)."""
    boots = [Agent(cfg("boot-0", bootstrap_node=True, bootstrap_peers=[]))]
    await boots[0].start()
    seed = [str(a) for a in boots[0].p2p_addrs()]
    boots.append(Agent(cfg("boot-1", bootstrap_node=True, bootstrap_peers=seed)))
    await boots[1].start()
    seeds = seed + [str(a) for a in boots[1].p2p_addrs()]
    agents = [Agent(cfg(f"agent-{i}", bootstrap_peers=seeds)) for i in range(3)]
    try:
        await asyncio.gather(*(a.start() for a in agents))
        yield boots + agents
    finally:
        await asyncio.gather(*(a.close() for a in boots + agents))


async def test_presence_resolves_through_the_dht(network: list[Agent]) -> None:
    a, b = network[2], network[4]
    async with asyncio.timeout(10):
        while b.presence.published_seq == 0:
            await asyncio.sleep(0.05)
    assert await a.resolve(b.eth_address) == b.peer_id
    with pytest.raises(PeerNotFound):
        await a.resolve("0x" + "12" * 20)


async def test_presence_is_republished_when_our_addresses_change(network: list[Agent]) -> None:
    """An address confirmed after the first publication (AutoNAT, a port forward) reaches the
    DHT without waiting for the 5-minute republication."""
    a, b = network[2], network[4]
    async with asyncio.timeout(10):
        while b.presence.published_seq == 0:
            await asyncio.sleep(0.05)
    assert b.config.presence_interval == 300.0
    first = b.presence.published_seq
    forwarded = Multiaddr("/ip4/203.0.113.7/tcp/4001")  # TEST-NET-3: never dialled here
    assert forwarded not in (await a.presence.resolve(b.eth_address)).addrs
    b.node.host.addresses.confirm(forwarded, b.clock.monotonic())
    assert forwarded in b.node.host.advertised_addrs
    async with asyncio.timeout(10):
        while b.presence.published_seq == first:
            await asyncio.sleep(0.05)
    found = await a.presence.resolve(b.eth_address)
    assert found.seq > first and forwarded in found.addrs


async def test_direct_message_by_eth_address_reaches_only_the_recipient(
    network: list[Agent],
) -> None:
    sender, recipient, bystander = network[2], network[3], network[4]
    inbox, other = recipient.events(), bystander.events()
    async with asyncio.timeout(10):
        while recipient.presence.published_seq == 0:
            await asyncio.sleep(0.05)
    peer = await sender.send(recipient.eth_address, {"hello": "world", "n": 1})
    assert peer == recipient.peer_id
    msg = await next_of(inbox, AgentMessage)
    assert isinstance(msg, AgentMessage) and msg.direct and msg.topic is None
    assert msg.data == {"hello": "world", "n": 1}
    assert msg.from_peer == sender.peer_id and msg.from_eth == sender.eth_address
    # By PeerID too.
    await sender.send(str(recipient.peer_id), "second")
    msg = await next_of(inbox, AgentMessage)
    assert isinstance(msg, AgentMessage) and msg.data == "second"
    assert all(not isinstance(e, AgentMessage) for e in _drain(other))


def _drain(stream: EventStream[object]) -> list[object]:
    out = []
    while not stream._queue.empty():
        item = stream._queue.get_nowait()
        if item is not None:
            out.append(item)
    return out


async def test_broadcast_reaches_every_agent(network: list[Agent]) -> None:
    streams = [a.events() for a in network]
    await _wait_mesh(network, "agent-messages")
    await network[2].broadcast({"all": True})
    for agent, stream in zip(network, streams, strict=True):
        if agent is network[2]:
            continue
        msg = await next_of(stream, AgentMessage)
        assert isinstance(msg, AgentMessage)
        assert msg.data == {"all": True} and msg.topic == "agent-messages" and not msg.direct


async def _wait_mesh(agents: list[Agent], topic: str) -> None:
    async with asyncio.timeout(10):
        while any(not a.pubsub.mesh_peers(topic) for a in agents):
            await asyncio.sleep(0.05)


async def test_subscribe_and_discover(network: list[Agent]) -> None:
    a, b, c = network[2], network[3], network[4]
    await b.subscribe("weather")
    await c.subscribe("weather")
    found = await a.discover("weather")
    assert {d.peer_id for d in found} == {b.peer_id, c.peer_id}
    assert {d.eth_address for d in found} == {b.eth_address, c.eth_address}
    assert await a.discover("nobody-here") == []
    # Announcements told a about b's topics as well.
    async with asyncio.timeout(10):
        while "weather" not in a.announced.get(b.peer_id, AgentDiscovered(b.peer_id, None)).topics:
            await asyncio.sleep(0.05)
    assert len(topic_key("weather")) == 34


async def test_status_reports_flow(network: list[Agent]) -> None:
    a = network[2]
    async with asyncio.timeout(10):
        while len(a.statuses) < len(network) - 1:
            await asyncio.sleep(0.05)
    report = a.statuses[network[3].peer_id]
    assert report["name"] == "agent-1" and report["peers"] >= 1 and "mesh" in report


async def test_forged_broadcast_is_rejected_and_penalised(network: list[Agent]) -> None:
    attacker, victim = network[2], network[3]
    stream = victim.events()
    await _wait_mesh(network, "agent-messages")
    # Bootstrap nodes would drop the forgeries before the victim sees them: go direct.
    await attacker.node.connect(victim.p2p_addrs()[0])
    async with asyncio.timeout(10):
        while attacker.peer_id not in victim.pubsub.topic_peers("agent-messages"):
            await asyncio.sleep(0.05)
    # The attacker's own node would refuse to publish these: switch its check off.
    attacker.pubsub.set_validator("agent-messages", None)
    # A message signed by some other key, published by the attacker's node.
    stranger = KeyPair.generate(KeyType.Secp256k1)
    forged = _seal_now(stranger, "broadcast", "forged", topic="agent-messages")
    await attacker.pubsub.publish("agent-messages", forged)
    # And one whose payload was altered after signing.
    good = _seal_now(attacker.node.key, "broadcast", "original", topic="agent-messages")
    tampered = good.replace(b"original", b"tampered")
    await attacker.pubsub.publish("agent-messages", tampered)
    async with asyncio.timeout(10):
        while victim.rejected < 2:
            await asyncio.sleep(0.05)
    # Invalid messages count against the attacker (P4).
    breakdown = victim.pubsub.score_breakdown(attacker.peer_id)
    assert breakdown.topics["agent-messages"]["p4"] > 0
    assert breakdown.total < 0
    assert all(not isinstance(e, AgentMessage) for e in _drain(stream))


async def test_send_errors(network: list[Agent]) -> None:
    a = network[2]
    with pytest.raises(InvalidFields):
        await a.send("not-an-address", 1)
    with pytest.raises(InvalidFields):
        await a.send("16Uiu2", 1)
    with pytest.raises(PeerNotFound):
        await a.send("0x" + "ab" * 20, 1)
    nobody = PeerID.from_public_key(KeyPair.generate(KeyType.Secp256k1).public_key)
    with pytest.raises(PeerNotFound):
        await a.send(str(nobody), 1)
    ed = KeyPair.generate(KeyType.Ed25519)

    with pytest.raises(InvalidFields, match="not an agent"):
        await a.send(str(PeerID.from_public_key(ed.public_key)), 1)
    with pytest.raises(InvalidFields):
        await a.send(a.eth_address, {"x": {1, 2}})  # a set is not JSON


async def test_direct_message_for_someone_else_is_refused(network: list[Agent]) -> None:
    a, b, c = network[2], network[3], network[4]
    await a.node.connect(b.p2p_addrs()[0])
    # Addressed to c but sent to b: b must refuse it.
    envelope = _seal_now(a.node.key, "direct", "hi", to=c.eth_address)
    with pytest.raises(SendFailed, match="addressed to"):
        await a.messaging.send(b.peer_id, envelope)
    assert b.messaging.rejected == 1


async def test_agent_not_started() -> None:
    agent = Agent(cfg("idle", bootstrap_peers=[]))
    with pytest.raises(NotConnected):
        await agent.send("0x" + "ab" * 20, 1)
    await agent.close()


# -- envelopes ------------------------------------------------------------------------------


def test_envelope_roundtrip_and_tampering() -> None:
    key = KeyPair.generate(KeyType.Secp256k1)
    raw = _seal_now(key, "direct", {"a": [1, 2]}, to="0x" + "AB" * 20)
    env = open_envelope(raw, now=time.time())
    assert env.data == {"a": [1, 2]} and env.to == "0x" + "ab" * 20 and env.kind == "direct"
    with pytest.raises(InvalidEnvelope):
        open_envelope(raw[:-2] + b"9}", now=time.time())
    with pytest.raises(InvalidEnvelope):
        open_envelope(raw[:10], now=time.time())
    with pytest.raises(InvalidEnvelope):
        open_envelope(raw, now=env.ts / 1000 + 3600)  # too old
    guard = ReplayGuard()
    guard.check(env)
    with pytest.raises(InvalidEnvelope, match="replayed"):
        guard.check(env)


def test_envelope_must_bind_peer_id_to_signer() -> None:
    signer = KeyPair.generate(KeyType.Secp256k1)
    other = KeyPair.generate(KeyType.Secp256k1)
    env = open_envelope(_seal_now(other, "broadcast", 1, topic="t"), now=time.time())
    payload = json.loads(_seal_now(signer, "broadcast", 1, topic="t")[65:])
    payload["peer_id"] = env.peer_id.to_base58()  # claim someone else's libp2p identity
    body = canonical_json(payload)
    forged = personal_sign(signer.private_key.to_bytes(), body) + body
    with pytest.raises(InvalidEnvelope, match="belongs to"):
        open_envelope(forged, now=time.time())
    with pytest.raises(CryptoError):
        _seal_now(KeyPair.generate(KeyType.Ed25519), "direct", 1)


def test_agent_key_file_keeps_the_identity(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.key")
    first = AgentConfig(key_file=path).node_config().identity
    second = AgentConfig(key_file=path).node_config().identity
    assert first is not None and second is not None
    assert first.public_key == second.public_key
    assert first.key_type is KeyType.Secp256k1
