"""Thousands of kad behaviours on a simulated network: the DHT's decisions at a scale the full
stack cannot reach in one process.

Each node is a real sans-IO :class:`~p2pnet.kad.behaviour.KadBehaviour` (routing table, penalty
policy, answers, refresh plan) driven by the real :class:`~p2pnet.kad.query.Lookup` state
machine, exactly as :class:`~p2pnet.kad.dht.KadDHT` drives them. What is simulated is everything
below the kad messages: instead of hosts, connections, yamux streams and identify, requests and
answers travel as the real encoded protobuf bytes (``messages.encode``/``decode``) through an
event queue with a per-message latency, on a :class:`~p2pnet.clock.VirtualClock`. A node's
first request to another "connects" them: one round trip later each side learns the other's
protocols (what identify does), so both enter each other's routing tables as in the full stack.

What a node knows of others' addresses follows the full stack: the peers it is connected to,
those in its routing table, and those named with addresses in answers to its requests, for
``TEMP_ADDR_TTL`` (what ``KadDHT`` puts in the peer store); a FIND_NODE for a peer known that way
names it (as ``KadBehaviour`` does on a host). Simplifications, stated: connections are never
closed; there is no connection cost, no stream pooling and no message loss. A node that
:meth:`KadCoreNetwork.kill` stopped answers nothing: requests to it fail after
``request_timeout`` (as a dial that hangs) and count against it.

Everything derives from ``seed`` (identities, latencies, join order and the peers joined
through, random refresh keys, lookup targets): the same seed gives the same run.
``bench/dht.py --cores`` prints its figures; ``tests/test_kad_cores.py`` runs a scaled-down one.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from multiaddr import Multiaddr

from p2pnet.clock import VirtualClock
from p2pnet.crypto.keys import Ed25519PrivateKey, KeyPair
from p2pnet.kad import messages as m
from p2pnet.kad.behaviour import Failure, KadBehaviour
from p2pnet.kad.config import KadConfig
from p2pnet.kad.errors import KadError
from p2pnet.kad.messages import PeerInfo
from p2pnet.kad.providers import InMemoryProviderStore
from p2pnet.kad.query import Lookup, LookupStats
from p2pnet.kad.records import InMemoryRecordStore, NamespacedValidator
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.peerstore import TEMP_ADDR_TTL
from p2pnet.sim.lookup_results import LookupResults
from p2pnet.wire.pb import kad_pb2

#: Called with (sender, answer, closer peers named); True stops the lookup.
AnswerHandler = Callable[[PeerID, kad_pb2.Message, list[PeerInfo]], bool]


def core_peer_id(seed: int, index: int) -> PeerID:
    """The Ed25519 identity of node ``index`` in the network of ``seed`` (public key only is
    needed: deriving it costs one scalar multiplication, no signing)."""
    material = hashlib.sha256(f"p2pnet-kad-cores/{seed}/{index}".encode()).digest()
    return PeerID.from_public_key(KeyPair(Ed25519PrivateKey(material)).public_key)


class _Peers:
    """The :class:`~p2pnet.kad.behaviour.PeerView` of one simulated node."""

    def __init__(self, net: KadCoreNetwork, index: int) -> None:
        self.net = net
        self.index = index

    def self_addrs(self) -> list[Multiaddr]:
        return [self.net.addrs[self.index]]

    def _known(self, peer: PeerID) -> int | None:
        """The index of ``peer`` if this node knows its address."""
        i = self.net.index_of.get(peer)
        if i is None:
            return None
        node = self.net.nodes[self.index]
        if (
            i in node.connected
            or peer in node.behaviour.routing_table
            or node.learned.get(i, -1.0) > self.net.clock.monotonic()
        ):
            return i
        return None

    def addrs(self, peer: PeerID) -> list[Multiaddr]:
        i = self._known(peer)
        return [] if i is None else [self.net.addrs[i]]

    def addr_bytes(self, peer: PeerID) -> tuple[bytes, ...]:
        i = self._known(peer)
        return () if i is None else self.net.addr_bytes[i]

    def is_connected(self, peer: PeerID) -> bool:
        i = self.net.index_of.get(peer)
        return i is not None and i in self.net.nodes[self.index].connected

    def protocols(self, peer: PeerID) -> Collection[str]:
        i = self.net.index_of.get(peer)
        if i is None or i not in self.net.nodes[self.index].connected:
            return ()
        return self.net.protocols

    def public_key(self, peer: PeerID) -> bytes | None:
        return None


@dataclass
class CoreNode:
    index: int
    peer_id: PeerID
    behaviour: KadBehaviour
    #: Indexes of the nodes this one has a (simulated) connection with.
    connected: set[int] = field(default_factory=set)
    #: Peers whose address an answer named: index -> when that knowledge expires.
    learned: dict[int, float] = field(default_factory=dict)
    alive: bool = True


#: Failed lookups are named by (asker, target) node indexes.
CoreLookupResults = LookupResults[tuple[int, int]]


class _Run:
    """One lookup being driven: the state machine, its requests in flight, what to do next."""

    def __init__(
        self,
        node: CoreNode,
        lookup: Lookup,
        make_request: Callable[[], kad_pb2.Message],
        on_answer: AnswerHandler | None,
        done: Callable[[Lookup], None],
        started: float,
    ) -> None:
        self.node = node
        self.lookup = lookup
        self.make_request = make_request
        self.on_answer = on_answer
        self.done = done
        self.started = started
        self.finished = False


class KadCoreNetwork:
    """``n`` kad behaviours on an event queue; see the module docstring."""

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        k: int = 20,
        alpha: int = 10,
        latency: float = 0.010,
        jitter: float = 0.005,
        clock: VirtualClock | None = None,
        kad: KadConfig | None = None,
    ) -> None:
        if n < 2:
            raise ValueError("a network needs at least 2 nodes")
        self.n = n
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = clock or VirtualClock()
        self.latency = latency
        self.jitter = jitter
        # periodic work (refresh, liveness, cleanup) is not simulated: the timers are off
        self.config = kad or KadConfig(k=k, alpha=alpha, auto_refresh=False, liveness_interval=0)
        self.protocols = frozenset({self.config.protocol_id})
        self.validator = NamespacedValidator(max_value_size=self.config.max_value_size)
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._next_sweep = TEMP_ADDR_TTL
        self.index_of: dict[PeerID, int] = {}
        self.addrs: list[Multiaddr] = []
        self.addr_bytes: list[tuple[bytes, ...]] = []
        self.nodes: list[CoreNode] = []
        #: Requests delivered, and bytes of requests and answers.
        self.requests = 0
        self.bytes = 0
        for i in range(n):
            pid = core_peer_id(seed, i)
            self.index_of[pid] = i
            self.addrs.append(
                Multiaddr(f"/ip4/10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/tcp/4001")
            )
            self.addr_bytes.append((self.addrs[-1].to_bytes(),))
            cfg = self.config
            behaviour = KadBehaviour(
                pid,
                cfg,
                _Peers(self, i),
                records=InMemoryRecordStore(cfg.max_records),
                providers=InMemoryProviderStore(cfg.max_provider_keys, cfg.max_providers_per_key),
                validator=self.validator,
                now=self.clock.monotonic(),
            )
            self.nodes.append(CoreNode(i, pid, behaviour))

    # -- the event queue --------------------------------------------------------------------

    def _at(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (self.clock.monotonic() + delay, next(self._seq), fn))

    def _delay(self) -> float:
        return self.latency + self.rng.random() * self.jitter

    def run(self) -> None:
        """Process events until none is left (every lookup and join started has ended)."""
        queue, clock = self._queue, self.clock
        while queue:
            t, _, fn = heapq.heappop(queue)
            clock.set(t)
            if t >= self._next_sweep:
                self._sweep(t)
            fn()

    def _sweep(self, now: float) -> None:
        """Forget expired learned addresses (the peer store's TTL), so memory stays bounded."""
        self._next_sweep = now + TEMP_ADDR_TTL
        for node in self.nodes:
            if node.learned:
                node.learned = {i: t for i, t in node.learned.items() if t > now}

    # -- connections and requests -------------------------------------------------------------

    def _connect(self, a: CoreNode, b: CoreNode, then: Callable[[bool], None]) -> None:
        """Connect ``a`` to ``b``: one round trip, then each side "identifies" the other (it
        enters the routing table as a server); ``then(ok)``."""
        if b.index in a.connected:
            then(True)
            return
        if not b.alive:
            self._at(self.config.request_timeout, lambda: then(False))
            return

        def established() -> None:
            if b.index not in a.connected:
                a.connected.add(b.index)
                b.connected.add(a.index)
                now = self.clock.monotonic()
                self._check(a, a.behaviour.peer_identified(b.peer_id, now))
                self._check(b, b.behaviour.peer_identified(a.peer_id, now))
            then(True)

        self._at(2 * self._delay(), established)

    def _request(
        self,
        src: CoreNode,
        dst_peer: PeerID,
        msg: kad_pb2.Message,
        reply: Callable[[kad_pb2.Message | None, Failure | None], None],
    ) -> None:
        """Send ``msg`` from ``src`` to ``dst_peer`` as bytes; ``reply(answer, None)`` or
        ``reply(None, failure)``."""
        src.behaviour.count("sent " + m.type_name(msg.type))
        dst = self.nodes[self.index_of[dst_peer]]
        data = m.encode(msg)

        def connected(ok: bool) -> None:
            if not ok:
                reply(None, Failure.UNREACHABLE)
                return
            if not dst.alive:
                self._at(self.config.request_timeout, lambda: reply(None, Failure.TIMEOUT))
                return
            self._at(self._delay(), deliver)

        def deliver() -> None:
            self.requests += 1
            self.bytes += len(data)
            wall = self.clock.time()
            try:
                resp = dst.behaviour.handle_request(src.peer_id, m.decode(data), wall)
            except KadError:
                dst.behaviour.count("bad requests")
                self._at(self._delay(), lambda: reply(None, Failure.PROTOCOL))
                return
            if resp is None:
                self._at(self._delay(), lambda: reply(None, None))
                return
            answer = m.encode(resp)
            self.bytes += len(answer)
            self._at(self._delay(), lambda: receive(answer))

        def receive(answer: bytes) -> None:
            try:
                resp = m.decode(answer)
                src.behaviour.check_answer(dst_peer, msg, resp)
            except KadError:
                reply(None, Failure.PROTOCOL)
                return
            reply(resp, None)

        self._connect(src, dst, connected)

    def _check(self, node: CoreNode, peer: PeerID | None) -> None:
        """A liveness check the behaviour asked for (a full bucket's oldest peer)."""
        if peer is None:
            return

        def reply(resp: kad_pb2.Message | None, failure: Failure | None) -> None:
            alive = resp is not None
            node.behaviour.liveness_result(peer, alive, self.clock.monotonic())

        self._request(node, peer, m.find_node(node.peer_id.to_bytes()), reply)

    # -- lookups ------------------------------------------------------------------------------

    def lookup(
        self,
        node: CoreNode,
        key: bytes,
        kind: str,
        make_request: Callable[[], kad_pb2.Message],
        on_answer: AnswerHandler | None,
        done: Callable[[Lookup], None],
    ) -> None:
        """Start an iterative lookup from ``node`` (as ``KadDHT._lookup`` runs one)."""
        b = node.behaviour
        seeds = b.lookup_seeds(key, lambda: [self.nodes[i].peer_id for i in node.connected])
        cfg = self.config
        lookup = Lookup(key, seeds, local=node.peer_id, k=cfg.k, alpha=cfg.alpha, kind=kind)
        run = _Run(node, lookup, make_request, on_answer, done, self.clock.monotonic())
        self._pump(run)

    def _pump(self, run: _Run) -> None:
        if run.finished:
            return
        lookup = run.lookup
        for peer in lookup.next_requests():
            self._request(run.node, peer, run.make_request(), self._replier(run, peer))
        if lookup.in_flight == 0 or lookup.finished:
            run.finished = True
            now = self.clock.monotonic()
            lookup.stats.duration = now - run.started
            run.node.behaviour.lookup_ran(lookup.key, now)
            run.done(lookup)

    def _replier(
        self, run: _Run, peer: PeerID
    ) -> Callable[[kad_pb2.Message | None, Failure | None], None]:
        return lambda resp, failure: self._settle(run, peer, resp, failure)

    def _settle(
        self, run: _Run, peer: PeerID, resp: kad_pb2.Message | None, failure: Failure | None
    ) -> None:
        b = run.node.behaviour
        now = self.clock.monotonic()
        if run.finished:
            return  # the lookup ended (stopped early): KadDHT cancels what is still in flight
        if resp is None:
            run.lookup.on_failure(peer)
            b.request_failed(peer, failure or Failure.PROTOCOL, now)
            self._pump(run)
            return
        infos = b.closer_peers(resp)
        node = run.node
        expires = now + TEMP_ADDR_TTL
        for info in infos:  # as KadDHT._learn_peers: the peer store keeps them a while
            if info.addrs:
                i = self.index_of.get(info.peer)
                if i is not None and i not in node.connected:
                    node.learned[i] = expires
        self._check(node, b.peer_answered(peer, now))
        run.lookup.on_response(peer, [i.peer for i in infos])
        if run.on_answer is not None and run.on_answer(peer, resp, infos):
            run.lookup.stop()
        self._pump(run)

    def get_closest_peers(
        self, node: CoreNode, key: bytes, done: Callable[[Lookup], None], kind: str = ""
    ) -> None:
        self.lookup(node, key, kind or "get_closest_peers", lambda: m.find_node(key), None, done)

    # -- joining ------------------------------------------------------------------------------

    def build(self, join: str = "bootstrap", join_concurrency: int = 20) -> None:
        """Every node but the first joins through a random node already in, at most
        ``join_concurrency`` at a time. ``join``: ``"bootstrap"`` (as ``KadDHT.bootstrap``:
        connect, self lookup, then a lookup of a random key in each bucket holding fewer than
        k peers up to the k-th closest) or ``"self_lookup"`` (connect, self lookup)."""
        if join not in ("bootstrap", "self_lookup"):
            raise ValueError(f"unknown join {join!r} (bootstrap or self_lookup)")
        joined = [self.nodes[0]]
        waiting = list(self.nodes[1:])
        waiting.reverse()

        def start_next() -> None:
            if not waiting:
                return
            node = waiting.pop()
            via = joined[int(self.rng.random() * len(joined))]
            self._join(node, via, join, lambda: finished(node))

        def finished(node: CoreNode) -> None:
            joined.append(node)
            start_next()

        for _ in range(min(join_concurrency, len(waiting))):
            start_next()
        self.run()

    def _join(self, node: CoreNode, via: CoreNode, join: str, done: Callable[[], None]) -> None:
        own = node.peer_id.to_bytes()

        def connected(ok: bool) -> None:
            self.get_closest_peers(node, own, after_self_lookup, "self lookup")

        def after_self_lookup(_: Lookup) -> None:
            if join == "self_lookup":
                done()
                return
            b = node.behaviour
            cpls = b.refresh_plan(self.clock.monotonic(), force=True, sparse_only=True)
            refresh(cpls)

        def refresh(cpls: list[int]) -> None:
            if not cpls:
                done()
                return
            key = node.behaviour.routing_table.random_key_for_cpl(cpls[0], self.rng.randbytes)
            self.get_closest_peers(node, key, lambda _: refresh(cpls[1:]), "refresh")

        self._connect(node, via, connected)

    def kill(self, node: CoreNode) -> None:
        """``node`` stops answering (its connections hang): requests to it time out."""
        node.alive = False

    # -- measurements -------------------------------------------------------------------------

    def find_peer(self, asker: CoreNode, target: CoreNode) -> tuple[bool, LookupStats]:
        """One find_peer lookup through the network (never from the asker's own table), run to
        its end; returns whether it found ``target``'s address and its cost."""
        key = target.peer_id.to_bytes()
        found: list[PeerInfo] = []
        want = self.addrs[target.index]

        def on_answer(sender: PeerID, resp: kad_pb2.Message, infos: list[PeerInfo]) -> bool:
            if sender == target.peer_id:
                found.append(PeerInfo(sender, [want]))
                return True
            for info in infos:
                if info.peer == target.peer_id and info.addrs:
                    found.append(info)
                    return True
            return False

        result: list[Lookup] = []
        self.lookup(asker, key, "find_peer", lambda: m.find_node(key), on_answer, result.append)
        self.run()
        stats = result[0].stats
        ok = bool(found) and want in found[0].addrs
        stats.found = ok
        stats.hops = (result[0].learned_hop(target.peer_id) or 1) if ok else 0
        return ok, stats

    def find_peer_lookups(self, count: int) -> CoreLookupResults:
        """``count`` find_peer lookups of random live targets from random live nodes."""
        results = CoreLookupResults()
        alive = [x for x in self.nodes if x.alive]
        for _ in range(count):
            asker, target = self.rng.sample(alive, 2)
            ok, stats = self.find_peer(asker, target)
            results.lookups += 1
            results.found += ok
            results.stats.append(stats)
            if not ok:
                results.failures.append((asker.index, target.index))
        return results

    def closest_lookup(self, asker: CoreNode, key: bytes) -> tuple[list[PeerID], LookupStats]:
        """A full get_closest_peers lookup run to its end."""
        result: list[Lookup] = []
        self.get_closest_peers(asker, key, result.append)
        self.run()
        return result[0].closest(), result[0].stats

    def table_sizes(self) -> list[int]:
        return [len(x.behaviour.routing_table) for x in self.nodes]

    def mean_connections(self) -> float:
        return sum(len(x.connected) for x in self.nodes) / self.n


__all__ = ["CoreLookupResults", "CoreNode", "KadCoreNetwork", "core_peer_id"]
