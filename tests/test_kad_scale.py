"""200 DHT servers in one process on the in-memory transport: every lookup succeeds, and hops
and messages per lookup stay near log2(N).

To keep CI time down the network uses the classic Kademlia parameters k = 10, alpha = 3 (the
cost of building a network is dominated by connection setups, about k per refreshed bucket per
node); ``bench/dht.py`` measures the spec defaults (k = 20, alpha = 10) at 50, 200 and 1000
nodes. The figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time

from test_kad_dht import KadNode, close_all, make_node

from p2pnet.crypto.keys import KeyPair
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.kad.routing_table import distance, kad_key
from p2pnet.security.plaintext import PlaintextSecurity
from p2pnet.transport.memory import MemoryNetwork

N = 200
K = 10
ALPHA = 3
LOOKUPS = 100
JOIN_CONCURRENCY = 4


async def test_200_nodes_find_every_random_target() -> None:
    net = MemoryNetwork()

    def memory_host(key: KeyPair) -> Host:
        return Host(
            key,
            HostConfig(listen_addrs=["/memory/0"]),
            transports=[net.transport()],
            security=[PlaintextSecurity()],
        )

    nodes: list[KadNode] = []
    try:
        for _ in range(N):
            nodes.append(await make_node(host_factory=memory_host, k=K, alpha=ALPHA))
        boot = nodes[0].addr
        t0 = time.monotonic()
        sem = asyncio.Semaphore(JOIN_CONCURRENCY)

        async def join(node: KadNode) -> None:
            async with sem:
                await node.dht.bootstrap([boot])

        await asyncio.gather(*(join(x) for x in nodes[1:]))
        build_s = time.monotonic() - t0

        rng = random.Random(2024)
        hops: list[int] = []
        messages: list[int] = []
        for _ in range(LOOKUPS):
            asker, target = rng.sample(nodes, 2)
            info = await asker.dht.find_peer(target.peer_id, use_cache=False)
            assert info.peer == target.peer_id
            assert target.host.listen_addrs[0] in info.addrs
            stats = asker.dht.lookup_history[-1]
            assert stats.found
            hops.append(stats.hops)
            messages.append(stats.messages)

        # full lookups converge on the true k closest
        ids = [x.peer_id for x in nodes]
        for _ in range(5):
            asker = rng.choice(nodes)
            key = rng.randbytes(32)
            got = await asker.dht.get_closest_peers(key)
            want = sorted(
                (p for p in ids if p != asker.peer_id),
                key=lambda p: distance(kad_key(p.to_bytes()), kad_key(key)),
            )[:K]
            assert got == want

        log2n = math.log2(N)
        mean_hops, mean_msgs = statistics.mean(hops), statistics.mean(messages)
        table = statistics.mean(len(x.dht.routing_table) for x in nodes)
        print(
            f"\n{N} nodes (k={K}, alpha={ALPHA}): find_peer hops mean {mean_hops:.2f} "
            f"max {max(hops)}, messages mean {mean_msgs:.1f} max {max(messages)}, "
            f"log2(N) = {log2n:.1f}, routing table mean {table:.0f} peers, "
            f"built in {build_s:.1f} s"
        )
        assert mean_hops <= log2n and max(hops) <= math.ceil(log2n)
        assert mean_msgs <= log2n and max(messages) <= 3 * log2n
    finally:
        t1 = time.monotonic()
        await close_all(nodes)
        print(f"closed in {time.monotonic() - t1:.1f} s")
