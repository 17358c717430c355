"""1000 DHT servers, the whole stack (host, multistream, /plaintext/2.0.0, yamux, identify,
kad) on the memory transport and a virtual clock (p2pnet.sim): every lookup succeeds, within
about log2(N) hops, and a full lookup returns the true k closest peers. The network is built
from a seed, and the same seed gives the same run.

Nodes join the Kademlia way (connect to a node already in, look themselves up) rather than with
``bootstrap()``, whose bucket refresh opens three to four times the connections (and costs 7.8
times the CPU) of such a join; the classic k = 10, alpha = 3 keep a 1000-node network within
about a minute of CPU on a 2-core machine.
``bench/dht.py --sim`` measures both joins and the spec defaults. Figures are printed (``-s``).
"""

from __future__ import annotations

import gc
import math
import statistics
import time

from p2pnet.clock import VirtualClock
from p2pnet.kad.routing_table import distance, kad_key
from p2pnet.sim.dht import GC_THRESHOLD, DhtSimulation
from p2pnet.sim.loop import run_virtual

K = 10
ALPHA = 3


def test_1000_nodes_every_lookup_succeeds() -> None:
    n, lookups = 1000, 200
    clock = VirtualClock()

    async def main() -> None:
        async with DhtSimulation(n, seed=12, clock=clock, k=K, alpha=ALPHA) as sim:
            t0 = time.process_time()
            await sim.build(join="self_lookup")
            build_cpu = time.process_time() - t0
            result = await sim.find_peer_lookups(lookups)
            assert result.failures == [] and result.found == lookups
            log2n = math.log2(n)
            assert statistics.mean(result.hops) <= log2n / 2 and max(result.hops) <= log2n
            assert statistics.mean(result.messages) <= log2n
            ids = [x.peer_id for x in sim.nodes]
            for _ in range(3):
                asker = sim.rng.choice(sim.nodes)
                key = sim.rng.randbytes(32)
                got = await asker.dht.get_closest_peers(key)
                want = sorted(
                    (p for p in ids if p != asker.peer_id),
                    key=lambda p: distance(kad_key(p.to_bytes()), kad_key(key)),
                )[:K]
                assert got == want
            print(
                f"\n{n} nodes (k={K}, alpha={ALPHA}): {result.found}/{lookups} found, hops mean "
                f"{statistics.mean(result.hops):.2f} max {max(result.hops)}, messages mean "
                f"{statistics.mean(result.messages):.1f}, table mean "
                f"{statistics.mean(sim.table_sizes()):.0f}, connections mean "
                f"{sim.mean_connections():.0f}, build {build_cpu:.1f} s CPU, "
                f"{clock.monotonic():.1f} s virtual"
            )

    run_virtual(main(), clock)


def _fingerprint(seed: int) -> str:
    """Every lookup's cost and every routing table, as text (no hash() of str: those differ
    between processes; the same run also matches across PYTHONHASHSEED values)."""
    clock = VirtualClock()

    async def main() -> str:
        async with DhtSimulation(30, seed=seed, clock=clock, k=5, alpha=3) as sim:
            await sim.build()
            result = await sim.find_peer_lookups(30)
            assert result.found == 30
            tables = [sorted(map(str, x.dht.routing_table.peers())) for x in sim.nodes]
            return repr([(s.hops, s.messages, s.responses) for s in result.stats]) + repr(tables)

    return run_virtual(main(), clock)


def test_the_same_seed_builds_the_same_network() -> None:
    assert _fingerprint(3) == _fingerprint(3)


def test_the_collector_settings_last_only_while_the_simulation_is_open() -> None:
    clock = VirtualClock()
    threshold = gc.get_threshold()

    async def main() -> None:
        async with DhtSimulation(30, seed=4, clock=clock, k=5, alpha=3) as sim:
            await sim.build()
            assert gc.get_threshold()[0] == GC_THRESHOLD
            assert gc.get_freeze_count() > 0  # the nodes' state, out of the full collections
            assert (await sim.find_peer_lookups(10)).found == 10
        assert gc.get_freeze_count() == 0  # collectable again after the close
        assert gc.get_threshold() == threshold

    run_virtual(main(), clock)
