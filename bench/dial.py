"""Dial benchmark: how long a fresh connection to a peer takes when some of its addresses are bad.

    .venv/bin/python bench/dial.py [--dials 30]

One target host on loopback and, in the same process, a dialer that makes ``--dials`` fresh
connections (a new dialer key each time, so nothing is reused) for each case, then prints the
median and the worst time to connect:

- ``direct``: the target's one good address;
- ``refused first``: a closed port first (connection refused at once), then the good address;
- ``blackhole first``: a port that accepts and never says a word first, then the good address
  (dialled one after another this cost the whole upgrade timeout, 10 s, per dial);
- ``relayed listed first``: a ``/p2p-circuit`` address through a relay first, then the good
  direct address (the relay must not be used: the connections it got are printed).

The dials run in parallel, ranked and staggered (host/dial_ranker.py), so a bad address costs
at most its stagger (30 ms on loopback) instead of its timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
from pathlib import Path

from multiaddr import Multiaddr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pnet.crypto.keys import KeyPair
from p2pnet.host.config import HostConfig
from p2pnet.host.connection import Direction
from p2pnet.host.host import Host
from p2pnet.relay.service import RelayService
from p2pnet.relay.transport import CircuitTransport
from p2pnet.resources.limits import ResourceLimits


async def time_dials(target: Host, addrs: list[Multiaddr], dials: int) -> list[float]:
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(dials):
        async with Host(KeyPair.generate()) as dialer:
            circuit = CircuitTransport(dialer)  # so the relayed address is a candidate
            dialer.transports.append(circuit)
            await circuit.start()
            dialer.peerstore.add_addrs(target.peer_id, addrs, 60)
            t0 = loop.time()
            await dialer.connect_peer(target.peer_id)
            times.append(loop.time() - t0)
            await circuit.close()
    return times


async def main(dials: int) -> None:
    loop = asyncio.get_running_loop()
    blackhole = socket.create_server(("127.0.0.1", 0))
    blackhole.setblocking(False)
    held: list[socket.socket] = []
    loop.add_reader(blackhole.fileno(), lambda: held.append(blackhole.accept()[0]))
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    try:
        # many fresh connections from one address: above the default per-address rate limit
        limits = ResourceLimits(conn_rate_per_ip=10_000.0, conn_burst_per_ip=10_000)
        config = HostConfig(resources=limits)
        async with (
            Host(KeyPair.generate(), config) as target,
            Host(KeyPair.generate(), config) as relay,
        ):
            service = RelayService(relay)
            await service.start()
            good = target.listen_addrs
            relayed = relay.p2p_addrs()[0].encapsulate(Multiaddr("/p2p-circuit"))
            cases = {
                "direct": good,
                "refused first": [Multiaddr(f"/ip4/127.0.0.1/tcp/{closed_port}"), *good],
                "blackhole first": [
                    Multiaddr(f"/ip4/127.0.0.1/tcp/{blackhole.getsockname()[1]}"),
                    *good,
                ],
                "relayed listed first": [relayed, *good],
            }
            print(f"{'case':<22} {'median ms':>10} {'max ms':>8}  ({dials} fresh dials each)")
            for name, addrs in cases.items():
                times = await time_dials(target, addrs, dials)
                print(
                    f"{name:<22} {statistics.median(times) * 1000:>10.1f} {max(times) * 1000:>8.1f}"
                )
            inbound = relay.connections_opened[Direction.INBOUND]
            print(f"connections to the relay: {inbound}, bytes relayed: {service.bytes_relayed}")
            await service.close()
    finally:
        loop.remove_reader(blackhole.fileno())
        blackhole.close()
        for sock in held:
            sock.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dials", type=int, default=30)
    asyncio.run(main(parser.parse_args().dials))
