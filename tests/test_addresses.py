"""What a host advertises: unspecified listen addresses expanded, never advertised; observed and
confirmed addresses (p2pnet/host/addresses.py), and the agent's presence record."""

from __future__ import annotations

import asyncio
import ipaddress

from multiaddr import Multiaddr

from p2pnet.agent.agent import Agent, AgentConfig
from p2pnet.config import NodeConfig
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.host.addresses import AddressBook, expand_unspecified, is_advertisable
from p2pnet.node import Node
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.record import SIGNED_PEER_RECORD, verify_peer_record
from p2pnet.protocols.identify_messages import build_identify, parse_identify

IPS = [
    ipaddress.ip_address(a)
    for a in ("127.0.0.1", "10.1.2.3", "::1", "fe80::1", "2001:db8::5", "192.168.7.9")
]


def ma(text: str) -> Multiaddr:
    return Multiaddr(text)


def texts(addrs: list[Multiaddr]) -> list[str]:
    return [str(a) for a in addrs]


def test_unspecified_expands_to_each_interface_of_its_family() -> None:
    out = expand_unspecified([ma("/ip4/0.0.0.0/tcp/4001"), ma("/ip6/::/tcp/4002")], IPS)
    assert texts(out) == [
        "/ip4/127.0.0.1/tcp/4001",
        "/ip4/10.1.2.3/tcp/4001",
        "/ip4/192.168.7.9/tcp/4001",
        "/ip6/::1/tcp/4002",
        "/ip6/2001:db8::5/tcp/4002",  # fe80::1 left out: useless without its zone
    ]
    # Specific addresses pass unchanged, duplicates collapse, port 0 is never advertised.
    same = expand_unspecified(
        [ma("/ip4/10.1.2.3/tcp/5"), ma("/ip4/0.0.0.0/tcp/5"), ma("/ip4/1.2.3.4/tcp/0")], IPS
    )
    assert texts(same) == ["/ip4/10.1.2.3/tcp/5", "/ip4/127.0.0.1/tcp/5", "/ip4/192.168.7.9/tcp/5"]
    assert expand_unspecified([ma("/ip4/0.0.0.0/tcp/1")], []) == []
    assert not is_advertisable(ma("/ip6/::/tcp/1")) and is_advertisable(ma("/memory/3"))


def test_address_book_confirms_only_inbound_addresses_seen_from_distinct_ips() -> None:
    book = AddressBook(activation=2, ttl=100.0)
    public = ma("/ip4/203.0.113.7/tcp/4001")
    # Outbound: our NAT's mapping of an ephemeral port, a hint only.
    for i in range(5):
        assert not book.observe(
            public, observer=ma(f"/ip4/198.51.100.{i}/tcp/1"), inbound=False, now=0
        )
    assert book.confirmed(0) == []
    # One host with many peer IDs (one IP) cannot confirm anything.
    for port in range(3):
        book.observe(public, observer=ma(f"/ip4/198.51.100.1/tcp/{port}"), inbound=True, now=1)
    assert book.confirmed(1) == []
    assert book.observe(public, observer=ma("/ip4/198.51.100.2/tcp/9"), inbound=True, now=2)
    assert book.confirmed(2) == [public]
    listen = [ma("/ip4/0.0.0.0/tcp/4001")]
    advertised = book.advertised(listen, IPS[:2], now=2)
    assert texts(advertised) == [
        "/ip4/127.0.0.1/tcp/4001",
        "/ip4/10.1.2.3/tcp/4001",
        "/ip4/203.0.113.7/tcp/4001",
    ]
    # Observations expire: one observer left after the first one's ttl, then none.
    assert book.confirmed(101.5) == []
    book.expire(200)
    assert book.observed(200) == []
    # Lies that cannot be addresses are ignored.
    assert not book.observe(ma("/ip4/0.0.0.0/tcp/1"), observer=public, inbound=True, now=3)
    assert not book.observe(ma("/memory/1"), observer=public, inbound=True, now=3)
    assert not book.observe(public, observer=ma("/memory/2"), inbound=True, now=3)


