"""The iterative lookup state machine, driven over a simulated network without sockets."""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Callable

import pytest

from p2pnet.kad.query import Lookup, PeerState
from p2pnet.kad.routing_table import RoutingTable, distance, kad_key
from p2pnet.peer.peer_id import PeerID

K = 20


def make_peer(rng: random.Random) -> PeerID:
    return PeerID(b"\x12\x20" + hashlib.sha256(rng.randbytes(32)).digest())


class SimNetwork:
    """N peers, each with a routing table filled from every other peer (in random order)."""

    def __init__(self, n: int, seed: int = 0, k: int = K) -> None:
        self.rng = random.Random(seed)
        self.peers = [make_peer(self.rng) for _ in range(n)]
        self.tables: dict[PeerID, RoutingTable] = {}
        for p in self.peers:
            table = RoutingTable(p, k)
            others = list(self.peers)
            self.rng.shuffle(others)
            for q in others:
                table.add(q, 0.0)
            self.tables[p] = table

    def answer(self, peer: PeerID, key: bytes) -> list[PeerID]:
        return self.tables[peer].closest(kad_key(key), K)

    def true_closest(
        self, key: bytes, n: int = K, among: list[PeerID] | None = None
    ) -> list[PeerID]:
        target = kad_key(key)
        pool = self.peers if among is None else among
        return sorted(pool, key=lambda p: distance(kad_key(p.to_bytes()), target))[:n]


Responder = Callable[[PeerID], list[PeerID] | None]


def drive(lookup: Lookup, respond: Responder, *, max_rounds: int = 10_000) -> int:
    """Run the lookup to its end, answering in batches (one batch = requests issued together).

    ``respond(peer)`` returns the closer peers, or None for a failure. Returns the rounds run.
    """
    rounds = 0
    while not lookup.finished:
        batch = lookup.next_requests()
        assert lookup.in_flight <= lookup.alpha
        if not batch:
            break
        for peer in batch:
            closer = respond(peer)
            if closer is None:
                lookup.on_failure(peer)
            else:
                lookup.on_response(peer, closer)
        rounds += 1
        assert rounds < max_rounds, "lookup did not terminate"
    assert lookup.in_flight == 0 or lookup.finished
    return rounds


@pytest.mark.parametrize("n", [50, 500])
def test_lookup_finds_the_true_k_closest(n: int) -> None:
    net = SimNetwork(n, seed=n)
    hops: list[int] = []
    messages: list[int] = []
    for i in range(20):
        asker = net.peers[i]
        key = net.rng.randbytes(16)
        seeds = net.tables[asker].closest(kad_key(key), K)
        lookup = Lookup(key, seeds, local=asker, k=K, alpha=10)
        drive(lookup, functools.partial(net.answer, key=key))
        want = [p for p in net.true_closest(key, K + 1) if p != asker][:K]
        assert lookup.closest() == want
        hops.append(lookup.depth())
        messages.append(lookup.stats.messages)
        assert lookup.stats.responses == lookup.stats.messages
    assert max(hops) <= math.ceil(math.log2(n))
    assert max(messages) <= 4 * K


def test_alpha_bounds_requests_in_flight() -> None:
    net = SimNetwork(100, seed=3)
    asker = net.peers[0]
    key = b"alpha"
    lookup = Lookup(key, net.tables[asker].closest(kad_key(key)), local=asker, k=K, alpha=3)
    first = lookup.next_requests()
    assert len(first) == 3
    assert lookup.next_requests() == []  # all three slots busy
    lookup.on_response(first[0], net.answer(first[0], key))
    assert len(lookup.next_requests()) == 1
    assert lookup.in_flight == 3


def test_nothing_to_ask_finishes_at_once() -> None:
    lookup = Lookup(b"k", [], local=make_peer(random.Random(1)))
    assert lookup.finished
    assert lookup.next_requests() == []
    assert lookup.closest() == []


def test_failing_peers_are_dropped_and_lookup_terminates() -> None:
    net = SimNetwork(200, seed=5)
    rng = random.Random(9)
    dead = set(rng.sample(net.peers[1:], 60))
    asker = net.peers[0]
    for i in range(10):
        key = rng.randbytes(8) + bytes([i])
        lookup = Lookup(key, net.tables[asker].closest(kad_key(key)), local=asker, k=K)

        def respond(p: PeerID, key: bytes = key) -> list[PeerID] | None:
            return None if p in dead else net.answer(p, key)

        drive(lookup, respond)
        alive = [p for p in net.peers if p not in dead and p != asker]
        want = net.true_closest(key, K, among=alive)
        got = lookup.closest()
        # Answers still name dead peers (their tables hold them), so a few live peers may be
        # out of reach; the nearest ones are found and no dead peer is reported.
        assert got[:5] == want[:5]
        assert len(set(got) & set(want)) >= 15
        assert not set(got) & dead
        assert all(lookup.state(p) is PeerState.FAILED for p in lookup.stats.failed_peers)
        assert set(lookup.stats.failed_peers) <= dead


