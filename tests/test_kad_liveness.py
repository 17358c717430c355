"""Issue 11: dead and silent Sybils that claim DHT server mode leave the routing tables.

A small network of full nodes (host, yamux, identify, kad) on the memory transport and a virtual
clock: honest servers, plus Sybil hosts that advertise the kad protocol through identify and then
either die (their host closes: unreachable) or stay connected and never answer a kad request.
The periodic liveness check (``liveness_interval``, ``liveness_grace``, ``max_liveness_checks``)
evicts them within a bounded number of rounds, with at most one check per Sybil per node, while
every honest peer stays; afterwards no FIND_NODE answer names a Sybil.
"""

from __future__ import annotations

import asyncio

from p2pnet.clock import VirtualClock
from p2pnet.errors import P2PError
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.kad import KadConfig, Mode
from p2pnet.kad import messages as m
from p2pnet.peer.peer_id import PeerID
from p2pnet.protocols.identify import IdentifyService
from p2pnet.security.plaintext import PlaintextSecurity
from p2pnet.sim.dht import DhtSimulation, deterministic_key
from p2pnet.sim.loop import run_virtual
from p2pnet.stream import Stream

PROTO = "/ipfs/kad/1.0.0"
HONEST, SILENT, DEAD = 10, 6, 6


def test_dead_and_silent_sybils_are_evicted_without_flooding() -> None:
    clock = VirtualClock()
    kad = KadConfig(
        k=20,
        alpha=3,
        auto_refresh=False,
        mode=Mode.SERVER,
        liveness_interval=60.0,
        liveness_grace=600.0,
        max_liveness_checks=4,
        liveness_timeout=5.0,
    )
    requests_to: dict[PeerID, int] = {}

    async def main() -> None:
        async with DhtSimulation(HONEST, seed=5, clock=clock, kad=kad) as sim:
            await sim.build(join="self_lookup")
            honest = {x.peer_id for x in sim.nodes}
            sybils: list[Host] = []
            for i in range(SILENT + DEAD):
                host = Host(
                    deterministic_key(99, i),
                    HostConfig(listen_addrs=["/memory/0"]),
                    transports=[sim.network.transport()],
                    security=[PlaintextSecurity()],
                    clock=clock,
                )
                await host.start()
                IdentifyService(host)
                requests_to[host.peer_id] = 0

                async def silent(stream: Stream, me: PeerID = host.peer_id) -> None:
                    requests_to[me] += 1
                    try:
                        await stream.read()  # never answers; ends when the asker resets
                    except P2PError:
                        pass

                host.set_stream_handler(PROTO, silent)
                sybils.append(host)
                for node in sim.nodes:
                    await host.connect(node.addr)
            for node in sim.nodes:
                await node.dht.wait_until(
                    lambda n=node: all(s.peer_id in n.dht.routing_table for s in sybils)
                )
            for host in sybils[SILENT:]:
                await host.close()  # dead: unreachable from now on
            # grace (600 s) + enough rounds of 4 checks for 12 Sybils and the honest peers
            await asyncio.sleep(600 + 60 * 12)
            for node in sim.nodes:
                table = set(node.dht.routing_table.peers())
                assert table == honest - {node.peer_id}, node.peer_id
                assert node.dht.counters["evicted by liveness check"] == SILENT + DEAD
                resp = node.dht.handle_request(sim.nodes[0].peer_id, m.find_node(b"any key"))
                assert resp is not None
                named = {PeerID.from_bytes(p.id) for p in resp.closerPeers}
                assert named and not named & {s.peer_id for s in sybils}
            # no flood: each silent Sybil was asked once by each honest node, no more
            for host in sybils[:SILENT]:
                assert requests_to[host.peer_id] <= HONEST
            # honest peers answered their checks and were not checked again within the grace
            checks = [x.dht.counters["liveness checks"] for x in sim.nodes]
            assert max(checks) <= SILENT + DEAD + 2 * (HONEST - 1)
            for host in sybils[:SILENT]:
                await host.close()

    run_virtual(main(), clock)