def test_address_book_is_bounded() -> None:
    book = AddressBook(max_observed=8, max_observers=4)
    for i in range(1000):
        book.observe(
            ma(f"/ip4/203.0.113.{i % 250}/tcp/{1000 + i}"),
            observer=ma(f"/ip4/198.51.{i // 250}.{i % 250}/tcp/1"),
            inbound=True,
            now=float(i),
        )
    for i in range(50):
        book.observe(
            ma("/ip4/203.0.113.1/tcp/1"),
            observer=ma(f"/ip4/198.51.100.{i}/tcp/1"),
            inbound=True,
            now=2000.0,
        )
    observed = book.observed(2000.0)
    assert len(observed) <= 8
    assert max(count for _, _, count in observed) == 4


def test_identify_drops_unspecified_addresses_of_a_peer() -> None:
    key = KeyPair.generate(KeyType.Ed25519)
    peer = PeerID.from_public_key(key.public_key)
    data = build_identify(
        public_key=key.public_key,
        listen_addrs=[ma("/ip4/0.0.0.0/tcp/1"), ma("/ip6/::/tcp/2"), ma("/ip4/10.0.0.1/tcp/3")],
        protocols=[],
        observed_addr=None,
        protocol_version="p",
        agent_version="a",
        signed_peer_record=None,
    )
    assert texts(parse_identify(peer, data, push=False).listen_addrs) == ["/ip4/10.0.0.1/tcp/3"]


async def test_node_on_0000_advertises_interface_addresses_only() -> None:
    wild = Node(NodeConfig(listen_addrs=["/ip4/0.0.0.0/tcp/0"], enable_pubsub=False))
    other = Node(NodeConfig(enable_pubsub=False))
    async with wild, other:
        port = wild.listen_addrs[0].value_for_protocol("tcp")
        assert str(wild.listen_addrs[0]).startswith("/ip4/0.0.0.0/")
        advertised = texts(wild.host.advertised_addrs)
        assert f"/ip4/127.0.0.1/tcp/{port}" in advertised
        assert all("0.0.0.0" not in a for a in advertised + texts(wild.p2p_addrs()))
        loopback = next(a for a in wild.p2p_addrs() if "/127.0.0.1/" in str(a))
        await other.connect(loopback)
        info = await other.identify(wild.peer_id)
        assert info.listen_addrs and all("0.0.0.0" not in str(a) for a in info.listen_addrs)
        assert info.signed_peer_record is not None
        _, record_addrs = verify_peer_record(info.signed_peer_record, wild.peer_id)
        assert record_addrs and all("0.0.0.0" not in str(a) for a in record_addrs)
        stored = other.host.peerstore.get_metadata(wild.peer_id, SIGNED_PEER_RECORD)
        assert stored == info.signed_peer_record


async def test_agent_on_0000_publishes_dialable_presence() -> None:
    boot = Agent(AgentConfig(name="boot", bootstrap_node=True, bootstrap_peers=[]))
    await boot.start()
    seed = [str(a) for a in boot.p2p_addrs()]
    wild = Agent(AgentConfig(name="wild", listen_host="0.0.0.0", bootstrap_peers=seed))
    asker = Agent(AgentConfig(name="asker", bootstrap_peers=seed))
    try:
        await wild.start()
        await asker.start()
        events = wild.events()
        presence = await asker.presence.resolve(wild.eth_address)
        assert presence.addrs and all(
            not a.value_for_protocol("ip4").startswith("0.") for a in presence.addrs
        )
        await asker.send(wild.eth_address, {"to": "0.0.0.0 listener"})
        async with asyncio.timeout(10):
            async for event in events:
                if getattr(event, "direct", False):
                    assert event.data == {"to": "0.0.0.0 listener"}  # type: ignore[attr-defined]
                    break
    finally:
        for agent in (asker, wild, boot):
            await agent.close()