def test_every_peer_failing_terminates_with_nothing() -> None:
    net = SimNetwork(60, seed=11)
    asker = net.peers[0]
    lookup = Lookup(b"x", net.tables[asker].closest(kad_key(b"x")), local=asker, k=K)
    drive(lookup, lambda p: None)
    assert lookup.finished and lookup.closest() == []
    assert lookup.stats.failures == lookup.stats.messages == min(K, 59)


def test_answers_pointing_back_at_the_asker_or_repeating_are_harmless() -> None:
    net = SimNetwork(80, seed=13)
    asker = net.peers[0]
    key = b"self"

    def respond(p: PeerID) -> list[PeerID]:
        return [asker, p, asker, *net.answer(p, key)]

    lookup = Lookup(key, net.tables[asker].closest(kad_key(key)), local=asker, k=K)
    drive(lookup, respond)
    assert asker not in lookup
    assert lookup.closest() == [p for p in net.true_closest(key, K + 1) if p != asker][:K]


def test_sybil_answers_with_unreachable_fakes_still_terminate() -> None:
    """A hostile peer names 64 fresh fake IDs per answer (all unreachable, all failing)."""
    net = SimNetwork(100, seed=17)
    rng = random.Random(3)
    asker = net.peers[0]
    hostile = set(net.peers[1:30])
    fakes: set[PeerID] = set()
    key = b"sybil"

    def respond(p: PeerID) -> list[PeerID] | None:
        if p in fakes:
            return None
        if p in hostile:
            new = [make_peer(rng) for _ in range(64)]
            fakes.update(new)
            return new
        return net.answer(p, key)

    lookup = Lookup(key, net.tables[asker].closest(kad_key(key)), local=asker, k=K)
    drive(lookup, respond)
    assert lookup.finished
    assert not set(lookup.closest()) & fakes
    honest = [p for p in net.peers if p != asker]
    # Honest peers close to the key are still found (the hostile ones answered, so they count).
    assert lookup.closest()[:5] == net.true_closest(key, 5, among=honest)


def test_stop_ends_early_and_learned_hops_are_tracked() -> None:
    net = SimNetwork(300, seed=19)
    asker = net.peers[0]
    target = net.peers[-1]
    key = target.to_bytes()
    lookup = Lookup(key, net.tables[asker].closest(kad_key(key)), local=asker, k=K)
    assert target not in lookup or lookup.learned_hop(target) == 0
    found_after = 0
    while not lookup.finished:
        for p in lookup.next_requests():
            lookup.on_response(p, net.answer(p, key))
            found_after += 1
            if target in lookup and not lookup.stopped:
                lookup.stop()
    assert lookup.stopped and lookup.finished
    assert lookup.next_requests() == []
    hop = lookup.learned_hop(target)
    assert hop is not None and 0 <= hop <= math.ceil(math.log2(300))
    # late answers after stop are ignored without error
    lookup.on_response(make_peer(random.Random(0)), [])
    lookup.on_failure(make_peer(random.Random(0)))


def test_duplicate_or_unexpected_reports_are_ignored() -> None:
    rng = random.Random(23)
    asker = make_peer(rng)
    seeds = [make_peer(rng) for _ in range(3)]
    lookup = Lookup(b"dup", seeds, local=asker, k=3, alpha=3)
    batch = lookup.next_requests()
    lookup.on_response(batch[0], [])
    lookup.on_response(batch[0], [make_peer(rng)])  # second answer: ignored
    lookup.on_failure(batch[0])  # already answered: ignored
    assert lookup.state(batch[0]) is PeerState.SUCCEEDED
    assert lookup.stats.responses == 1 and lookup.stats.failures == 0
    lookup.on_failure(batch[1])
    lookup.on_response(batch[2], [])
    assert lookup.finished
    assert lookup.closest() == sorted(
        [batch[0], batch[2]], key=lambda p: distance(kad_key(p.to_bytes()), kad_key(b"dup"))
    )
