"""A whole network of DHT nodes in one process, on a virtual clock and the memory transport.

Every node is the real stack (host, multistream, /plaintext/2.0.0 or Noise, yamux, identify,
:class:`~p2pnet.kad.dht.KadDHT`); only the transport (:mod:`p2pnet.transport.memory`) and the
clock (:class:`~p2pnet.clock.VirtualClock` driving :class:`~p2pnet.sim.loop.VirtualTimeEventLoop`)
are simulated, so timeouts and refresh timers cost no real time. Keys, the order nodes join in,
the peers they join through and each node's RNG come from one seed: the same seed builds the
same network.

While a simulation is open it raises the cyclic garbage collector's generation-0 threshold
(:data:`GC_THRESHOLD`) and restores the previous one on :meth:`DhtSimulation.close`: a network of
a thousand nodes holds millions of long-lived objects, and with the default threshold (700) the
collector took 40 % of the CPU of a 600-node build (measured with ``gc.callbacks``). With
``gc_freeze`` (the default) it also moves what is alive to the collector's permanent
generation (``gc.freeze()``) after every :data:`FREEZE_EVERY` joins, and back on close
(``gc.unfreeze()``): the full collections otherwise rescan the whole process, every node's
state, which no real node's collector does (it scans its own few MB); with it they scan what
the recent joins made. (Cyclic garbage among frozen objects waits for the close.)

Run it inside :func:`~p2pnet.sim.loop.run_virtual` (or any loop whose ``time()`` is the clock
given here)::

    clock = VirtualClock()
    async def main() -> None:
        async with DhtSimulation(1000, seed=7, clock=clock) as sim:
            await sim.build()
            result = await sim.find_peer_lookups(200)
    run_virtual(main(), clock)
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import random
import statistics
from dataclasses import dataclass

from multiaddr import Multiaddr

from p2pnet.clock import Clock, VirtualClock
from p2pnet.crypto.keys import Ed25519PrivateKey, KeyPair
from p2pnet.errors import P2PError
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.kad.config import KadConfig, Mode
from p2pnet.kad.dht import KadDHT
from p2pnet.peer.peer_id import PeerID
from p2pnet.protocols.identify import IdentifyService
from p2pnet.security.base import SecurityTransport
from p2pnet.security.noise_connection import NoiseSecurity
from p2pnet.security.plaintext import PlaintextSecurity
from p2pnet.sim.lookup_results import LookupResults
from p2pnet.transport.memory import MemoryNetwork

#: Generation-0 threshold of the garbage collector while a simulation is open.
GC_THRESHOLD = 50_000
#: Joins between two ``gc.freeze()`` calls (with ``gc_freeze``).
FREEZE_EVERY = 50


@dataclass
class SimNode:
    host: Host
    identify: IdentifyService
    dht: KadDHT

    @property
    def peer_id(self) -> PeerID:
        return self.host.peer_id

    @property
    def addr(self) -> Multiaddr:
        return self.host.p2p_addrs()[0]


def deterministic_key(seed: int, index: int) -> KeyPair:
    """The Ed25519 identity of node ``index`` in the network of ``seed``."""
    material = hashlib.sha256(f"p2pnet-sim/{seed}/{index}".encode()).digest()
    return KeyPair(Ed25519PrivateKey(material))


class DhtSimulation:
    """``n`` DHT servers on one :class:`MemoryNetwork`; :meth:`build` joins them one by one
    (at most ``join_concurrency`` at a time), each through a node already in."""

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        clock: Clock | None = None,
        k: int = 20,
        alpha: int = 10,
        security: str = "plaintext",
        join_concurrency: int = 8,
        kad: KadConfig | None = None,
        gc_freeze: bool = True,
    ) -> None:
        if n < 2:
            raise ValueError("a network needs at least 2 nodes")
        self.n = n
        self.seed = seed
        self.clock = clock or VirtualClock()
        self.rng = random.Random(seed)
        self.security = security
        self.join_concurrency = join_concurrency
        self.kad = kad or KadConfig(k=k, alpha=alpha, auto_refresh=False, mode=Mode.SERVER)
        self.network = MemoryNetwork()
        self.nodes: list[SimNode] = []
        self._gc_threshold: tuple[int, int, int] | None = None
        self.gc_freeze = gc_freeze
        self._frozen = False

    def _tune_gc(self) -> None:
        if self._gc_threshold is None:
            self._gc_threshold = gc.get_threshold()
            gc.set_threshold(GC_THRESHOLD, *self._gc_threshold[1:])

    def _freeze(self) -> None:
        if self.gc_freeze:
            gc.freeze()
            self._frozen = True

    def _security(self) -> list[SecurityTransport]:
        if self.security == "plaintext":
            return [PlaintextSecurity()]
        if self.security == "noise":
            return [NoiseSecurity()]
        raise ValueError(f"unknown security {self.security!r} (plaintext or noise)")

    async def start_nodes(self) -> None:
        """Create and start every node (no connections yet)."""
        self._tune_gc()
        for i in range(self.n):
            host = Host(
                deterministic_key(self.seed, i),
                HostConfig(listen_addrs=["/memory/0"]),
                transports=[self.network.transport()],
                security=self._security(),
                clock=self.clock,
            )
            await host.start()
            identify = IdentifyService(host)
            dht = KadDHT(
                host,
                identify,
                KadConfig(**{**self.kad.__dict__}),
                clock=self.clock,
                rng=random.Random(self.rng.getrandbits(64)),
            )
            await dht.start()
            self.nodes.append(SimNode(host, identify, dht))

    async def build(self, join: str = "bootstrap") -> None:
        """Start the nodes and let each join through a random node already in. ``join``:

        * ``"bootstrap"``: :meth:`KadDHT.bootstrap` (connect, self lookup, then a lookup in
          each bucket that holds fewer than k peers up to its k-th closest peer);
        * ``"self_lookup"``: Kademlia's join without the bucket refresh: connect, wait for
          identify, look itself up. About a third of the connections of ``"bootstrap"``; the
          far buckets then fill from the peers that contact the node later.

        A failed join is retried through another node, at most 3 times; then
        :class:`P2PError` is raised."""
        if join not in ("bootstrap", "self_lookup"):
            raise ValueError(f"unknown join {join!r} (bootstrap or self_lookup)")
        if not self.nodes:
            await self.start_nodes()
        joined = [self.nodes[0]]
        sem = asyncio.Semaphore(self.join_concurrency)
        order = self.nodes[1:]
        vias = [self.rng.random() for _ in order]

        async def join_one(node: SimNode, pick: float) -> None:
            async with sem:
                last: BaseException | None = None
                for attempt in range(3):
                    via = joined[int(pick * len(joined)) if attempt == 0 else attempt - 1]
                    try:
                        if join == "bootstrap":
                            await node.dht.bootstrap([via.addr])
                        else:
                            await self._join_by_self_lookup(node, via)
                        break
                    except (P2PError, TimeoutError) as exc:
                        last = exc
                else:
                    raise P2PError(f"{node.peer_id} could not join: {last}")
                joined.append(node)
                if len(joined) % FREEZE_EVERY == 0:
                    self._freeze()

        self._freeze()  # the nodes just started
        await asyncio.gather(*(join_one(x, p) for x, p in zip(order, vias, strict=True)))
        self._freeze()

    @staticmethod
    async def _join_by_self_lookup(node: SimNode, via: SimNode) -> None:
        await node.host.connect(via.addr)
        await node.identify.wait_identified(via.peer_id)
        await node.dht.get_closest_peers(node.peer_id.to_bytes())

    async def find_peer_lookups(self, count: int) -> LookupResults[tuple[PeerID, PeerID, str]]:
        """``count`` find_peer lookups of random targets from random nodes, one after the other,
        always through the network (``use_cache=False``)."""
        results: LookupResults[tuple[PeerID, PeerID, str]] = LookupResults()
        for _ in range(count):
            asker, target = self.rng.sample(self.nodes, 2)
            results.lookups += 1
            try:
                info = await asker.dht.find_peer(target.peer_id, use_cache=False)
            except P2PError as exc:
                results.failures.append((asker.peer_id, target.peer_id, str(exc)))
            else:
                if info.peer == target.peer_id and target.host.listen_addrs[0] in info.addrs:
                    results.found += 1
                else:
                    results.failures.append((asker.peer_id, target.peer_id, "wrong answer"))
            results.stats.append(asker.dht.lookup_history[-1])
        return results

    def table_sizes(self) -> list[int]:
        return [len(x.dht.routing_table) for x in self.nodes]

    def mean_connections(self) -> float:
        return statistics.mean(len(x.host.connections()) for x in self.nodes)

    async def close(self) -> None:
        # hosts first: a DHT closing on a live host would announce its protocol change
        await asyncio.gather(*(x.host.close() for x in self.nodes), return_exceptions=True)
        await asyncio.gather(*(x.dht.close() for x in self.nodes), return_exceptions=True)
        if self._frozen:
            gc.unfreeze()
            self._frozen = False
        if self._gc_threshold is not None:
            gc.set_threshold(*self._gc_threshold)
            self._gc_threshold = None

    async def __aenter__(self) -> DhtSimulation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
