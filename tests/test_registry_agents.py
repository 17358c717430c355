"""Registry policies inside one event loop, with a static registry: scores, DHT refusals, the
presence record fields, and the cache core."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from test_agent import _drain

from p2pnet.agent.agent import Agent, AgentConfig, AgentMessage
from p2pnet.agent.errors import SendFailed
from p2pnet.agent.record import agent_key, sign_agent_record, verify_agent_record
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.kad.errors import InvalidRecord
from p2pnet.peer.peer_id import PeerID
from p2pnet.pubsub.params import GossipsubConfig
from p2pnet.registry.backend import AgentToken, RegistryEvent, StaticRegistry
from p2pnet.registry.cache import RegistryCache

FAST = GossipsubConfig(heartbeat_interval=0.1)


def key_hex() -> tuple[str, str]:
    """A fresh secp256k1 key (hex) and its ETH address."""
    from eth_account import Account

    acct = Account.create()
    return "0x" + bytes(acct.key).hex(), acct.address


def cfg(name: str, key: str, registry: StaticRegistry, **kw: object) -> AgentConfig:
    return AgentConfig(
        name=name,
        private_key=key,
        pubsub=FAST,
        status_interval=0.5,
        registry_policy="enforce",
        registry_backend=registry,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def trio() -> AsyncIterator[tuple[StaticRegistry, Agent, Agent, Agent]]:
    """boot and alice registered (agentIds 0 and 1), mallory not; all enforce."""
    (boot_key, boot_addr), (alice_key, alice_addr), (mallory_key, _) = (
        key_hex(),
        key_hex(),
        key_hex(),
    )
    registry = StaticRegistry.of({0: boot_addr, 1: alice_addr})
    boot = Agent(cfg("boot", boot_key, registry, bootstrap_node=True, bootstrap_peers=[]))
    await boot.start()
    seeds = [str(a) for a in boot.p2p_addrs()]
    alice = Agent(cfg("alice", alice_key, registry, bootstrap_peers=seeds))
    mallory = Agent(cfg("mallory", mallory_key, registry, bootstrap_peers=seeds))
    try:
        await asyncio.gather(alice.start(), mallory.start())
        yield registry, boot, alice, mallory
    finally:
        await asyncio.gather(boot.close(), alice.close(), mallory.close())


async def test_enforce_rejects_and_scores_the_intruder(
    trio: tuple[StaticRegistry, Agent, Agent, Agent],
) -> None:
    _, _, alice, mallory = trio
    stream = alice.events()
    await mallory.node.connect(alice.p2p_addrs()[0])
    async with asyncio.timeout(10):
        while mallory.peer_id not in alice.pubsub.topic_peers("agent-messages"):
            await asyncio.sleep(0.05)
    for n in range(3):
        await mallory.broadcast({"n": n})
    async with asyncio.timeout(10):
        while alice.registry is None or alice.registry.refused < 3:
            await asyncio.sleep(0.05)
    breakdown = alice.pubsub.score_breakdown(mallory.peer_id)
    assert breakdown.topics["agent-messages"]["p4"] > 0
    assert breakdown.total < 0
    with pytest.raises(SendFailed, match="not a registered agent"):
        await mallory.send(str(alice.peer_id), {"direct": 1})
    got = _drain(stream)
    assert not [e for e in got if isinstance(e, AgentMessage) and e.from_peer == mallory.peer_id]


async def test_enforce_dht_refuses_unregistered_presence(
    trio: tuple[StaticRegistry, Agent, Agent, Agent],
) -> None:
    registry, boot, alice, mallory = trio
    async with asyncio.timeout(10):
        while boot.dht.records.get(agent_key(alice.eth_address)) is None:
            await asyncio.sleep(0.05)
    stored = boot.dht.records.get(agent_key(alice.eth_address))
    assert stored is not None
    presence = verify_agent_record(agent_key(alice.eth_address), stored.value)
    assert presence.agent_registry == registry.ref and presence.agent_id == 1
    assert boot.dht.records.get(agent_key(mallory.eth_address)) is None
    # mallory registers while running: its next publication is stored (the agent follows the
    # registry's events and republishes when its own status changes).
    registry.set_token(AgentToken(2, mallory.eth_address, mallory.eth_address, ""))
    async with asyncio.timeout(15):
        while boot.dht.records.get(agent_key(mallory.eth_address)) is None:
            await asyncio.sleep(0.05)


def test_presence_record_registry_fields() -> None:
    key = KeyPair.generate(KeyType.Secp256k1)
    peer = PeerID.from_public_key(key.public_key)
    ref = "eip155:31337:0x5FbDB2315678afecb367f032d93F642f64180aa3"
    k, v = sign_agent_record(key, peer, [], 1, agent_registry=ref, agent_id=0)
    p = verify_agent_record(k, v)
    assert (p.agent_registry, p.agent_id) == (ref, 0)
    k, v = sign_agent_record(key, peer, [], 1)  # without: as before
    assert verify_agent_record(k, v).agent_registry is None
    with pytest.raises(ValueError):
        sign_agent_record(key, peer, [], 1, agent_registry="eip155:x:y")
    # A signed record with an agentId but no registry, or a bad agentId, is invalid.
    import json

    from p2pnet.agent.record import eth_address_of_key
    from p2pnet.crypto.eth import personal_sign

    address = eth_address_of_key(key)
    base = {
        "addrs": [],
        "address": address,
        "peer_id": peer.to_base58(),
        "seq": 1,
        "timestamp": 1,
        "type": "p2pnet/agent-presence/1",
    }
    for extra in ({"agentId": 1}, {"agentRegistry": ref, "agentId": -1}, {"agentRegistry": 5}):
        payload = json.dumps({**base, **extra}, sort_keys=True, separators=(",", ":")).encode()
        secret = key.private_key.to_bytes()
        with pytest.raises(InvalidRecord):
            verify_agent_record(agent_key(address), personal_sign(secret, payload) + payload)


def test_cache_core_ttl_events_and_bounds() -> None:
    a, b = "0x" + "aa" * 20, "0x" + "bb" * 20
    cache = RegistryCache(ttl=10, max_entries=2)
    assert cache.status(a, None, 0) is None
    cache.put_balance(a, 1, now=0)
    s = cache.status(a, None, 5)
    assert s is not None and s.registered and not s.stale
    assert cache.status(a, None, 10) is None  # expired
    s = cache.status(a, None, 10, allow_stale=True)
    assert s is not None and s.stale
    # agentWallet path: b owns nothing but is the wallet of token 7.
    cache.put_balance(b, 0, now=0)
    assert cache.status(b, 7, 1) is None  # the token is not known yet
    cache.put_token(7, AgentToken(7, a, b, "data:,x"), now=0)
    s = cache.status(b, 7, 1)
    assert s is not None and s.registered and s.agent_id == 7 and s.uri == "data:,x"
    assert cache.apply([RegistryEvent("Transfer", 3, 7, (a,))]) == {a}
    assert cache.status(b, 7, 1) is None and cache.status(a, None, 1) is None
    for i in range(5):  # bounded: least recently used go first
        cache.put_balance("0x" + f"{i:040x}", 0, now=0)
    assert len(cache) <= 4


async def test_guard_bounds_concurrent_questions_and_shares_one_per_address() -> None:
    from p2pnet.registry.guard import RegistryGuard
    from p2pnet.registry.settings import RegistrySettings

    class Slow(StaticRegistry):
        running = 0
        peak = 0
        calls = 0

        async def balance_of(self, address: str) -> int:
            Slow.calls += 1
            Slow.running += 1
            Slow.peak = max(Slow.peak, Slow.running)
            await asyncio.sleep(0.01)
            Slow.running -= 1
            return 0

    guard = RegistryGuard(
        RegistrySettings.parse(None, None, "enforce", backend_given=True),
        Slow(),
        max_concurrent_checks=4,
    )
    await guard.start()
    try:
        addrs = ["0x" + f"{i:040x}" for i in range(40)]
        results = await asyncio.gather(*(guard.status(a) for a in addrs + addrs))
        assert all(r is not None and not r.registered for r in results)
        assert Slow.peak <= 4
        assert Slow.calls == 40  # the second ask of each address shared the first
    finally:
        await guard.close()
