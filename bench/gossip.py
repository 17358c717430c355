"""Gossipsub benchmark: N p2pnet nodes in one process, every node subscribed to one topic.

Run from the repository root::

    .venv/bin/python bench/gossip.py                       # 10, 50 and 100 nodes over TCP
    .venv/bin/python bench/gossip.py --nodes 10 50 --messages 2000 --size 256
    .venv/bin/python bench/gossip.py --sim                 # the sans-IO routers on a virtual clock
    .venv/bin/python bench/gossip.py --virtual --nodes 20 50   # full nodes on a virtual clock

TCP mode: real hosts (TCP + Noise + yamux on 127.0.0.1) in ONE event loop, one Pubsub each
(heartbeat ``--heartbeat`` s). Every node dials ``--degree`` random others; all subscribe; after
the meshes form, random nodes publish ``--messages`` messages of ``--size`` bytes, keeping at most
``--window`` messages in flight (published and not yet delivered everywhere), so the figure is the
rate the whole network sustains. Per row:

- msgs/s: messages published / time until the last delivery,
- deliveries/s: deliveries to the application (msgs/s x (N - 1)),
- delivery: deliveries / (messages x (N - 1)) (the publisher's own copy is not counted),
- p50 / p99 latency: publish -> delivery to each other node, over all deliveries,
- frames/msg: RPC frames written per message (mesh forwarding, gossip, duplicates included),
- CPU ms/msg: CPU time of the process (every node) during the run / messages: the figure to
  compare on a shared machine, where the rate moves with other jobs,
- then ``--idle-messages`` (100) more, one at a time: p50 / p99 latency without queueing.

All nodes share one CPU core here, so the rate is that of the whole network on one core, not of
one node. ``--sim`` runs the same workload on :mod:`p2pnet.pubsub.sim` (routers without sockets,
5 ms virtual link latency): its msgs/s is router CPU cost alone and its latencies are virtual.

``--virtual`` runs :mod:`p2pnet.sim.gossip_network`: full nodes (host, Noise, yamux, identify,
gossipsub) on the memory transport in a virtual-time event loop, every node reading the loop's
clock, publishing ``--messages`` messages ``--interval`` virtual seconds apart. It prints the real
seconds the run took, the virtual seconds it covered, delivery, duplicates, frames per message
and the trace digest: the same ``--seed`` gives the same digest, run after run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p2pnet.crypto.keys import KeyPair  # noqa: E402
from p2pnet.host.config import HostConfig  # noqa: E402
from p2pnet.host.host import Host  # noqa: E402
from p2pnet.pubsub import GossipsubConfig, Pubsub, Subscription  # noqa: E402
from p2pnet.pubsub.sim import SimNetwork  # noqa: E402
from p2pnet.sim.gossip_network import GossipSimConfig, run_gossip_simulation  # noqa: E402

TOPIC = "bench"


@dataclass
class Row:
    nodes: int
    messages: int
    seconds: float
    delivered: int
    expected: int
    latencies: list[float]
    frames: int
    #: publish -> delivery with one message in flight at a time (no queueing)
    idle_latencies: list[float] | None = None
    #: CPU seconds of the whole process (all nodes) while the messages were under way
    cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float, idle: bool = False) -> float:
        data = sorted((self.idle_latencies or []) if idle else self.latencies)
        if not data:
            return float("nan")
        return data[min(len(data) - 1, int(q * len(data)))]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# TCP: real hosts in one event loop


async def run_tcp(n: int, args: argparse.Namespace) -> Row:
    rng = random.Random(args.seed)
    cfg = GossipsubConfig(
        heartbeat_interval=args.heartbeat,
        outbound_queue_size=4096,
        subscription_queue_size=1_000_000,
    )
    hosts: list[Host] = []
    nodes: list[Pubsub] = []
    try:
        for _ in range(n):
            host = Host(KeyPair.generate(), HostConfig(max_connections=10_000))
            await host.start()
            hosts.append(host)
            ps = Pubsub(host, cfg)
            await ps.start()
            nodes.append(ps)
        t0 = time.perf_counter()
        dials = []
        for i in range(n):
            for j in rng.sample([x for x in range(n) if x != i], min(args.degree, n - 1)):
                dials.append(hosts[i].connect(hosts[j].p2p_addrs()[0]))
        for k in range(0, len(dials), 64):
            await asyncio.gather(*dials[k : k + 64])
        subs = [ps.subscribe(TOPIC) for ps in nodes]
        log(f"  {n} nodes, {len(dials)} dials in {time.perf_counter() - t0:.1f} s")
        await asyncio.sleep(args.heartbeat * 4)
        sizes = [len(ps.mesh_peers(TOPIC)) for ps in nodes]
        log(f"  mesh sizes min {min(sizes)} median {statistics.median(sizes)} max {max(sizes)}")
        row = await _load(n, nodes, subs, rng, args, args.messages, args.window)
        idle = await _load(n, nodes, subs, rng, args, args.idle_messages, 1)
        row.idle_latencies = idle.latencies
        return row
    finally:
        for ps in nodes:
            await ps.close()
        await asyncio.gather(*(h.close() for h in hosts), return_exceptions=True)


async def _load(
    n: int,
    nodes: list[Pubsub],
    subs: list[Subscription],
    rng: random.Random,
    args: argparse.Namespace,
    total: int,
    in_flight: int,
) -> Row:
    sent_at: dict[bytes, float] = {}
    remaining: dict[bytes, int] = {}
    latencies: list[float] = []
    delivered = 0
    window = asyncio.Semaphore(in_flight)
    done = asyncio.Event()
    finished = 0
    loop = asyncio.get_running_loop()
    frames_before = sum(ps.router.stats.get("rpc_received", 0) for ps in nodes)

    async def consume(i: int, sub: Subscription) -> None:
        nonlocal delivered, finished
        me = nodes[i].peer_id
        while True:
            msg = await sub.get()
            if msg.from_peer == me:
                continue
            now = loop.time()
            t = sent_at.get(msg.id)
            if t is None:
                continue
            latencies.append(now - t)
            delivered += 1
            left = remaining[msg.id] - 1
            remaining[msg.id] = left
            if left == 0:
                finished += 1
                window.release()
                if finished == total:
                    done.set()

    consumers = [asyncio.create_task(consume(i, s)) for i, s in enumerate(subs)]
    payload = bytes(args.size)
    start = loop.time()
    cpu0 = time.process_time()
    try:
        for k in range(total):
            await window.acquire()
            node = nodes[rng.randrange(n)]
            data = (k + (1 << 40) * in_flight).to_bytes(8, "big") + payload[8:]
            t = loop.time()
            mid = await node.publish(TOPIC, data)
            sent_at[mid] = t
            remaining[mid] = n - 1
        try:
            await asyncio.wait_for(done.wait(), args.drain)
        except TimeoutError:
            log(f"  {total - finished} messages not delivered everywhere after {args.drain} s")
        elapsed = loop.time() - start
        cpu = time.process_time() - cpu0
    finally:
        for c in consumers:
            c.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
    frames = sum(ps.router.stats.get("rpc_received", 0) for ps in nodes) - frames_before
    return Row(n, total, elapsed, delivered, total * (n - 1), latencies, frames, cpu=cpu)


# --------------------------------------------------------------------------------------------
# sim: routers on a virtual clock


def run_sim(n: int, args: argparse.Namespace) -> Row:
    net = SimNetwork(
        n,
        seed=args.seed,
        config=lambda: GossipsubConfig(heartbeat_interval=args.heartbeat),
    )
    net.connect_random(args.degree)
    for i in range(n):
        net.subscribe(i, TOPIC)
    net.run(args.heartbeat * 4)
    rng = random.Random(args.seed)
    payload = bytes(args.size)
    sent_at: dict[bytes, float] = {}
    frames0 = net.frames_sent
    t0 = time.perf_counter()
    for k in range(args.messages):
        i = rng.randrange(n)
        mid = net.publish(i, TOPIC, k.to_bytes(8, "big") + payload[8:])
        sent_at[mid] = net.now
        if k % 10 == 9:
            net.run(0.002)
    net.run(1.0)
    elapsed = time.perf_counter() - t0
    latencies = []
    delivered = 0
    for node in net.nodes:
        for t, msg in node.delivered:
            if msg.from_peer != node.peer_id and msg.id in sent_at:
                delivered += 1
                latencies.append(t - sent_at[msg.id])
    return Row(
        n,
        args.messages,
        elapsed,
        delivered,
        args.messages * (n - 1),
        latencies,
        net.frames_sent - frames0,
    )


# --------------------------------------------------------------------------------------------
# virtual: full nodes on the memory transport, in a virtual-time event loop


def run_virtual_mode(args: argparse.Namespace) -> None:
    print(
        f"\ngossipsub, full nodes on a virtual clock (memory transport), {args.size}-byte "
        f"messages, degree {args.degree}, heartbeat {args.heartbeat} s, one every "
        f"{args.interval} virtual s, seed {args.seed}"
    )
    head = (
        "| nodes | messages | real s | virtual s | msgs/real s | delivery | duplicates "
        "| frames/msg | mesh min/max | trace digest |"
    )
    print(head)
    print("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    for n in args.nodes:
        log(f"{n} nodes ...")
        config = GossipSimConfig(
            nodes=n,
            degree=args.degree,
            messages=args.messages,
            interval=args.interval,
            size=args.size,
            heartbeat=args.heartbeat,
            seed=args.seed,
        )
        t0 = time.perf_counter()
        report = run_gossip_simulation(config)
        real = time.perf_counter() - t0
        print(
            f"| {n} | {len(report.published)} | {real:.1f} | {report.virtual_seconds:.1f} "
            f"| {len(report.published) / real:,.0f} | {100 * report.delivery_ratio:.2f} % "
            f"| {report.duplicates} | {report.frames / max(1, len(report.published)):.1f} "
            f"| {min(report.mesh_sizes)}/{max(report.mesh_sizes)} | {report.trace_digest()} |",
            flush=True,
        )


# --------------------------------------------------------------------------------------------


def print_table(rows: list[Row], mode: str, args: argparse.Namespace) -> None:
    print(
        f"\ngossipsub, {mode}, {args.size}-byte messages, degree {args.degree}, "
        f"heartbeat {args.heartbeat} s, window {args.window}"
    )
    head = (
        "| nodes | messages | msgs/s | deliveries/s | delivery | p50 latency | p99 latency "
        "| frames/msg | CPU ms/msg | p50 / p99 latency, 1 in flight |"
    )
    print(head)
    print("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    for r in rows:
        idle = (
            f"{1000 * r.percentile(0.5, True):.1f} / {1000 * r.percentile(0.99, True):.1f} ms"
            if r.idle_latencies
            else "-"
        )
        print(
            f"| {r.nodes} | {r.messages} | {r.rate:,.0f} | {r.rate * (r.nodes - 1):,.0f} "
            f"| {100 * r.delivered / max(1, r.expected):.2f} % "
            f"| {1000 * r.percentile(0.5):.1f} ms | {1000 * r.percentile(0.99):.1f} ms "
            f"| {r.frames / max(1, r.messages):.1f} "
            f"| {f'{1000 * r.cpu / r.messages:.1f}' if r.cpu else '-'} "
            f"| {idle} |"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--size", type=int, default=128, help="bytes per message (>= 8)")
    ap.add_argument("--degree", type=int, default=6, help="random dials per node")
    ap.add_argument("--window", type=int, default=50, help="messages in flight at most")
    ap.add_argument(
        "--idle-messages", type=int, default=100, help="then this many, one at a time (TCP)"
    )
    ap.add_argument("--heartbeat", type=float, default=0.5)
    ap.add_argument("--drain", type=float, default=60.0, help="seconds to wait for stragglers")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sim", action="store_true", help="sans-IO routers, no sockets")
    ap.add_argument(
        "--virtual", action="store_true", help="full nodes, memory transport, virtual clock"
    )
    ap.add_argument(
        "--interval", type=float, default=0.05, help="virtual s between messages (--virtual)"
    )
    ap.add_argument(
        "--uvloop", action="store_true", help="TCP mode on uvloop (pip install 'p2pnet[uvloop]')"
    )
    ap.add_argument(
        "--gc-threshold",
        type=int,
        default=None,
        help="generation-0 threshold of Python's garbage collector (default: Python's, 700)",
    )
    args = ap.parse_args()
    args.size = max(args.size, 8)
    if args.gc_threshold is not None:
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
    if args.uvloop:
        try:
            import uvloop  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            ap.error("--uvloop needs the extra: pip install 'p2pnet[uvloop]'")
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    logging.basicConfig(level=logging.ERROR)
    if args.virtual:
        run_virtual_mode(args)
        return 0
    rows = []
    for n in args.nodes:
        log(f"{n} nodes ...")
        row = run_sim(n, args) if args.sim else asyncio.run(run_tcp(n, args))
        log(f"  {row.rate:.0f} msgs/s, delivery {100 * row.delivered / max(1, row.expected):.2f} %")
        rows.append(row)
    mode = "sim (virtual clock)" if args.sim else "TCP + Noise + yamux, one process"
    print_table(rows, mode + (", uvloop" if args.uvloop else ""), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
