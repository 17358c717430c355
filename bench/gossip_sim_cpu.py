"""CPU cost of the sans-IO gossipsub routers per message, for comparing two versions.

The publishing phase of ``bench/gossip.py --sim`` (same network, seed and workload), timed with
``time.process_time`` rather than the wall clock: on a shared machine the wall clock moves with
the other jobs; CPU seconds much less. Run two versions alternately and compare the minimum::

    .venv/bin/python bench/gossip_sim_cpu.py [NODES [MESSAGES]]      # default 100 300
    PYTHONPATH=<other checkout> .venv/bin/python bench/gossip_sim_cpu.py
    .venv/bin/python bench/gossip_sim_cpu.py 100 300 --floor

``--floor`` also says what the routers' work is made of: the same run with
``PublicKey.verify`` stubbed (the routers' own work, the checks counted), and one signature
check timed alone times that count. With no connection stack and no event loop under them,
the routers' CPU per message is the least a message costs a network of full nodes in one
process that runs these routers: the figure a messages-per-second target meets or not.
"""

from __future__ import annotations

import random
import sys
import time

from p2pnet.crypto import keys
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.pubsub.params import GossipsubConfig
from p2pnet.pubsub.sim import SimNetwork

TOPIC = "bench"


def run(n: int, m: int) -> tuple[float, int, int]:
    """The publishing phase: CPU seconds, deliveries, frames."""
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
    return cpu, delivered, net.frames_sent - frames0


def run_stubbed(n: int, m: int) -> tuple[float, int]:
    """:func:`run` with every signature check answered yes at once: (CPU seconds, checks)."""
    checks = 0

    def stub(self: keys.Ed25519PublicKey, data: bytes, signature: bytes) -> bool:
        nonlocal checks
        checks += 1
        return True

    real = keys.Ed25519PublicKey.verify
    keys.Ed25519PublicKey.verify = stub  # type: ignore[method-assign]
    try:
        cpu, _, _ = run(n, m)
    finally:
        keys.Ed25519PublicKey.verify = real  # type: ignore[method-assign]
    return cpu, checks


def check_cost_us(rounds: int = 1000) -> float:
    """µs of one Ed25519 check of a 200-byte signed text: the best of seven rounds (other
    processes on the machine only ever make it slower)."""
    pair = KeyPair.generate(KeyType.Ed25519)
    data = bytes(200)
    signature = pair.private_key.sign(data)
    public = pair.public_key
    samples = []
    for _ in range(7):
        t = time.process_time()
        for _ in range(rounds):
            if not public.verify(data, signature):
                raise RuntimeError("verification failed")
        samples.append((time.process_time() - t) / rounds * 1e6)
    return min(samples)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 100
    m = int(args[1]) if len(args) > 1 else 300
    cpu, delivered, frames = run(n, m)
    print(
        f"{n} nodes, {m} messages: CPU {cpu:.2f} s, {cpu / m * 1e3:.2f} ms per message, "
        f"{delivered} deliveries, {frames} frames"
    )
    if "--floor" not in sys.argv:
        return
    stub_cpu, checks = run_stubbed(n, m)
    check_us = check_cost_us()
    checks_ms = checks * check_us / m / 1e3
    print(
        f"  checks stubbed: {stub_cpu / m * 1e3:.2f} ms per message (the routers' own work), "
        f"{checks / m:.1f} checks per message\n"
        f"  one check alone {check_us:.1f} us: {checks_ms:.2f} ms per message of checks\n"
        f"  floor: {stub_cpu / m * 1e3 + checks_ms:.2f} ms per message "
        f"= at most {m / (stub_cpu + checks * check_us / 1e6):.0f} msgs/s on one core, "
        f"before any connection stack or event loop"
    )


if __name__ == "__main__":
    main()
