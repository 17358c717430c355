"""The Kademlia routing table, without sockets: buckets, eviction, liveness, refresh keys."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from p2pnet.kad.routing_table import (
    AddResult,
    RoutingTable,
    common_prefix_length,
    distance,
    kad_key,
    key_int,
    peer_key_int,
)
from p2pnet.peer.peer_id import PeerID


def random_peer(rng: random.Random | None = None) -> PeerID:
    data = rng.randbytes(32) if rng else os.urandom(32)
    return PeerID(b"\x12\x20" + hashlib.sha256(data).digest())


def peers_in_bucket(table: RoutingTable, cpl: int, n: int) -> list[PeerID]:
    """n random peers whose key shares exactly ``cpl`` bits with the table's own key."""
    out: list[PeerID] = []
    while len(out) < n:
        p = random_peer()
        if table.cpl(p) == cpl:
            out.append(p)
    return out


def test_key_space_helpers() -> None:
    a = kad_key(b"a")
    assert len(a) == 32 and a == hashlib.sha256(b"a").digest()
    assert distance(a, a) == 0
    assert common_prefix_length(a, a) == 256
    b = bytes([a[0] ^ 0x80]) + a[1:]
    assert common_prefix_length(a, b) == 0
    c = a[:3] + bytes([a[3] ^ 0x01]) + a[4:]
    assert common_prefix_length(a, c) == 31
    assert distance(a, c) == distance(c, a) == 1 << (256 - 32)
    p = random_peer()
    assert peer_key_int(p.to_bytes()) == key_int(kad_key(p.to_bytes()))


def test_add_update_and_reject_self() -> None:
    local = random_peer()
    table = RoutingTable(local, k=4)
    assert table.add(local, 0.0).result is AddResult.REJECTED
    p = random_peer()
    assert table.add(p, 1.0).result is AddResult.ADDED
    assert table.add(p, 2.0).result is AddResult.UPDATED
    assert p in table and len(table) == 1
    entry = table.entry(p)
    assert entry is not None and entry.last_seen == 2.0 and entry.added_at == 1.0
    assert table.bucket_sizes() == {table.cpl(p): 1}


def test_bucket_holds_k_and_orders_by_last_seen() -> None:
    table = RoutingTable(random_peer(), k=3)
    a, b, c = peers_in_bucket(table, 0, 3)
    for t, p in enumerate((a, b, c)):
        table.add(p, float(t))
    assert table.bucket(0) == [a, b, c]
    table.add(a, 10.0)  # seen again: most recently seen
    assert table.bucket(0) == [b, c, a]
    table.mark_seen(c, 11.0)
    assert table.bucket(0) == [b, a, c]


def test_full_bucket_checks_least_recently_seen_and_keeps_it_when_alive() -> None:
    table = RoutingTable(random_peer(), k=2)
    a, b, new1, new2 = peers_in_bucket(table, 1, 4)
    table.add(a, 0.0)
    table.add(b, 1.0)
    out = table.add(new1, 2.0)
    assert out.result is AddResult.FULL and out.check == a
    # A second newcomer while the check runs: no second check of the same bucket.
    out2 = table.add(new2, 2.5)
    assert out2.result is AddResult.FULL and out2.check is None
    assert new1 not in table and table.replacements(1) == [new1, new2]
    # a answered: it stays (now most recently seen), the newcomers wait.
    assert table.liveness_result(a, True, 3.0) is None
    assert table.bucket(1) == [b, a]
    assert new1 not in table
    # The next newcomer triggers a check of the new least recently seen peer.
    assert table.add(new1, 4.0).check == b


def test_dead_peer_is_replaced_by_newest_candidate() -> None:
    table = RoutingTable(random_peer(), k=2)
    a, b, new1, new2 = peers_in_bucket(table, 0, 4)
    table.add(a, 0.0)
    table.add(b, 1.0)
    assert table.add(new1, 2.0).check == a
    table.add(new2, 2.5)
    assert table.liveness_result(a, False, 3.0) == new2  # most recently seen candidate
    assert a not in table and new2 in table
    assert table.bucket(0) == [b, new2]
    assert table.replacements(0) == [new1]


