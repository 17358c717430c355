"""Networks of gossipsub routers in one process (p2pnet.pubsub.sim): delivery, gossip repair,
peer exchange, and attackers whose scores sink."""

from __future__ import annotations

import random
from collections import Counter

from p2pnet.pubsub import (
    GossipsubConfig,
    PeerScoreParams,
    PeerScoreThresholds,
    TopicScoreParams,
    ValidationResult,
)
from p2pnet.pubsub.messages import build_message
from p2pnet.pubsub.params import SignaturePolicy
from p2pnet.pubsub.sim import SimNetwork
from p2pnet.wire.pb import rpc_pb2

T = "topic"


def full_delivery(net: SimNetwork, ids: list[bytes], nodes: range | list[int]) -> None:
    """Every node got every message exactly once."""
    want = Counter(ids)
    for i in nodes:
        got = Counter(net.delivered_ids(i))
        assert got == want, f"node {i}: missing {len(want - got)}, extra {len(got - want)}"


def test_30_nodes_meshes_in_bounds_and_1000_messages_delivered_once() -> None:
    net = SimNetwork(30, seed=11)
    net.connect_random(5)
    for i in range(30):
        net.subscribe(i, T)
    net.run(4.0)  # a few heartbeats
    cfg = GossipsubConfig()
    sizes = net.mesh_sizes(T)
    assert all(cfg.d_lo <= s <= cfg.d_hi for s in sizes), sizes
    # meshes are symmetric: a GRAFT is answered by membership, not refused
    for node in net.nodes:
        for p in node.router.mesh_peers(T):
            assert node.peer_id in net.nodes[net.index_of(p)].router.mesh_peers(T)
    rng = random.Random(3)
    ids = []
    for k in range(100):
        for j in range(10):
            ids.append(net.publish(rng.randrange(30), T, b"msg %d" % (10 * k + j)))
        net.run(0.01)
    net.run(1.0)
    assert len(set(ids)) == 1000
    full_delivery(net, ids, range(30))
    # duplicates arrive on the wire all the time, and are never delivered twice
    assert sum(n.router.stats.get("msg_duplicate", 0) for n in net.nodes) > 1000


def test_router_network_reproducible_from_its_seed() -> None:
    def run(seed: int) -> list[list[tuple[float, bytes]]]:
        net = SimNetwork(12, seed=seed)
        net.connect_random(3)
        for i in range(12):
            net.subscribe(i, T)
        net.run(2.0)
        rng = random.Random(seed)
        for k in range(30):
            net.publish(rng.randrange(12), T, b"m%d" % k)
            net.run(0.05)
        net.run(1.0)
        return [[(t, m.id) for t, m in node.delivered] for node in net.nodes]

    first = run(21)
    assert run(21) == first
    assert run(22) != first


def test_cut_mesh_links_recovered_through_ihave_iwant() -> None:
    net = SimNetwork(30, seed=5, config=lambda: GossipsubConfig(flood_publish=False))
    net.connect_random(5)
    for i in range(30):
        net.subscribe(i, T)
    net.run(3.0)
    victims = [0, 1, 2, 3, 4]
    cut: set[tuple[int, int]] = set()
    for v in victims:
        for p in net.nodes[v].router.mesh_peers(T):
            cut.add((net.index_of(p), v))

    def drop_mesh_payloads(src: int, dst: int, data: bytes) -> bytes | None:
        if (src, dst) not in cut:
            return data
        rpc = rpc_pb2.RPC.FromString(data)
        if not rpc.publish:
            return data
        rpc.ClearField("publish")  # the full messages are lost, control still flows
        return rpc.SerializeToString() if rpc.ByteSize() else None

    net.frame_filter = drop_mesh_payloads
    rng = random.Random(9)
    publishers = [i for i in range(30) if i not in victims]
    ids = []
    for k in range(100):
        ids.append(net.publish(rng.choice(publishers), T, b"after the cut %d" % k))
        net.run(0.02)
    net.run(5.0)  # gossip windows: IHAVE at the next heartbeats, then IWANT
    full_delivery(net, ids, range(30))
    for v in victims:
        stats = net.nodes[v].router.stats
        # the victims learnt of the messages from IHAVE and fetched them with IWANT
        assert stats.get("iwant_sent", 0) > 0, stats
        assert all((net.index_of(p), v) in cut for p in net.nodes[v].router.mesh_peers(T))
    assert sum(n.router.stats.get("iwant_answered", 0) for n in net.nodes) >= 100


