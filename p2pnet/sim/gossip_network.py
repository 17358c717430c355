"""A whole gossipsub network of full nodes in one process, on a virtual clock.

Every node is a real :class:`~p2pnet.node.Node` (host, Noise, yamux, identify, gossipsub) on one
:class:`~p2pnet.transport.memory.MemoryNetwork`; the event loop is a
:class:`~p2pnet.sim.loop.VirtualTimeEventLoop`, so heartbeats, timeouts and the publishing
schedule cost no real time. Identities, node RNGs, the topology and the publishers all come from
one seed, and every node reads the loop's virtual clock: the same seed gives the same delivery
trace (which node got which message at which virtual time).

    report = run_gossip_simulation(GossipSimConfig(nodes=30, messages=100, seed=7))
    report.delivery_ratio, report.trace_digest()

Links have no latency (the memory transport delivers at once), so virtual delivery times measure
protocol waits only (heartbeats, gossip repair), not transmission. ``bench/gossip.py --virtual``
reports what such a run costs in real CPU time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from dataclasses import dataclass, field

from p2pnet.clock import VirtualClock
from p2pnet.config import NodeConfig
from p2pnet.crypto.keys import KeyPair
from p2pnet.node import Node
from p2pnet.pubsub.gossipsub import Pubsub, Subscription
from p2pnet.pubsub.params import GossipsubConfig
from p2pnet.sim.loop import VirtualTimeEventLoop, run_virtual
from p2pnet.transport.memory import MemoryNetwork

TOPIC = "sim"


@dataclass(frozen=True)
class GossipSimConfig:
    nodes: int = 30
    #: Every node dials this many random others (so the average degree is about twice this).
    degree: int = 4
    messages: int = 100
    #: Virtual seconds between two publications (by random nodes).
    interval: float = 0.05
    #: Bytes per message (at least 8: a counter makes each one unique).
    size: int = 64
    heartbeat: float = 1.0
    seed: int = 1
    #: Virtual seconds to wait for the meshes to form, then for every delivery.
    settle_timeout: float = 60.0
    drain_timeout: float = 60.0


@dataclass(frozen=True)
class Delivery:
    time: float  # virtual seconds since the start
    node: int
    message_id: bytes


@dataclass
class GossipSimReport:
    config: GossipSimConfig
    #: (virtual time, publisher index, message ID) in publication order
    published: list[tuple[float, int, bytes]] = field(default_factory=list)
    #: every delivery to a node's subscription (the publisher's own copy included)
    deliveries: list[Delivery] = field(default_factory=list)
    mesh_sizes: list[int] = field(default_factory=list)
    #: virtual time at which the meshes had formed, and at which the run ended
    settled_at: float = 0.0
    virtual_seconds: float = 0.0
    #: RPC frames the routers received during the publishing phase
    frames: int = 0

    @property
    def expected(self) -> int:
        return len(self.published) * self.config.nodes

    @property
    def delivery_ratio(self) -> float:
        unique = {(d.node, d.message_id) for d in self.deliveries}
        return len(unique) / self.expected if self.expected else 0.0

    @property
    def duplicates(self) -> int:
        return len(self.deliveries) - len({(d.node, d.message_id) for d in self.deliveries})

    def latencies(self) -> list[float]:
        """Virtual publish -> delivery times to the other nodes."""
        sent = {mid: (t, i) for t, i, mid in self.published}
        out = []
        for d in self.deliveries:
            t, publisher = sent[d.message_id]
            if d.node != publisher:
                out.append(d.time - t)
        return out

    def trace(self) -> list[tuple[float, int, str]]:
        return [(round(d.time, 9), d.node, d.message_id.hex()) for d in self.deliveries]

    def trace_digest(self) -> str:
        """A short fingerprint of the delivery trace: equal seeds give equal digests."""
        return hashlib.sha256(repr(self.trace()).encode()).hexdigest()[:16]


def run_gossip_simulation(config: GossipSimConfig) -> GossipSimReport:
    """Run ``config`` on a fresh virtual-time loop (like ``asyncio.run``)."""
    clock = VirtualClock()
    return run_virtual(simulate_gossip(config), clock)


async def simulate_gossip(config: GossipSimConfig) -> GossipSimReport:
    """The simulation itself; must run on a :class:`VirtualTimeEventLoop`."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualTimeEventLoop):
        raise RuntimeError("simulate_gossip needs a VirtualTimeEventLoop (run_gossip_simulation)")
    clock = loop.clock
    start = clock.monotonic()
    rng = random.Random(config.seed)
    net = MemoryNetwork()
    pubsub = GossipsubConfig(
        heartbeat_interval=config.heartbeat,
        subscription_queue_size=max(4096, 2 * config.messages),
    )
    nodes = [
        Node(
            NodeConfig(
                listen_addrs=["/memory/0"],
                identity=KeyPair.from_ed25519_seed(rng.randbytes(32)),
                enable_dht=False,
                pubsub=pubsub,
                clock=clock,
                seed=rng.getrandbits(64),
            ),
            transports=[net.transport()],
        )
        for _ in range(config.nodes)
    ]
    report = GossipSimReport(config)
    consumers: list[asyncio.Task[None]] = []
    try:
        for node in nodes:
            await node.start()
        n = len(nodes)
        for i, node in enumerate(nodes):
            for j in rng.sample([x for x in range(n) if x != i], min(config.degree, n - 1)):
                await node.connect(nodes[j].p2p_addrs()[0])
        subs = [node.subscribe(TOPIC) for node in nodes]

        all_delivered = asyncio.Event()
        target = [float("inf")]  # the number of deliveries to wait for, once all are published

        async def consume(i: int, sub: Subscription) -> None:
            async for msg in sub:
                report.deliveries.append(Delivery(clock.monotonic() - start, i, msg.id))
                if len(report.deliveries) >= target[0]:
                    all_delivered.set()

        consumers = [
            asyncio.create_task(consume(i, s), name=f"sim consumer {i}") for i, s in enumerate(subs)
        ]
        await _wait_for_meshes(nodes, pubsub, config.settle_timeout)
        report.settled_at = clock.monotonic() - start
        report.mesh_sizes = [len(_pubsub(node).mesh_peers(TOPIC)) for node in nodes]
        frames_before = _frames(nodes)
        payload = bytes(max(8, config.size))
        for k in range(config.messages):
            i = rng.randrange(n)
            result = await nodes[i].publish(TOPIC, k.to_bytes(8, "big") + payload[8:])
            report.published.append((clock.monotonic() - start, i, result.message_id))
            await asyncio.sleep(config.interval)
        target[0] = report.expected
        if len(report.deliveries) >= target[0]:
            all_delivered.set()
        # what is still missing after drain_timeout shows in delivery_ratio
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_delivered.wait(), config.drain_timeout)
        report.frames = _frames(nodes) - frames_before
        report.virtual_seconds = clock.monotonic() - start
    finally:
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        for node in nodes:
            await node.close()
    return report


def _pubsub(node: Node) -> Pubsub:
    assert node.pubsub is not None
    return node.pubsub


def _frames(nodes: list[Node]) -> int:
    return sum(_pubsub(n).router.stats.get("rpc_received", 0) for n in nodes)


async def _wait_for_meshes(nodes: list[Node], config: GossipsubConfig, timeout: float) -> None:
    """Until every node meshes with as many topic peers as it can (up to ``d_lo``)."""

    def formed(node: Node) -> bool:
        ps = _pubsub(node)
        want = min(config.d_lo, len(node.peers()))
        return len(ps.topic_peers(TOPIC)) == len(node.peers()) and len(ps.mesh_peers(TOPIC)) >= want

    # Meshes change inside the routers without a notification: look four times per heartbeat
    # (virtual time, so looking costs nothing but the check).
    async with asyncio.timeout(timeout):
        while True:
            if all(formed(node) for node in nodes):
                return
            await asyncio.sleep(config.heartbeat_interval / 4)
