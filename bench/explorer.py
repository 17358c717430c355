"""What the explorer and the metrics cost: status reports per second into the explorer's view,
the time and size of the graph the page gets, and the time of one Prometheus scrape.

    .venv/bin/python bench/explorer.py                 # 2000 nodes, 50 connections each
    .venv/bin/python bench/explorer.py --nodes 500 --peers 20

Pure CPU (no network) except the scrape, which reads a real node with ``--connections`` peers
on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time

from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.explorer.view import NetworkView, ViewConfig
from p2pnet.metrics import node_registry, render
from p2pnet.node import Node
from p2pnet.peer.peer_id import PeerID


def fake_ids(n: int) -> list[str]:
    # Ed25519 IDs are cheap to make and have the same text shape as any PeerID.
    return [
        str(PeerID.from_public_key(KeyPair.generate(KeyType.Ed25519).public_key)) for _ in range(n)
    ]


def report(name: str, peers: list[str]) -> dict[str, object]:
    return {
        "name": name,
        "ethAddress": "0x" + os.urandom(20).hex(),
        "uptime": 12.5,
        "peers": len(peers),
        "mesh": {"agent-messages": 6, "node-status": 6},
        "dhtTableSize": 20,
        "messagesIn": 100,
        "messagesOut": 10,
        "rejected": 0,
        "role": "agent",
        "agentVersion": "p2pnet/0.1.0",
        "addrs": ["/ip4/127.0.0.1/tcp/4001"],
        "topics": ["agent-announcements", "agent-messages", "node-status"],
        "connectedPeers": peers,
        "meshPeers": {"agent-messages": peers[:6], "node-status": peers[:6]},
        "scores": {p: 1.0 for p in peers},
        "topicCounters": {"agent-messages": {"published": 10, "delivered": 100}},
    }


def bench_view(nodes: int, peers: int) -> None:
    ids = fake_ids(nodes)
    rng = random.Random(1)
    reports = [report(f"n{i}", rng.sample(ids, peers)) for i in range(nodes)]
    view = NetworkView(ids[0], ViewConfig(max_nodes=nodes + 10))
    sizes = [len(json.dumps(r)) for r in reports]
    t0 = time.perf_counter()
    for rounds in range(3):
        for i, (peer, rep) in enumerate(zip(ids, reports, strict=True)):
            view.on_status(peer, "0x", rep, sizes[i], rounds * 30.0 + i * 0.001)
    took = time.perf_counter() - t0
    t1 = time.perf_counter()
    graph = view.graph()
    text = json.dumps(graph)
    graph_time = time.perf_counter() - t1
    print(f"view: {nodes} nodes x {peers} peers, reports of {sum(sizes) // nodes} bytes")
    print(f"  status reports ingested: {3 * nodes / took:,.0f}/s")
    print(
        f"  graph for the page: {graph_time * 1000:.1f} ms, {len(text) / 1e6:.2f} MB, "
        f"{len(graph['edges']):,} edges"
    )


async def bench_scrape(connections: int, scrapes: int) -> None:
    async with Node() as hub:
        others = [Node() for _ in range(connections)]
        for n in others:
            await n.start()
            await n.connect(hub.p2p_addrs()[0])
        registry = node_registry(hub)
        render({"hub": registry})
        t0 = time.perf_counter()
        for _ in range(scrapes):
            data = render({"hub": registry})
        took = (time.perf_counter() - t0) / scrapes
        print(
            f"scrape: one node with {connections} connections: {took * 1000:.2f} ms, "
            f"{len(data):,} bytes"
        )
        await asyncio.gather(*(n.close() for n in others))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--peers", type=int, default=50)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--scrapes", type=int, default=50)
    args = ap.parse_args()
    bench_view(args.nodes, args.peers)
    asyncio.run(bench_scrape(args.connections, args.scrapes))


if __name__ == "__main__":
    main()