def test_peer_exchange_on_prune_connects_to_offered_peers() -> None:
    net = SimNetwork(
        16,
        seed=2,
        config=lambda: GossipsubConfig(do_px=True, d=4, d_lo=3, d_hi=6, d_score=2, d_out=1),
    )
    hub = 0
    for i in range(1, 16):
        net.connect(i, hub)  # a star: the leaves know only the hub
        net.nodes[i].router.set_app_score(net.nodes[hub].peer_id, 2.0)  # trust it for PX
    for i in range(16):
        net.subscribe(i, T)
    net.run(3.0)
    leaf_links = [link for link in net.links if hub not in link]
    assert leaf_links, "pruned leaves connected to peers offered in PX"
    assert sum(n.router.stats.get("px_offered", 0) for n in net.nodes) > 0
    # and they now have meshes of their own
    assert sum(1 for s in net.mesh_sizes(T)[1:] if s >= 2) >= 5


def test_invalid_message_spammer_is_graylisted() -> None:
    params = lambda: PeerScoreParams(  # noqa: E731
        topics={T: TopicScoreParams(topic_weight=1.0, invalid_message_deliveries_weight=-1.0)}
    )
    net = SimNetwork(6, seed=4, score_params=params)
    for a in range(6):
        for b in range(a + 1, 6):
            net.connect(a, b)
    for i in range(6):
        net.subscribe(i, T)
    net.run(2.0)
    attacker, victim = net.nodes[5], net.nodes[0]
    for seq in range(1, 11):  # signatures that do not verify
        bad = build_message(
            T, b"junk", policy=SignaturePolicy.STRICT_SIGN, key=attacker.key, seqno=seq
        )
        bad.signature = bytes(64)
        net.inject(5, 0, rpc_pb2.RPC(publish=[bad]))
    score = victim.router.peer_score(attacker.peer_id)
    assert score < PeerScoreThresholds().graylist_threshold  # 10 invalid: P4 = 100 * -1
    assert not victim.router.accept_from(attacker.peer_id)
    good = build_message(T, b"real", policy=SignaturePolicy.STRICT_SIGN, key=attacker.key, seqno=99)
    net.inject(5, 0, rpc_pb2.RPC(publish=[good]))
    assert victim.router.stats["rpc_graylisted"] >= 1
    assert b"real" not in [m.data for _, m in victim.delivered]
    # the victim drops the attacker from its mesh at the next heartbeat
    net.run(1.5)
    assert attacker.peer_id not in victim.router.mesh_peers(T)
    # the honest nodes still talk: a message from node 1 reaches everybody but the attacker
    mid = net.publish(1, T, b"honest")
    net.run(1.0)
    for i in range(5):
        assert mid in net.delivered_ids(i)


