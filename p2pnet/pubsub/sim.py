"""An in-process network of gossipsub routers on a virtual clock, without sockets.

Each node is a :class:`GossipsubRouter`; RPC frames travel between them with a configurable
latency. Time advances in small ticks: frames due in a tick are handed to their routers, then every
router's output is collected (so messages published or forwarded in one tick share RPCs, as they
would on a real connection), and heartbeats fire on each node's own schedule. Validators are plain
functions. The tests and ``bench/gossip.py --sim`` drive networks of tens to hundreds of nodes this
way, deterministically from a seed: keys, router RNGs, seqnos, link delays and heartbeat phases all
derive from it. (:mod:`p2pnet.sim.gossip_network` runs whole nodes instead of bare routers.)
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pnet.crypto.keys import KeyPair
from p2pnet.peer.peer_id import PeerID
from p2pnet.pubsub.messages import Message, ValidationResult
from p2pnet.pubsub.params import MESHSUB_V12, GossipsubConfig
from p2pnet.pubsub.router import ConnectPeer, DeliverMessage, GossipsubRouter, ValidateMessage
from p2pnet.pubsub.score import PeerScoreParams, PeerScoreThresholds
from p2pnet.wire.pb import rpc_pb2

SimValidator = Callable[[PeerID, Message], ValidationResult]
FrameFilter = Callable[[int, int, bytes], bytes | None]


@dataclass
class SimNode:
    index: int
    key: KeyPair
    peer_id: PeerID
    router: GossipsubRouter
    ip: str
    #: (time, message) of every delivery to the application
    delivered: list[tuple[float, Message]] = field(default_factory=list)
    validators: dict[str, SimValidator] = field(default_factory=dict)
    next_heartbeat: float = 0.0


class SimNetwork:
    """``n`` routers that can be connected pairwise; see the module docstring."""

    def __init__(
        self,
        n: int,
        *,
        config: Callable[[], GossipsubConfig] | None = None,
        score_params: Callable[[], PeerScoreParams] | None = None,
        thresholds: Callable[[], PeerScoreThresholds] | None = None,
        seed: int = 1,
        latency: float = 0.005,
        jitter: float = 0.002,
        tick: float = 0.001,
        distinct_ips: bool = True,
    ) -> None:
        self.rng = random.Random(seed)
        self.latency = latency
        self.jitter = jitter
        self.tick = tick
        self.now = 0.0
        self.nodes: list[SimNode] = []
        self.links: dict[tuple[int, int], str] = {}
        self._queue: list[tuple[float, int, int, int, bytes]] = []
        self._seq = itertools.count()
        self.frames_sent = 0
        self.bytes_sent = 0
        #: Called for every frame (src, dst, data); return None to drop it or new bytes.
        self.frame_filter: FrameFilter | None = None
        self._index: dict[PeerID, int] = {}
        for i in range(n):
            key = KeyPair.from_ed25519_seed(self.rng.randbytes(32))
            pid = PeerID.from_public_key(key.public_key)
            cfg = config() if config else GossipsubConfig()
            router = GossipsubRouter(
                pid,
                cfg,
                score_params() if score_params else None,
                thresholds() if thresholds else None,
                key=key,
                rng=random.Random(self.rng.getrandbits(64)),
                seqno_start=(i + 1) << 32,  # unique per node, without a wall clock
            )
            ip = f"10.{i // 250}.{i % 250}.1" if distinct_ips else "10.0.0.1"
            node = SimNode(i, key, pid, router, ip)
            node.next_heartbeat = cfg.heartbeat_initial_delay + self.rng.random() * (
                cfg.heartbeat_interval
            )
            self.nodes.append(node)
            self._index[pid] = i

    def index_of(self, peer: PeerID) -> int:
        return self._index[peer]

    # -- topology ----------------------------------------------------------------------------

    def connect(self, a: int, b: int, protocol: str = MESHSUB_V12) -> None:
        """``a`` dials ``b``; both routers learn of each other (``protocol`` on both sides)."""
        if a == b or (a, b) in self.links or (b, a) in self.links:
            return
        self.links[(a, b)] = protocol
        na, nb = self.nodes[a], self.nodes[b]
        na.router.add_peer(nb.peer_id, protocol, outbound=True, ips=[nb.ip], now=self.now)
        nb.router.add_peer(na.peer_id, protocol, outbound=False, ips=[na.ip], now=self.now)
        self._flush(na)
        self._flush(nb)

    def disconnect(self, a: int, b: int) -> None:
        self.links.pop((a, b), None)
        self.links.pop((b, a), None)
        na, nb = self.nodes[a], self.nodes[b]
        na.router.remove_peer(nb.peer_id, self.now)
        nb.router.remove_peer(na.peer_id, self.now)

    def connected(self, a: int, b: int) -> bool:
        return (a, b) in self.links or (b, a) in self.links

    def connect_random(self, degree: int) -> None:
        """Each node dials ``degree`` random others (so the average degree is about 2x)."""
        n = len(self.nodes)
        for a in range(n):
            for b in self.rng.sample([x for x in range(n) if x != a], min(degree, n - 1)):
                self.connect(a, b)

    # -- application -------------------------------------------------------------------------

    def subscribe(self, i: int, topic: str) -> None:
        self.nodes[i].router.join(topic, self.now)
        self._flush(self.nodes[i])

    def unsubscribe(self, i: int, topic: str) -> None:
        self.nodes[i].router.leave(topic, self.now)
        self._flush(self.nodes[i])

    def publish(self, i: int, topic: str, data: bytes) -> bytes:
        node = self.nodes[i]
        msg_id = node.router.publish(topic, data, self.now).message_id
        self._flush(node)
        return msg_id

    def inject(self, src: int, dst: int, rpc: rpc_pb2.RPC) -> None:
        """Deliver a hand-made RPC from ``src`` to ``dst`` now (attack tests)."""
        self._handle(self.nodes[dst], self.nodes[src].peer_id, rpc.SerializeToString())

    # -- the clock ---------------------------------------------------------------------------

    def run(self, duration: float) -> None:
        self.run_until(self.now + duration)

    def run_until(self, t_end: float) -> None:
        while self.now < t_end:
            t = self.now + self.tick
            due: dict[int, list[tuple[int, bytes]]] = {}
            q = self._queue
            while q and q[0][0] <= t:
                _, _, src, dst, data = heapq.heappop(q)
                due.setdefault(dst, []).append((src, data))
            self.now = t
            touched: set[int] = set()
            for dst, frames in due.items():
                node = self.nodes[dst]
                for src, data in frames:
                    if not self.connected(src, dst):
                        continue
                    node.router.handle_rpc(self.nodes[src].peer_id, data, t)
                touched.add(dst)
            for node in self.nodes:
                if node.next_heartbeat <= t:
                    node.router.heartbeat(t)
                    node.next_heartbeat += node.router.config.heartbeat_interval
                    touched.add(node.index)
            for i in touched:
                self._flush(self.nodes[i])

    def _handle(self, node: SimNode, src: PeerID, data: bytes) -> None:
        node.router.handle_rpc(src, data, self.now)
        self._flush(node)

    def _flush(self, node: SimNode) -> None:
        router = node.router
        for _ in range(100):  # validators may produce more output
            events = router.take_events()
            for ev in events:
                if isinstance(ev, DeliverMessage):
                    node.delivered.append((self.now, ev.message))
                elif isinstance(ev, ValidateMessage):
                    fn = node.validators.get(ev.message.topic)
                    verdict = (
                        ValidationResult.ACCEPT
                        if fn is None
                        else fn(ev.message.received_from, ev.message)
                    )
                    router.report_validation(ev.message.id, verdict, self.now)
                elif isinstance(ev, ConnectPeer):
                    target = self._index.get(ev.peer)
                    if target is not None and ev.reason == "px":
                        self.connect(node.index, target)
            if not events:
                break
        index = self._index
        # sorted by node (stable: frames to one peer keep their order), for reproducible runs
        for peer, data in sorted(router.take_outgoing(), key=lambda f: index[f[0]]):
            dst = index[peer]
            if self.frame_filter is not None:
                filtered = self.frame_filter(node.index, dst, data)
                if filtered is None:
                    continue
                data = filtered
            self.frames_sent += 1
            self.bytes_sent += len(data)
            delay = self.latency + self.rng.random() * self.jitter
            heapq.heappush(self._queue, (self.now + delay, next(self._seq), node.index, dst, data))

    # -- inspection --------------------------------------------------------------------------

    def delivered_ids(self, i: int) -> list[bytes]:
        return [m.id for _, m in self.nodes[i].delivered]

    def mesh_sizes(self, topic: str) -> list[int]:
        return [len(n.router.mesh.get(topic, ())) for n in self.nodes]
