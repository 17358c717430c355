"""The kad-cores simulation (p2pnet/sim/kad_cores.py): real ``KadBehaviour`` cores exchanging
real encoded kad messages over a simulated network on a virtual clock. A scaled-down version of
``bench/dht.py --cores`` (10,000 nodes there): every lookup finds its target within log2(N)
hops, a full lookup returns the true k closest, the same seed gives the same run, and lookups
still succeed after a fifth of the nodes died.
"""

from __future__ import annotations

import math
import statistics

from p2pnet.kad.routing_table import distance, kad_key
from p2pnet.sim.kad_cores import KadCoreNetwork

N, K, ALPHA = 200, 10, 3


def test_bootstrap_joins_every_lookup_found_within_log2_n_hops() -> None:
    net = KadCoreNetwork(N, seed=4, k=K, alpha=ALPHA)
    net.build(join="bootstrap")
    assert min(net.table_sizes()) >= K
    result = net.find_peer_lookups(100)
    assert result.failures == [] and result.found == 100
    assert max(result.hops) <= math.log2(N)
    assert statistics.mean(result.messages) <= math.log2(N)
    ids = [x.peer_id for x in net.nodes]
    for _ in range(3):
        asker = net.rng.choice(net.nodes)
        key = net.rng.randbytes(32)
        got, stats = net.closest_lookup(asker, key)
        want = sorted(
            (p for p in ids if p != asker.peer_id),
            key=lambda p: distance(kad_key(p.to_bytes()), kad_key(key)),
        )[:K]
        assert got == want
        assert stats.messages >= K
    # the messages really travelled as bytes between the cores, and the clock moved
    assert net.requests > N * 10 and net.bytes > net.requests * 40
    assert net.clock.monotonic() > 0


def _fingerprint(seed: int) -> str:
    net = KadCoreNetwork(60, seed=seed, k=5, alpha=3)
    net.build(join="bootstrap")
    result = net.find_peer_lookups(30)
    tables = [sorted(map(str, x.behaviour.routing_table.peers())) for x in net.nodes]
    return repr([(s.hops, s.messages, s.duration) for s in result.stats]) + repr(tables)


def test_the_same_seed_gives_the_same_run() -> None:
    assert _fingerprint(2) == _fingerprint(2)
    assert _fingerprint(2) != _fingerprint(3)


def test_lookups_route_around_dead_nodes_and_tables_drop_them() -> None:
    net = KadCoreNetwork(200, seed=6, k=K, alpha=ALPHA)
    net.build(join="self_lookup")
    dead = net.rng.sample(net.nodes[1:], 40)
    for node in dead:
        net.kill(node)
    result = net.find_peer_lookups(100)
    assert result.found == 100
    assert sum(s.failures for s in result.stats) > 0  # dead peers were asked, and failed
    gone = {x.peer_id for x in dead}
    failed = [p for s in result.stats for p in s.failed_peers]
    assert failed and set(failed) <= gone
