#!/usr/bin/env python3
"""Kademlia DHT benchmark: lookup latency and cost in networks of p2pnet nodes in one process.

Usage::

    .venv/bin/python bench/dht.py                          # 50, 200 and 1000 nodes
    .venv/bin/python bench/dht.py --sizes 50,200 --lookups 500 --k 20 --alpha 10
    .venv/bin/python bench/dht.py --sizes 50 --transport tcp   # loopback TCP + Noise
    .venv/bin/python bench/dht.py --sim --sizes 1000,2000 --k 10 --alpha 3 --join self_lookup
    .venv/bin/python bench/dht.py --cores --sizes 1000,10000 --k 10 --alpha 3 --join bootstrap

For each size N the benchmark starts N DHT servers (host + identify + KadDHT; by default on the
in-memory transport with /plaintext/2.0.0, ``--transport tcp`` for loopback TCP + Noise), lets
each join through the first node with ``bootstrap()`` (connect, self lookup, refresh of the
sparse buckets), then runs ``--lookups`` find_peer lookups for random targets from random nodes
with ``use_cache=False`` (always through the network, never answered from the asker's own table
or connections), one after the other. Printed per N: build time, success rate, hops and
messages per lookup (mean, p50, p95, max) next to log2(N), lookup latency percentiles, the mean
routing table size and connections per node, and a get_closest_peers row (full convergence on
the k closest, which costs at least k messages).

``--sim`` runs the same measurement as a simulation (``p2pnet.sim.dht.DhtSimulation``): the full
stack on the memory transport, on a virtual clock (``p2pnet.sim.loop``), every identity, join
order and RNG from ``--seed``, so a run repeats exactly. Timers cost no real time; figures are
CPU seconds of the build and of the lookups (``time.process_time``, steadier than wall time on
a shared machine), peak RSS, and the virtual time that passed. The memory transport has no
latency, so lookup latency is not a figure there. ``--join`` picks how nodes join:
``bootstrap`` (KadDHT.bootstrap) or ``self_lookup`` (connect, identify, self lookup).
The simulation keeps the nodes' state out of the collector's full collections
(``gc.freeze()`` every 50 joins); ``--no-gc-freeze`` runs without that.

``--cores`` simulates larger networks (``p2pnet.sim.kad_cores.KadCoreNetwork``): the real sans-IO
``KadBehaviour`` of every node and the real ``Lookup`` state machine, exchanging real encoded kad
messages over a simulated network (``--latency`` per message, plus up to ``--jitter``) on a
virtual clock; no hosts, connections, yamux or identify (a first request "connects" two nodes
and each learns the other's protocols, as identify would). Same seed, same run. Its rows say
``cores`` in the mode column; the full-stack rows say ``full stack``.

Progress goes to stderr, the table to stdout. Figures depend on the machine: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pnet.clock import VirtualClock
from p2pnet.crypto.keys import KeyPair
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.kad import KadConfig, KadDHT, LookupStats
from p2pnet.protocols.identify import IdentifyService
from p2pnet.security.plaintext import PlaintextSecurity
from p2pnet.sim.dht import DhtSimulation
from p2pnet.sim.kad_cores import KadCoreNetwork
from p2pnet.sim.loop import run_virtual
from p2pnet.transport.memory import MemoryNetwork


@dataclass
class Node:
    host: Host
    dht: KadDHT


@dataclass
class Result:
    n: int
    transport: str
    build_s: float
    table: float
    conns: float
    find: list[LookupStats] = field(default_factory=list)
    find_ok: int = 0
    closest: list[LookupStats] = field(default_factory=list)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def build(n: int, args: argparse.Namespace) -> list[Node]:
    net = MemoryNetwork()
    nodes: list[Node] = []
    for _ in range(n):
        if args.transport == "memory":
            host = Host(
                KeyPair.generate(),
                HostConfig(listen_addrs=["/memory/0"]),
                transports=[net.transport()],
                security=[PlaintextSecurity()],
            )
        else:
            host = Host(KeyPair.generate())
        await host.start()
        identify = IdentifyService(host)
        cfg = KadConfig(k=args.k, alpha=args.alpha, auto_refresh=False)
        dht = KadDHT(host, identify, cfg)
        await dht.start()
        nodes.append(Node(host, dht))
    sem = asyncio.Semaphore(args.join_concurrency)
    rng = random.Random(args.seed)
    joined = [nodes[0]]
    done = 0

    async def join(node: Node) -> None:
        # through a random node already in (not always the first: in a loaded event loop a
        # single hub's upgrades queue up past the timeout); a failed join is retried
        nonlocal done
        async with sem:
            for attempt in range(3):
                via = rng.choice(joined)
                try:
                    await node.dht.bootstrap(via.host.p2p_addrs()[:1])
                    break
                except Exception as exc:  # a benchmark reports, it does not stop
                    log(f"  join via {via.host.peer_id} failed ({exc!r}), attempt {attempt + 1}")
            joined.append(node)
        done += 1
        if done % max(1, n // 10) == 0:
            log(f"  {done}/{n - 1} joined")

    await asyncio.gather(*(join(x) for x in nodes[1:]))
    return nodes


async def run_size(n: int, args: argparse.Namespace) -> Result:
    log(f"N={n}: building ({args.transport})")
    t0 = time.perf_counter()
    nodes = await build(n, args)
    build_s = time.perf_counter() - t0
    res = Result(
        n=n,
        transport=args.transport,
        build_s=build_s,
        table=statistics.mean(len(x.dht.routing_table) for x in nodes),
        conns=statistics.mean(len(x.host.connections()) for x in nodes),
    )
    log(f"N={n}: built in {build_s:.1f} s; {args.lookups} find_peer lookups")
    rng = random.Random(args.seed)
    for _ in range(args.lookups):
        a, b = rng.sample(nodes, 2)
        try:
            info = await a.dht.find_peer(b.host.peer_id, use_cache=False)
            res.find_ok += int(info.peer == b.host.peer_id and bool(info.addrs))
        except Exception as exc:  # a failed lookup is a figure here, not a crash
            log(f"  lookup failed: {exc!r}")
        res.find.append(a.dht.lookup_history[-1])
    for _ in range(args.closest):
        a = rng.choice(nodes)
        await a.dht.get_closest_peers(rng.randbytes(32))
        res.closest.append(a.dht.lookup_history[-1])
    log(f"N={n}: closing")
    await asyncio.gather(*(x.dht.close() for x in nodes))
    await asyncio.gather(*(x.host.close() for x in nodes), return_exceptions=True)
    return res


def row(label: str, n: int, stats: list[LookupStats], ok: int | None) -> str:
    hops = [float(s.hops) for s in stats]
    msgs = [float(s.messages) for s in stats]
    lat = [s.duration * 1000 for s in stats]
    okcol = f"{ok}/{len(stats)}" if ok is not None else "-"
    return (
        f"| {n} | {label} | {okcol} | {statistics.mean(hops):.2f} / {pct(hops, 50):.0f} / "
        f"{pct(hops, 95):.0f} / {max(hops):.0f} | {statistics.mean(msgs):.1f} / "
        f"{pct(msgs, 50):.0f} / {pct(msgs, 95):.0f} / {max(msgs):.0f} | {math.log2(n):.1f} | "
        f"{pct(lat, 50):.1f} / {pct(lat, 90):.1f} / {pct(lat, 99):.1f} |"
    )


def sim_size(n: int, args: argparse.Namespace) -> bool:
    """One simulated network of ``n`` nodes; prints its row, returns whether every lookup
    succeeded."""
    clock = VirtualClock()

    async def run() -> bool:
        sim = DhtSimulation(
            n,
            seed=args.seed,
            clock=clock,
            k=args.k,
            alpha=args.alpha,
            security=args.security,
            join_concurrency=args.join_concurrency,
            gc_freeze=not args.no_gc_freeze,
        )
        async with sim:
            log(f"N={n}: simulating ({args.join} join, {args.security})")
            c0 = time.process_time()
            await sim.start_nodes()
            c1 = time.process_time()
            await sim.build(join=args.join)
            c2 = time.process_time()
            built_at = clock.monotonic()
            log(f"N={n}: built in {c2 - c1:.1f} s CPU; {args.lookups} find_peer lookups")
            res = await sim.find_peer_lookups(args.lookups)
            c3 = time.process_time()
            closest: list[LookupStats] = []
            for _ in range(args.closest):
                a = sim.rng.choice(sim.nodes)
                await a.dht.get_closest_peers(sim.rng.randbytes(32))
                closest.append(a.dht.lookup_history[-1])
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            hops = [float(h) for h in res.hops]
            msgs = [float(x) for x in res.messages]
            cmsgs = [float(s.messages) for s in closest] or [float("nan")]
            print(
                f"| {n} | full stack | {args.k}/{args.alpha} | {args.join} | "
                f"{res.found}/{res.lookups} | "
                f"{statistics.mean(hops):.2f} / {pct(hops, 95):.0f} / {max(hops):.0f} | "
                f"{statistics.mean(msgs):.1f} / {pct(msgs, 95):.0f} / {max(msgs):.0f} | "
                f"{statistics.mean(cmsgs):.1f} | {math.log2(n):.1f} | "
                f"{statistics.mean(sim.table_sizes()):.1f} | {sim.mean_connections():.1f} | "
                f"{c1 - c0:.1f} | {c2 - c1:.1f} | {(c3 - c2) / max(1, args.lookups) * 1000:.1f} | "
                f"{built_at:.1f} | {rss:.0f} |",
                flush=True,
            )
            t0 = time.process_time()
            log(f"N={n}: closing")
        log(f"N={n}: closed in {time.process_time() - t0:.1f} s CPU")
        return res.found == res.lookups

    return run_virtual(run(), clock)


def cores_size(n: int, args: argparse.Namespace) -> bool:
    """One network of ``n`` kad cores; prints its row, returns whether every lookup succeeded."""
    log(f"N={n}: kad cores ({args.join} join)")
    c0 = time.process_time()
    net = KadCoreNetwork(
        n, seed=args.seed, k=args.k, alpha=args.alpha, latency=args.latency, jitter=args.jitter
    )
    c1 = time.process_time()
    net.build(join=args.join, join_concurrency=args.join_concurrency)
    c2 = time.process_time()
    built_at = net.clock.monotonic()
    log(f"N={n}: built in {c2 - c1:.1f} s CPU; {args.lookups} find_peer lookups")
    res = net.find_peer_lookups(args.lookups)
    c3 = time.process_time()
    closest = [net.closest_lookup(net.rng.choice(net.nodes), net.rng.randbytes(32))[1]
               for _ in range(args.closest)]  # fmt: skip
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hops = [float(h) for h in res.hops]
    msgs = [float(x) for x in res.messages]
    cmsgs = [float(s.messages) for s in closest] or [float("nan")]
    print(
        f"| {n} | cores | {args.k}/{args.alpha} | {args.join} | {res.found}/{res.lookups} | "
        f"{statistics.mean(hops):.2f} / {pct(hops, 95):.0f} / {max(hops):.0f} | "
        f"{statistics.mean(msgs):.1f} / {pct(msgs, 95):.0f} / {max(msgs):.0f} | "
        f"{statistics.mean(cmsgs):.1f} | {math.log2(n):.1f} | "
        f"{statistics.mean(net.table_sizes()):.1f} | {net.mean_connections():.1f} | "
        f"{c1 - c0:.1f} | {c2 - c1:.1f} | {(c3 - c2) / max(1, args.lookups) * 1000:.1f} | "
        f"{built_at:.1f} | {rss:.0f} |",
        flush=True,
    )
    return res.found == res.lookups


def sim_main(args: argparse.Namespace) -> int:
    if args.cores:
        print(
            f"DHT simulation: kad cores on a simulated network ({args.latency * 1000:.0f} ms "
            f"+ up to {args.jitter * 1000:.0f} ms per message), virtual clock, seed {args.seed}\n"
        )
    else:
        print(
            f"DHT simulation: full stack (memory transport, {args.security}), virtual clock, "
            f"seed {args.seed}\n"
        )
    print(
        "| N | mode | k/alpha | join | found | hops mean / p95 / max | messages mean / p95 / max "
        "| closest msgs | log2 N | table | conns/node | start CPU s | build CPU s "
        "| CPU ms/lookup | virtual s | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for size in args.sizes.split(","):
        run = cores_size if args.cores else sim_size
        ok = run(int(size), args) and ok
    return 0 if ok else 1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="50,200,1000", help="network sizes, comma-separated")
    p.add_argument("--lookups", type=int, default=200, help="find_peer lookups per size")
    p.add_argument("--closest", type=int, default=20, help="get_closest_peers lookups per size")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--alpha", type=int, default=10)
    p.add_argument("--transport", choices=["memory", "tcp"], default="memory")
    p.add_argument("--join-concurrency", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sim", action="store_true", help="simulate: virtual clock, seeded")
    p.add_argument("--join", choices=["bootstrap", "self_lookup"], default="bootstrap")
    p.add_argument("--security", choices=["plaintext", "noise"], default="plaintext")
    p.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="--sim: let full collections rescan every node's state (see p2pnet/sim/dht.py)",
    )
    p.add_argument(
        "--cores", action="store_true", help="kad cores on a simulated network (10,000+ nodes)"
    )
    p.add_argument("--latency", type=float, default=0.010, help="--cores: seconds per message")
    p.add_argument("--jitter", type=float, default=0.005, help="--cores: extra random delay")
    return p.parse_args()


async def main(args: argparse.Namespace) -> int:
    print(f"DHT lookups, k={args.k}, alpha={args.alpha}, transport={args.transport}\n")
    print(
        "| N | lookup | found | hops mean / p50 / p95 / max | messages mean / p50 / p95 / max "
        "| log2 N | latency ms p50 / p90 / p99 | build s | table | conns/node |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    results: list[Result] = []
    for size in args.sizes.split(","):
        r = await run_size(int(size), args)
        results.append(r)
        extra = f" {r.build_s:.1f} | {r.table:.1f} | {r.conns:.1f} |"
        print(row("find_peer", r.n, r.find, r.find_ok) + extra, flush=True)
        if r.closest:
            print(row("get_closest_peers", r.n, r.closest, None) + " | | |", flush=True)
    return 0 if all(r.find_ok == len(r.find) for r in results) else 1


if __name__ == "__main__":
    arguments = parse_args()
    simulated = arguments.sim or arguments.cores
    sys.exit(sim_main(arguments) if simulated else asyncio.run(main(arguments)))
