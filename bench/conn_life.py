#!/usr/bin/env python3
"""The CPU of one connection's life in the DHT: dial, upgrade, yamux, identify both ways, one
kad request, close.

Usage::

    .venv/bin/python bench/conn_life.py                     # 1000 connections
    .venv/bin/python bench/conn_life.py --conns 2000 --count --security noise

One hub and ``--conns`` clients, every one a full node (host, identify, KadDHT: the hub a
server, the clients in client mode, so that they stay out of the hub's table and no liveness
check of a full bucket dials them again) in one process on the memory transport and a
virtual clock (``/plaintext/2.0.0`` by default,
``--security noise`` for Noise). Each client, at most ``--concurrency`` at a time, connects to
the hub, waits until both sides identified each other, sends the hub one FIND_NODE and closes
the connection (``--keep``: keeps it, so the hub ends with every client connected). Printed:
CPU ms per connection (``time.process_time`` of the whole process, both ends; the garbage
collector's generation-0 threshold raised as in ``p2pnet.sim.dht``), the collector's share,
peak RSS, and with ``--count`` the event-loop callbacks (``call_soon``), timers (``call_at``),
tasks and futures per connection. Repeat a run to see the noise; compare CPU, not wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import random
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pnet.clock import VirtualClock
from p2pnet.crypto.keys import Ed25519PrivateKey, KeyPair
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.kad import messages as m
from p2pnet.kad.config import KadConfig, Mode
from p2pnet.kad.dht import KadDHT
from p2pnet.protocols.identify import IdentifyService
from p2pnet.security.base import SecurityTransport
from p2pnet.security.noise_connection import NoiseSecurity
from p2pnet.security.plaintext import PlaintextSecurity
from p2pnet.sim.dht import GC_THRESHOLD
from p2pnet.sim.loop import VirtualTimeEventLoop, run_virtual
from p2pnet.transport.memory import MemoryNetwork

COUNTS: Counter[str] = Counter()


def count_loop_calls() -> None:
    """Count what the loop is asked to schedule (patched on the virtual loop class)."""
    loop_cls: Any = VirtualTimeEventLoop
    call_soon, call_at = loop_cls.call_soon, loop_cls.call_at
    create_task, create_future = loop_cls.create_task, loop_cls.create_future

    def counted(name: str, fn: Any) -> Any:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            COUNTS[name] += 1
            return fn(self, *args, **kwargs)

        return wrapper

    loop_cls.call_soon = counted("callbacks", call_soon)
    loop_cls.call_at = counted("timers", call_at)
    loop_cls.create_task = counted("tasks", create_task)
    loop_cls.create_future = counted("futures", create_future)


def make_key(i: int) -> KeyPair:
    return KeyPair(Ed25519PrivateKey(hashlib.sha256(f"conn_life/{i}".encode()).digest()))


async def run(args: argparse.Namespace, clock: VirtualClock) -> None:
    net = MemoryNetwork()

    def security() -> list[SecurityTransport]:
        return [NoiseSecurity()] if args.security == "noise" else [PlaintextSecurity()]

    nodes: list[tuple[Host, IdentifyService, KadDHT]] = []
    for i in range(args.conns + 1):
        host = Host(
            make_key(i),
            HostConfig(listen_addrs=["/memory/0"], max_connections=args.conns + 10),
            transports=[net.transport()],
            security=security(),
            clock=clock,
        )
        await host.start()
        identify = IdentifyService(host)
        # the clients in client mode: they stay out of the hub's routing table, so that no
        # full bucket makes the hub check (and dial again) a client that left
        mode = Mode.SERVER if i == 0 else Mode.CLIENT
        config = KadConfig(k=10, alpha=3, auto_refresh=False, mode=mode)
        dht = KadDHT(host, identify, config, clock=clock, rng=random.Random(i))
        await dht.start()
        nodes.append((host, identify, dht))
    hub, hub_identify, _ = nodes[0]
    hub_addr = hub.p2p_addrs()[0]
    sem = asyncio.Semaphore(args.concurrency)

    async def one(host: Host, identify: IdentifyService, dht: KadDHT) -> None:
        async with sem:
            conn = await host.connect(hub_addr)
            await identify.wait_identified(hub.peer_id)
            await hub_identify.wait_identified(host.peer_id)
            resp = await dht._rpc(hub.peer_id, m.find_node(host.peer_id.to_bytes()))
            assert resp is not None and resp.type == m.FIND_NODE
            if not args.keep:
                await conn.close()

    gc_time = [0.0, 0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_time[1] = time.process_time()
        else:
            gc_time[0] += time.process_time() - gc_time[1]

    COUNTS.clear()
    gc.callbacks.append(on_gc)
    t0 = time.process_time()
    await asyncio.gather(*(one(*x) for x in nodes[1:]))
    if not args.keep:  # until the hub saw every connection end
        ended = asyncio.Event()
        hub.on_disconnected(lambda _: None if hub.connections() else ended.set())
        if hub.connections():
            await ended.wait()
    cpu = time.process_time() - t0
    gc.callbacks.remove(on_gc)
    n = args.conns
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{n} connections ({args.security}, {'kept' if args.keep else 'closed'}): "
        f"{cpu * 1000 / n:.3f} ms CPU per connection, collector {100 * gc_time[0] / cpu:.0f} %, "
        f"peak RSS {rss:.0f} MiB"
    )
    if args.count:
        per = ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(COUNTS.items()))
        print(f"per connection: {per}")
    await asyncio.gather(*(x[0].close() for x in nodes), return_exceptions=True)
    await asyncio.gather(*(x[2].close() for x in nodes), return_exceptions=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--conns", type=int, default=1000, help="connections (clients)")
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--security", choices=["plaintext", "noise"], default="plaintext")
    p.add_argument("--keep", action="store_true", help="keep the connections open")
    p.add_argument("--count", action="store_true", help="count loop callbacks, timers, tasks")
    args = p.parse_args()
    if args.count:
        count_loop_calls()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    clock = VirtualClock()
    run_virtual(run(args, clock), clock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
