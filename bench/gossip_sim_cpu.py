"""CPU cost of the sans-IO gossipsub routers per message, for comparing two versions.

The publishing phase of ``bench/gossip.py --sim`` (same network, seed and workload), timed with
``time.process_time`` rather than the wall clock: on a shared machine the wall clock moves with
the other jobs; CPU seconds much less. Run two versions alternately and compare the minimum::

    .venv/bin/python bench/gossip_sim_cpu.py [NODES [MESSAGES]]      # default 100 300
    PYTHONPATH=<other checkout> .venv/bin/python bench/gossip_sim_cpu.py
"""

from __future__ import annotations

import random
import sys
import time

from p2pnet.pubsub.params import GossipsubConfig
from p2pnet.pubsub.sim import SimNetwork

TOPIC = "bench"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    m = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    net = SimNetwork(n, seed=1, config=lambda: GossipsubConfig(heartbeat_interval=0.5))
    net.connect_random(6)
    for i in range(n):
        net.subscribe(i, TOPIC)
    net.run(2.0)
    rng = random.Random(1)
    payload = bytes(128)
    frames0 = net.frames_sent
    c0 = time.process_time()
    for k in range(m):
        net.publish(rng.randrange(n), TOPIC, k.to_bytes(8, "big") + payload[8:])
        if k % 10 == 9:
            net.run(0.002)
    net.run(1.0)
    cpu = time.process_time() - c0
    delivered = sum(len(node.delivered) for node in net.nodes)
    print(
        f"{n} nodes, {m} messages: CPU {cpu:.2f} s, {cpu / m * 1e3:.2f} ms per message, "
        f"{delivered} deliveries, {net.frames_sent - frames0} frames"
    )


if __name__ == "__main__":
    main()
