#!/usr/bin/env python3
"""Circuit relay v2: throughput and setup of relayed connections next to direct ones.

Three nodes in one process on loopback: a relay, a target and a dialer. The target reserves a
slot on the relay (unlimited circuits for the benchmark); the dialer moves ``--mib`` MiB over one
stream to a sink on the target, once over a direct TCP connection and once through the relay
(Noise + yamux end to end, spliced by the relay), and makes ``--setups`` fresh connections of
each kind (dial + upgrade + first stream). The three nodes share one CPU core here, so the
relayed figures include the relay's own work.

    .venv/bin/python bench/circuit_relay.py
    .venv/bin/python bench/circuit_relay.py --mib 64 --setups 50
"""

from __future__ import annotations

import argparse
import asyncio
import time

from multiaddr import Multiaddr

from p2pnet.config import NodeConfig
from p2pnet.node import Node
from p2pnet.relay.reservations import RelayLimits
from p2pnet.relay.service import RelayService
from p2pnet.relay.transport import CircuitTransport
from p2pnet.stream import Stream

SINK = "/bench/sink/1.0.0"
CHUNK = 256 * 1024


def bare() -> Node:
    return Node(NodeConfig(enable_dht=False, enable_pubsub=False))


async def sink(stream: Stream) -> None:
    total = 0
    while data := await stream.read():
        total += len(data)
    await stream.write(total.to_bytes(8, "big"))
    await stream.close()


async def transfer(dialer: Node, target: Node, mib: int) -> float:
    stream = await dialer.new_stream(target.peer_id, SINK)
    block = bytes(CHUNK)
    size = mib * 1024 * 1024
    start = time.perf_counter()
    for _ in range(size // CHUNK):
        await stream.write(block)
    await stream.close()
    count = int.from_bytes(await stream.readexactly(8), "big")
    elapsed = time.perf_counter() - start
    assert count == size, (count, size)
    return size / elapsed / 1e6


async def setups(dialer: Node, addr: Multiaddr, target: Node, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await dialer.connect(addr)
        stream = await dialer.new_stream(target.peer_id, SINK)
        await stream.close()
        await stream.readexactly(8)
        await dialer.disconnect(target.peer_id)
    return (time.perf_counter() - start) / n * 1000


async def main(mib: int, n_setups: int) -> None:
    relay, target, dialer = bare(), bare(), bare()
    for node in (relay, target, dialer):
        await node.start()
    service = RelayService(relay.host, RelayLimits(duration=0, data=0))
    await service.start()
    circuits = []
    for node in (target, dialer):
        transport = CircuitTransport(node.host)
        node.host.transports.append(transport)
        await transport.start()
        circuits.append(transport)
    await target.host.listen(Multiaddr("/p2p-circuit"))
    target.set_stream_handler(SINK, sink)
    await circuits[0].reserve(relay.peer_id, relay.p2p_addrs()[0])
    p2p = Multiaddr(f"/p2p/{target.peer_id}")
    direct = target.listen_addrs[0].encapsulate(p2p)
    relayed = next(a for a in target.host.advertised_addrs if "p2p-circuit" in str(a)).encapsulate(
        p2p
    )
    try:
        rows = []
        for name, addr in (("direct", direct), ("relayed", relayed)):
            await dialer.connect(addr)
            await transfer(dialer, target, min(mib, 8))  # warm-up
            mbps = await transfer(dialer, target, mib)
            await dialer.disconnect(target.peer_id)
            ms = await setups(dialer, addr, target, n_setups)
            rows.append((name, mbps, ms))
        print(f"{'connection':<10} {'MB/s (' + str(mib) + ' MiB, 1 stream)':>26} {'setup ms':>10}")
        for name, mbps, ms in rows:
            print(f"{name:<10} {mbps:>26.1f} {ms:>10.2f}")
        print(f"relayed/direct throughput: {rows[1][1] / rows[0][1]:.2f}")
    finally:
        for transport in circuits:
            await transport.close()
        await service.close()
        for node in (dialer, target, relay):
            await node.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--setups", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.mib, args.setups))
