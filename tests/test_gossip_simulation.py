"""A full-stack gossipsub network (Node, memory transport, Noise, yamux) on a virtual clock."""

from __future__ import annotations

from p2pnet.clock import VirtualClock
from p2pnet.sim.gossip_network import GossipSimConfig, run_gossip_simulation


def test_same_seed_same_delivery_trace() -> None:
    config = GossipSimConfig(nodes=30, messages=40, seed=11)
    first = run_gossip_simulation(config)
    # every node got every message exactly once (its own through emit_self)
    assert first.delivery_ratio == 1.0 and first.duplicates == 0
    assert len(first.deliveries) == 30 * 40
    assert all(4 <= size <= 12 for size in first.mesh_sizes)  # within [min peers, Dhi]
    # seqnos start from the injected clock's wall time (VirtualClock: 2026-01-01), not the host's
    seqnos = [int.from_bytes(mid[-8:], "big") for _, _, mid in first.published]
    assert all(abs(s / 1e9 - VirtualClock().time()) < 60 for s in seqnos)
    # publishing spanned several heartbeats of virtual time, at no real cost
    assert first.virtual_seconds >= 40 * config.interval
    second = run_gossip_simulation(config)
    assert second.trace() == first.trace()
    assert second.published == first.published
    assert second.mesh_sizes == first.mesh_sizes
    other = run_gossip_simulation(GossipSimConfig(nodes=30, messages=40, seed=12))
    assert other.delivery_ratio == 1.0
    assert other.trace_digest() != first.trace_digest()