def test_failures_penalise_then_remove() -> None:
    table = RoutingTable(random_peer(), k=5, max_failures=3)
    p = random_peer()
    table.add(p, 0.0)
    assert not table.record_failure(p, 1.0)
    assert not table.record_failure(p, 2.0)
    table.mark_seen(p, 2.5)  # an answer resets the count
    assert not table.record_failure(p, 3.0)
    assert not table.record_failure(p, 4.0)
    assert table.record_failure(p, 5.0)
    assert p not in table
    assert not table.record_failure(p, 6.0)  # unknown peers: nothing to do


def test_remove_promotes_replacement() -> None:
    table = RoutingTable(random_peer(), k=1)
    a, b = peers_in_bucket(table, 2, 2)
    table.add(a, 0.0)
    table.add(b, 1.0)
    assert table.remove(a) == b
    assert table.peers() == [b]
    assert table.remove(a) is None


def test_closest_is_sorted_by_xor_distance() -> None:
    rng = random.Random(7)
    table = RoutingTable(random_peer(rng), k=20)
    peers = [random_peer(rng) for _ in range(300)]
    for p in peers:
        table.add(p, 0.0)
    assert 0 < len(table) < 300  # far buckets overflowed
    target = kad_key(b"some key")
    got = table.closest(target, 10)
    in_table = table.peers()
    expect = sorted(in_table, key=lambda p: distance(kad_key(p.to_bytes()), target))[:10]
    assert got == expect
    assert table.closest(target, 5, exclude=got[:2]) == expect[2:7]


def test_buckets_fill_by_prefix_length() -> None:
    rng = random.Random(1)
    table = RoutingTable(random_peer(rng), k=20)
    for _ in range(2000):
        table.add(random_peer(rng), 0.0)
    sizes = table.bucket_sizes()
    # about half the key space is in bucket 0, a quarter in bucket 1, ...: the first buckets
    # are full, the deep ones sparse.
    assert sizes[0] == sizes[1] == sizes[2] == 20
    assert all(n <= 20 for n in sizes.values())
    assert max(sizes) < 25


@pytest.mark.parametrize("cpl", [0, 1, 5, 10])
def test_random_key_for_cpl(cpl: int) -> None:
    table = RoutingTable(random_peer(), k=20)
    key = table.random_key_for_cpl(cpl, random.Random(cpl).randbytes)
    assert key[:2] == b"\x12\x20" and len(key) == 34
    assert table.cpl_of_key(kad_key(key)) == cpl
    PeerID.from_bytes(key)  # shaped like a peer ID


def test_refresh_bookkeeping() -> None:
    table = RoutingTable(random_peer(), k=20)
    assert table.buckets_to_refresh(100.0, 10.0) == []
    for p in peers_in_bucket(table, 3, 2):
        table.add(p, 0.0)
    assert table.buckets_to_refresh(100.0, 10.0) == [0, 1, 2, 3]
    table.mark_refreshed(1, 95.0)
    table.mark_key_refreshed(kad_key(table.random_key_for_cpl(2)), 95.0)
    assert table.buckets_to_refresh(100.0, 10.0) == [0, 3]
    assert table.buckets_to_refresh(100.0, 10.0, max_cpl=2) == [0]


def test_closest_matches_brute_force_for_any_key() -> None:
    """The tiered bucket walk equals a full sort, for random keys and for our own key."""
    rng = random.Random(11)
    table = RoutingTable(random_peer(rng), k=8)
    for _ in range(500):
        table.add(random_peer(rng), 0.0)
    everyone = table.peers()
    targets = [table.local_key, kad_key(b"x")] + [rng.randbytes(32) for _ in range(50)]
    for target in targets:
        for n in (1, 8, 30, 1000):
            ranked = sorted(everyone, key=lambda p: distance(kad_key(p.to_bytes()), target))
            assert table.closest(target, n) == ranked[:n]
            # excluded peers (the nearest, one further out, one not in the table) are skipped
            exclude = [ranked[0], ranked[min(5, len(ranked) - 1)], random_peer(rng)]
            want = [p for p in ranked if p not in exclude][:n]
            assert table.closest(target, n, exclude=exclude) == want
