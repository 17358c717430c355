"""PeerStore: address TTLs, protocols, keys, metadata, latency and the size bounds."""

from __future__ import annotations

import pytest
from multiaddr import Multiaddr

from p2pnet.crypto.keys import ECDSAPrivateKey, Ed25519PrivateKey, PublicKey
from p2pnet.errors import PeerIDMismatch, ProtocolError
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.peerstore import (
    ADDRESS_TTL,
    AGENT_VERSION,
    CONNECTED_ADDR_TTL,
    DEFAULT_MAX_ADDRS_PER_PEER,
    DEFAULT_MAX_PROTOCOLS_PER_PEER,
    PERMANENT_ADDR_TTL,
    RECENTLY_CONNECTED_ADDR_TTL,
    TEMP_ADDR_TTL,
    PeerStore,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def key(i: int) -> PublicKey:
    return Ed25519PrivateKey(i.to_bytes(32, "big")).public_key()


def pid(i: int) -> PeerID:
    return PeerID.from_public_key(key(i))


def ma(port: int, host: str = "127.0.0.1") -> Multiaddr:
    return Multiaddr(f"/ip4/{host}/tcp/{port}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> PeerStore:
    return PeerStore(clock=clock)


def test_go_ttl_values() -> None:
    # go-libp2p core/peerstore/peerstore.go
    assert ADDRESS_TTL == 3600
    assert TEMP_ADDR_TTL == 120
    assert RECENTLY_CONNECTED_ADDR_TTL == 15 * 60
    assert PERMANENT_ADDR_TTL > CONNECTED_ADDR_TTL > 100 * 365 * 24 * 3600


# -- addresses -----------------------------------------------------------------------------


def test_addrs_expire(store: PeerStore, clock: FakeClock) -> None:
    p = pid(1)
    store.add_addrs(p, [ma(1)], 10)
    store.add_addrs(p, [ma(2)], 100)
    assert store.addrs(p) == [ma(1), ma(2)]
    clock.advance(10)
    assert store.addrs(p) == [ma(2)]
    clock.advance(89.9)
    assert store.addrs(p) == [ma(2)]
    clock.advance(0.1)
    assert store.addrs(p) == []
    assert p in store  # the peer itself stays known
    assert store.addrs(pid(2)) == []


def test_add_keeps_the_longer_ttl(store: PeerStore, clock: FakeClock) -> None:
    p = pid(1)
    store.add_addrs(p, [ma(1)], 100)
    store.add_addrs(p, [ma(1)], 10)  # shorter: no effect
    assert store.addr_ttl(p, ma(1)) == 100
    clock.advance(50)
    store.add_addrs(p, [ma(1)], 80)  # same TTL class but later expiry: extends
    assert store.addr_ttl(p, ma(1)) == 100
    clock.advance(60)
    assert store.addrs(p) == [ma(1)]
    clock.advance(20)
    assert store.addrs(p) == []


def test_zero_or_negative_ttl_add_is_noop(store: PeerStore) -> None:
    store.add_addrs(pid(1), [ma(1)], 0)
    store.add_addrs(pid(1), [ma(1)], -5)
    assert store.addrs(pid(1)) == []
    assert pid(1) not in store


def test_set_addrs_overrides_and_removes(store: PeerStore, clock: FakeClock) -> None:
    p = pid(1)
    store.add_addrs(p, [ma(1), ma(2)], CONNECTED_ADDR_TTL)
    store.set_addrs(p, [ma(1)], 5)  # shorter TTL replaces
    assert store.addr_ttl(p, ma(1)) == 5
    store.set_addrs(p, [ma(2)], 0)  # removes
    assert store.addrs(p) == [ma(1)]
    store.set_addrs(p, [ma(3)], 50)  # adds
    clock.advance(5)
    assert store.addrs(p) == [ma(3)]
    store.set_addrs(pid(9), [ma(1)], 0)
    assert pid(9) not in store


def test_connected_then_recently_connected(store: PeerStore, clock: FakeClock) -> None:
    p = pid(1)
    store.add_addrs(p, [ma(1)], CONNECTED_ADDR_TTL)
    store.add_addrs(p, [ma(2)], ADDRESS_TTL)
    clock.advance(10 * 365 * 24 * 3600)  # connected addresses do not expire
    assert store.addrs(p) == [ma(1)]
    assert store.is_protected(p)
    store.update_addrs(p, CONNECTED_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL)
    assert store.addr_ttl(p, ma(1)) == RECENTLY_CONNECTED_ADDR_TTL
    assert not store.is_protected(p)
    clock.advance(RECENTLY_CONNECTED_ADDR_TTL)
    assert store.addrs(p) == []
    store.add_addrs(p, [ma(3)], TEMP_ADDR_TTL)
    store.update_addrs(p, TEMP_ADDR_TTL, 0)
    assert store.addrs(p) == []


def test_permanent_addrs(store: PeerStore, clock: FakeClock) -> None:
    p = pid(1)
    store.add_addrs(p, [ma(1)], PERMANENT_ADDR_TTL)
    store.add_addrs(p, [ma(1)], CONNECTED_ADDR_TTL)  # does not downgrade
    assert store.addr_ttl(p, ma(1)) == PERMANENT_ADDR_TTL
    store.update_addrs(p, CONNECTED_ADDR_TTL, 1)  # only touches connected ones
    clock.advance(1e12)
    assert store.addrs(p) == [ma(1)]


def test_p2p_suffix_is_stripped_and_checked(store: PeerStore) -> None:
    p, other = pid(1), pid(2)
    store.add_addrs(
        p,
        [
            Multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{p}"),
            Multiaddr(f"/ip4/1.2.3.4/tcp/2/p2p/{p.to_cid_string()}"),
            Multiaddr(f"/ip4/1.2.3.4/tcp/3/p2p/{other}"),  # names another peer: ignored
            Multiaddr(f"/p2p/{p}"),  # nothing left after stripping: ignored
            Multiaddr(f"/ip4/1.2.3.4/tcp/4/p2p/{other}/p2p-circuit"),  # relay addr: kept
        ],
        ADDRESS_TTL,
    )
    assert store.addrs(p) == [
        ma(1, "1.2.3.4"),
        ma(2, "1.2.3.4"),
        Multiaddr(f"/ip4/1.2.3.4/tcp/4/p2p/{other}/p2p-circuit"),
    ]


def test_per_peer_addr_cap_evicts_nearest_expiry(clock: FakeClock) -> None:
    store = PeerStore(max_addrs_per_peer=3, clock=clock)
    p = pid(1)
    store.add_addrs(p, [ma(1)], CONNECTED_ADDR_TTL)
    store.add_addrs(p, [ma(2)], 100)
    store.add_addrs(p, [ma(3)], 50)
    store.add_addrs(p, [ma(4)], 200)  # full: evicts ma(3), the nearest expiry
    assert store.addrs(p) == [ma(1), ma(2), ma(4)]
    store.add_addrs(p, [ma(5)], CONNECTED_ADDR_TTL)  # connected addrs are never refused
    assert len(store.addrs(p)) == 4
    store2 = PeerStore(max_addrs_per_peer=2, clock=clock)
    store2.add_addrs(p, [ma(1), ma(2)], CONNECTED_ADDR_TTL)
    store2.add_addrs(p, [ma(3)], 100)  # every slot protected: dropped
    assert store2.addrs(p) == [ma(1), ma(2)]


def test_expired_addrs_free_the_cap(clock: FakeClock) -> None:
    store = PeerStore(max_addrs_per_peer=2, clock=clock)
    p = pid(1)
    store.add_addrs(p, [ma(1), ma(2)], 10)
    clock.advance(10)
    store.add_addrs(p, [ma(3), ma(4)], 10)
    assert store.addrs(p) == [ma(3), ma(4)]


def test_default_addr_cap() -> None:
    assert DEFAULT_MAX_ADDRS_PER_PEER == 64


def test_gc_and_peers_with_addrs(store: PeerStore, clock: FakeClock) -> None:
    store.add_addrs(pid(1), [ma(1), ma(2)], 10)
    store.add_addrs(pid(2), [ma(1)], 100)
    store.set_protocols(pid(3), ["/a"])
    assert set(store.peers()) == {pid(1), pid(2), pid(3)}
    clock.advance(10)
    assert store.peers_with_addrs() == [pid(2)]
    assert store.gc() == 2
    assert store.gc() == 0


def test_clear_and_remove(store: PeerStore) -> None:
    p = pid(1)
    store.add_addrs(p, [ma(1)], ADDRESS_TTL)
    store.set_protocols(p, ["/a"])
    store.clear_addrs(p)
    assert store.addrs(p) == []
    assert store.get_protocols(p) == ["/a"]
    store.remove_peer(p)
    assert p not in store
    assert len(store) == 0
    store.remove_peer(p)  # unknown: no error


def test_addr_bytes_follow_every_change_of_the_addresses(clock: FakeClock) -> None:
    """The encoded addresses are made once and reused (kad answers), but never stale: every
    way an address comes or goes (add, the cap's eviction, expiry, TTL 0, TTL update to 0,
    clear, removal of the peer) gives the new list."""
    store = PeerStore(max_addrs_per_peer=2, clock=clock)
    p = pid(1)

    def encoded() -> tuple[bytes, ...]:
        got = store.addr_bytes(p)
        assert got == tuple(a.to_bytes() for a in store.addrs(p))
        return got

    assert encoded() == ()
    store.add_addrs(p, [ma(1)], 10)
    first = encoded()
    assert first == (ma(1).to_bytes(),)
    store.add_addrs(p, [ma(1)], 50)  # a known address: same list, same object
    assert store.addr_bytes(p) is first
    store.add_addrs(p, [ma(2)], 100)
    assert encoded() == (ma(1).to_bytes(), ma(2).to_bytes())
    store.add_addrs(p, [ma(3)], 100)  # full: the cap evicts ma(1), the nearest expiry
    assert encoded() == (ma(2).to_bytes(), ma(3).to_bytes())
    store.set_addrs(p, [ma(2)], 0)
    assert encoded() == (ma(3).to_bytes(),)
    store.add_addrs(p, [ma(4)], 5)
    clock.advance(5)  # ma(4) expires
    assert encoded() == (ma(3).to_bytes(),)
    store.add_addrs(p, [ma(5)], CONNECTED_ADDR_TTL)
    store.update_addrs(p, CONNECTED_ADDR_TTL, 0)
    assert encoded() == (ma(3).to_bytes(),)
    store.clear_addrs(p)
    assert encoded() == ()
    store.add_addrs(p, [ma(6)], 10)
    assert encoded() == (ma(6).to_bytes(),)
    store.remove_peer(p)
    assert encoded() == ()


# -- protocols -----------------------------------------------------------------------------


def test_protocols(store: PeerStore) -> None:
    p = pid(1)
    store.set_protocols(p, ["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/meshsub/1.1.0"])
    store.add_protocols(p, ["/meshsub/1.2.0", "/ipfs/ping/1.0.0"])
    assert store.get_protocols(p) == [
        "/ipfs/id/1.0.0",
        "/ipfs/ping/1.0.0",
        "/meshsub/1.1.0",
        "/meshsub/1.2.0",
    ]
    assert store.supports_protocols(p, ["/meshsub/1.2.0", "/kad", "/ipfs/id/1.0.0"]) == [
        "/meshsub/1.2.0",
        "/ipfs/id/1.0.0",
    ]
    assert store.first_supported_protocol(p, ["/x", "/meshsub/1.1.0", "/ipfs/id/1.0.0"]) == (
        "/meshsub/1.1.0"
    )
    assert store.first_supported_protocol(p, ["/x"]) is None
    store.remove_protocols(p, ["/meshsub/1.1.0", "/never"])
    assert "/meshsub/1.1.0" not in store.get_protocols(p)
    store.set_protocols(p, ["/only"])
    assert store.get_protocols(p) == ["/only"]
    store.set_protocols(pid(2), ["/only", "/b"])
    assert store.peers_with_protocol("/only") == [p, pid(2)]
    unknown = pid(9)
    assert store.get_protocols(unknown) == []
    assert store.supports_protocols(unknown, ["/a"]) == []
    assert store.first_supported_protocol(unknown, ["/a"]) is None
    store.remove_protocols(unknown, ["/a"])
    assert unknown not in store


def test_protocol_cap() -> None:
    assert DEFAULT_MAX_PROTOCOLS_PER_PEER == 128
    store = PeerStore(max_protocols_per_peer=3)
    p = pid(1)
    with pytest.raises(ProtocolError):
        store.set_protocols(p, ["/a", "/b", "/c", "/d"])
    store.set_protocols(p, ["/a", "/b", "/a"])  # duplicates count once
    with pytest.raises(ProtocolError):
        store.add_protocols(p, ["/c", "/d"])
    assert store.get_protocols(p) == ["/a", "/b"]  # unchanged after the refusal


# -- keys ----------------------------------------------------------------------------------


def test_inline_key_is_extracted(store: PeerStore) -> None:
    assert store.pubkey(pid(1)) == key(1)
    assert pid(1) not in store  # reading does not create a record


def test_add_pubkey_checks_the_peer_id(store: PeerStore) -> None:
    ecdsa = ECDSAPrivateKey.generate().public_key()
    hashed = PeerID.from_public_key(ecdsa)
    assert not hashed.is_inline
    assert store.pubkey(hashed) is None
    store.add_pubkey(hashed, ecdsa)
    assert store.pubkey(hashed) == ecdsa
    with pytest.raises(PeerIDMismatch):
        store.add_pubkey(pid(1), key(2))
    with pytest.raises(PeerIDMismatch):
        store.add_pubkey(hashed, key(1))
    assert store.pubkey(hashed) == ecdsa
    store.add_pubkey(pid(1), key(1))
    assert store.pubkey(pid(1)) == key(1)
    store.add_pubkey(pid(1), key(1))  # the stored key again (every connection brings it)
    with pytest.raises(PeerIDMismatch):  # another one is still checked
        store.add_pubkey(pid(1), key(3))
    assert store.pubkey(pid(1)) == key(1)


# -- metadata and latency ------------------------------------------------------------------


def test_metadata(store: PeerStore) -> None:
    p = pid(1)
    assert store.agent_version(p) is None
    assert store.get_metadata(p, "anything", 7) == 7
    store.set_agent_version(p, "js-libp2p/3.3.11 node/20.20.2")
    store.set_protocol_version(p, "ipfs/0.1.0")
    observed = Multiaddr("/ip4/203.0.113.7/tcp/4001")
    store.set_observed_addr(p, observed)
    store.put_metadata(p, "score", 12.5)
    assert store.agent_version(p) == "js-libp2p/3.3.11 node/20.20.2"
    assert store.get_metadata(p, AGENT_VERSION) == "js-libp2p/3.3.11 node/20.20.2"
    assert store.protocol_version(p) == "ipfs/0.1.0"
    assert store.observed_addr(p) == observed
    assert store.get_metadata(p, "score") == 12.5
    assert store.get_metadata(p, "missing") is None
    assert AGENT_VERSION == "agent_version"  # the key identify writes
    store.put_metadata(p, AGENT_VERSION, 42)  # wrong type: the typed getter ignores it
    assert store.agent_version(p) is None


def test_latency_ewma(store: PeerStore) -> None:
    p = pid(1)
    assert store.latency(p) is None
    store.record_latency(p, 0.100)
    assert store.latency(p) == pytest.approx(0.100)
    store.record_latency(p, 0.200)
    assert store.latency(p) == pytest.approx(0.110)


# -- the size bound ------------------------------------------------------------------------


def test_evicts_least_recently_updated(clock: FakeClock) -> None:
    store = PeerStore(max_peers=3, clock=clock)
    for i in range(3):
        store.add_addrs(pid(i), [ma(i + 1)], ADDRESS_TTL)
    store.set_protocols(pid(0), ["/a"])  # an update makes pid(0) the most recent
    store.pubkey(pid(1))  # reads do not count
    store.addrs(pid(1))
    store.put_metadata(pid(3), "k", "v")  # a 4th peer: pid(1) is the least recently updated
    assert set(store.peers()) == {pid(0), pid(2), pid(3)}
    assert len(store) == 3


def test_eviction_spares_connected_and_permanent_peers(clock: FakeClock) -> None:
    store = PeerStore(max_peers=3, clock=clock)
    store.add_addrs(pid(0), [ma(1)], CONNECTED_ADDR_TTL)
    store.add_addrs(pid(1), [ma(1)], PERMANENT_ADDR_TTL)
    store.add_addrs(pid(2), [ma(1)], ADDRESS_TTL)
    store.add_addrs(pid(3), [ma(1)], ADDRESS_TTL)
    assert set(store.peers()) == {pid(0), pid(1), pid(3)}
    # All others protected: the newest peer is kept, the store grows past its bound.
    store.add_addrs(pid(4), [ma(1)], CONNECTED_ADDR_TTL)
    store.add_addrs(pid(5), [ma(1)], ADDRESS_TTL)
    assert set(store.peers()) == {pid(0), pid(1), pid(4), pid(5)}
    # Once pid(0) disconnects it becomes evictable again, and the next insertion brings the
    # store back to its bound, least recently updated first.
    store.update_addrs(pid(0), CONNECTED_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL)
    store.add_addrs(pid(6), [ma(1)], ADDRESS_TTL)
    assert set(store.peers()) == {pid(1), pid(4), pid(6)}
    store.add_addrs(pid(7), [ma(1)], ADDRESS_TTL)
    assert set(store.peers()) == {pid(1), pid(4), pid(7)}


def test_many_peers_stay_bounded(clock: FakeClock) -> None:
    store = PeerStore(max_peers=50, clock=clock)
    for i in range(500):
        store.add_addrs(pid(i), [ma(1000 + i % 100)], ADDRESS_TTL)
        clock.advance(1)
    assert len(store) == 50
    assert set(store.peers()) == {pid(i) for i in range(450, 500)}


def test_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        PeerStore(max_peers=0)