def test_rejecting_validator_penalises_the_sender() -> None:
    params = lambda: PeerScoreParams(  # noqa: E731
        topics={
            T: TopicScoreParams(
                topic_weight=1.0,
                invalid_message_deliveries_weight=-50.0,  # above the graylist after one
                invalid_message_deliveries_decay=0.9,
            )
        }
    )
    net = SimNetwork(3, seed=8, score_params=params)
    net.connect(0, 1)
    net.connect(1, 2)
    for i in range(3):
        net.subscribe(i, T)
    net.run(2.0)

    def no_spam(_peer: object, msg: object) -> ValidationResult:
        data = getattr(msg, "data", b"")
        return ValidationResult.REJECT if data.startswith(b"spam") else ValidationResult.ACCEPT

    net.nodes[1].validators[T] = no_spam
    net.nodes[1].router.set_validated(T, True)
    net.publish(0, T, b"spam 1")
    net.publish(0, T, b"ham")
    net.run(0.5)
    assert [m.data for _, m in net.nodes[2].delivered] == [b"ham"]  # rejected: not forwarded
    assert net.nodes[1].router.stats["msg_rejected"] == 1
    breakdown = net.nodes[1].router.score.breakdown(net.nodes[0].peer_id, net.now)
    assert breakdown.topics[T]["p4"] > 0
    assert breakdown.total < 0


def test_iwant_spammer_and_backoff_breaker_penalised() -> None:
    net = SimNetwork(4, seed=6)
    for a in range(4):
        for b in range(a + 1, 4):
            net.connect(a, b)
    for i in range(4):
        net.subscribe(i, T)
    net.run(2.0)
    victim, spammer, breaker = net.nodes[0], net.nodes[1], net.nodes[2]
    mid = net.publish(0, T, b"popular")
    net.run(0.1)
    # IWANT for the same message again and again
    for _ in range(20):
        net.inject(1, 0, rpc_pb2.RPC(control=rpc_pb2.ControlMessage(iwant=[{"messageIDs": [mid]}])))
    assert victim.router.stats["iwant_over_limit"] > 0
    assert victim.router.peer_score(spammer.peer_id) < 0  # P7
    # GRAFT right after being pruned, repeatedly
    victim.router.mesh[T].discard(breaker.peer_id)
    victim.router._add_backoff(breaker.peer_id, T, 60.0)
    for _ in range(3):
        net.inject(2, 0, rpc_pb2.RPC(control=rpc_pb2.ControlMessage(graft=[{"topicID": T}])))
    # two GRAFTs within the flood threshold: 2 penalties each, P7 = 4^2 * -10 = -160 ...
    assert victim.router.stats["graft_backoff_violation"] == 2
    assert victim.router.peer_score(breaker.peer_id) == -160.0
    assert breaker.peer_id not in victim.router.mesh_peers(T)
    # ... below the graylist threshold: the third GRAFT is not even read
    assert not victim.router.accept_from(breaker.peer_id)
    assert victim.router.stats["rpc_graylisted"] == 1


def test_ihave_without_delivery_breaks_promises() -> None:
    net = SimNetwork(3, seed=12)
    net.connect(0, 1)
    net.connect(0, 2)
    for i in range(3):
        net.subscribe(i, T)
    net.run(2.0)
    liar = net.nodes[1]
    for k in range(5):  # advertise messages that do not exist, never deliver them
        fake = [bytes([k, j]) * 20 for j in range(3)]
        ihave = rpc_pb2.ControlIHave(topicID=T, messageIDs=fake)
        net.inject(1, 0, rpc_pb2.RPC(control=rpc_pb2.ControlMessage(ihave=[ihave])))
        net.run(1.0)
    net.run(4.0)
    victim = net.nodes[0].router
    assert victim.stats["broken_promises"] >= 3
    assert victim.peer_score(liar.peer_id) < 0 or victim.stats["broken_promises"] >= 5


def test_replayed_message_delivered_once() -> None:
    net = SimNetwork(3, seed=1)
    net.connect(0, 1)
    net.connect(1, 2)
    for i in range(3):
        net.subscribe(i, T)
    net.run(2.0)
    msg = build_message(
        T, b"replay", policy=SignaturePolicy.STRICT_SIGN, key=net.nodes[2].key, seqno=5
    )
    for _ in range(5):
        net.inject(2, 1, rpc_pb2.RPC(publish=[msg, msg]))
    net.run(1.0)
    assert [m.data for _, m in net.nodes[1].delivered] == [b"replay"]
    assert [m.data for _, m in net.nodes[0].delivered] == [b"replay"]
