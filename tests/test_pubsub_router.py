"""The sans-IO gossipsub router: feed RPCs, heartbeats and time; inspect what it sends."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from p2pnet.crypto.keys import KeyPair
from p2pnet.peer.peer_id import PeerID
from p2pnet.pubsub import (
    FLOODSUB_ID,
    MESHSUB_V10,
    MESHSUB_V11,
    MESHSUB_V12,
    DuplicateMessageError,
    GossipsubConfig,
    InvalidParameters,
    InvalidRPC,
    MessageTooLargeError,
    NoPeersError,
    PeerScoreParams,
    PeerScoreThresholds,
    SignaturePolicy,
    TopicScoreParams,
    ValidationResult,
)
from p2pnet.pubsub.messages import ValidationFailure, build_message
from p2pnet.pubsub.router import (
    BadFrame,
    ConnectPeer,
    DeliverMessage,
    GossipsubRouter,
    ValidateMessage,
)
from p2pnet.wire.pb import rpc_pb2

T = "topic"


def make_key(i: int) -> KeyPair:
    return KeyPair.from_ed25519_seed(bytes(31) + bytes([i + 1]))


def pid(key: KeyPair) -> PeerID:
    return PeerID.from_public_key(key.public_key)


class Harness:
    """One router plus remote peers identified by small integers."""

    def __init__(
        self,
        score_params: PeerScoreParams | None = None,
        thresholds: PeerScoreThresholds | None = None,
        **cfg: object,
    ) -> None:
        self.key = make_key(200)
        self.now = 0.0
        config = GossipsubConfig(**cfg)  # type: ignore[arg-type]
        self.r = GossipsubRouter(
            pid(self.key),
            config,
            score_params,
            thresholds,
            key=self.key,
            rng=random.Random(7),
        )
        self.keys: list[KeyPair] = []
        self.ids: list[PeerID] = []

    def add(
        self,
        n: int,
        protocol: str = MESHSUB_V12,
        *,
        outbound: bool = False,
        subscribe: Iterable[str] = (T,),
    ) -> list[PeerID]:
        out = []
        for _ in range(n):
            key = make_key(len(self.keys))
            p = pid(key)
            self.keys.append(key)
            self.ids.append(p)
            self.r.add_peer(
                p, protocol, outbound=outbound, ips=[f"10.0.0.{len(self.ids)}"], now=self.now
            )
            topics = list(subscribe)
            if topics:
                self.feed(p, rpc_pb2.RPC(subscriptions=[sub(t) for t in topics]))
            out.append(p)
        return out

    def key_of(self, peer: PeerID) -> KeyPair:
        return self.keys[self.ids.index(peer)]

    def feed(self, peer: PeerID, rpc: rpc_pb2.RPC) -> None:
        self.r.handle_rpc(peer, rpc.SerializeToString(), self.now)

    def sent(self) -> dict[PeerID, rpc_pb2.RPC]:
        """Everything sent since the last call, merged per peer."""
        out: dict[PeerID, rpc_pb2.RPC] = {}
        for peer, frame in self.r.take_outgoing():
            out.setdefault(peer, rpc_pb2.RPC()).MergeFromString(frame)
        return out

    def heartbeat(self, advance: float = 1.0) -> None:
        self.now += advance
        self.r.heartbeat(self.now)

    def msg(
        self, author: PeerID, data: bytes = b"x", seqno: int = 1, topic: str = T
    ) -> rpc_pb2.Message:
        return build_message(
            topic, data, policy=SignaturePolicy.STRICT_SIGN, key=self.key_of(author), seqno=seqno
        )

    def deliveries(self) -> list[bytes]:
        return [e.message.data for e in self.r.take_events() if isinstance(e, DeliverMessage)]


def sub(topic: str, subscribe: bool = True) -> rpc_pb2.RPC.SubOpts:
    return rpc_pb2.RPC.SubOpts(subscribe=subscribe, topicid=topic)


def control(**kw: object) -> rpc_pb2.RPC:
    return rpc_pb2.RPC(control=rpc_pb2.ControlMessage(**kw))  # type: ignore[arg-type]


def grafts(rpc: rpc_pb2.RPC | None) -> list[str]:
    return [] if rpc is None else [g.topicID for g in rpc.control.graft]


def prunes(rpc: rpc_pb2.RPC | None) -> list[rpc_pb2.ControlPrune]:
    return [] if rpc is None else list(rpc.control.prune)


def scored_topic(**kw: float) -> PeerScoreParams:
    return PeerScoreParams(topics={T: TopicScoreParams(**kw)})


# --------------------------------------------------------------------------------------------
# joining, greeting, subscriptions


def test_new_peer_is_greeted_with_our_subscriptions() -> None:
    h = Harness()
    h.r.join(T, 0.0)
    h.r.join("other", 0.0)
    (p,) = h.add(1, subscribe=())
    rpc = h.sent()[p]
    assert sorted((s.topicid, s.subscribe) for s in rpc.subscriptions) == [
        ("other", True),
        (T, True),
    ]


def test_join_announces_and_grafts_up_to_d() -> None:
    h = Harness()
    peers = h.add(10)
    h.sent()
    h.r.join(T, 0.0)
    out = h.sent()
    assert set(out) == set(peers)  # everyone hears the subscription
    grafted = [p for p, rpc in out.items() if grafts(rpc) == [T]]
    assert len(grafted) == 6
    assert h.r.mesh_peers(T) == set(grafted)
    for rpc in out.values():
        assert [(s.topicid, s.subscribe) for s in rpc.subscriptions] == [(T, True)]


def test_join_uses_fanout_peers_first() -> None:
    h = Harness(flood_publish=False)
    h.add(10)
    h.r.publish(T, b"hi", 0.0)
    fanout = h.r.fanout_peers(T)
    assert len(fanout) == 6
    h.r.join(T, 0.0)
    assert h.r.mesh_peers(T) == fanout
    assert h.r.fanout_peers(T) == set()


def test_subscriber_grafted_at_once_when_mesh_is_low() -> None:
    h = Harness()
    h.r.join(T, 0.0)
    h.sent()
    (p,) = h.add(1)
    assert p in h.r.mesh_peers(T)
    assert grafts(h.sent()[p]) == [T]


def test_leave_prunes_with_unsubscribe_backoff() -> None:
    h = Harness()
    peers = h.add(3)
    h.r.join(T, 0.0)
    h.sent()
    h.r.leave(T, 0.0)
    out = h.sent()
    for p in peers:
        (pr,) = prunes(out[p])
        assert pr.topicID == T and pr.backoff == 10
        assert [(s.topicid, s.subscribe) for s in out[p].subscriptions] == [(T, False)]
        assert h.r.backoff_remaining(p, T) == pytest.approx(10.0)
    assert h.r.mesh_peers(T) == set()


def test_peer_unsubscribing_leaves_mesh_and_topic() -> None:
    h = Harness()
    (p,) = h.add(1)
    h.r.join(T, 0.0)
    assert p in h.r.mesh_peers(T)
    h.feed(p, rpc_pb2.RPC(subscriptions=[sub(T, False)]))
    assert p not in h.r.mesh_peers(T)
    assert p not in h.r.topic_peers(T)


def test_remove_peer_cleans_everything() -> None:
    h = Harness()
    (p,) = h.add(1)
    h.r.join(T, 0.0)
    h.r.remove_peer(p, 0.0)
    assert h.r.mesh_peers(T) == set() and h.r.topic_peers(T) == set()
    assert p not in h.r.peers
    h.feed(p, rpc_pb2.RPC(subscriptions=[sub(T)]))  # late RPC from a removed peer: ignored
    assert h.r.topic_peers(T) == set()


def test_subscription_limits() -> None:
    h = Harness(max_topics_per_peer=3, max_topic_length=10)
    (p,) = h.add(1, subscribe=())
    h.feed(p, rpc_pb2.RPC(subscriptions=[sub("a" * 11)] + [sub(f"t{i}") for i in range(5)]))
    assert sum(1 for t in h.r.topics if p in h.r.topics[t]) == 3
    assert h.r.stats["subscriptions_refused"] == 3


# --------------------------------------------------------------------------------------------
# GRAFT / PRUNE / backoff


def test_graft_accepted_and_unknown_topic_ignored() -> None:
    h = Harness()
    (p,) = h.add(1)
    h.r.join(T, 0.0)
    h.r.mesh[T].clear()
    h.sent()
    h.feed(
        p, control(graft=[rpc_pb2.ControlGraft(topicID=T), rpc_pb2.ControlGraft(topicID="nope")])
    )
    assert p in h.r.mesh_peers(T)
    assert "nope" not in h.r.mesh
    assert h.sent() == {}  # no PRUNE for an unknown topic (spam hardening)


def test_prune_sets_backoff_and_heartbeat_respects_it() -> None:
    h = Harness()
    (p,) = h.add(1)
    h.r.join(T, 0.0)
    h.sent()
    h.feed(p, control(prune=[rpc_pb2.ControlPrune(topicID=T, backoff=5)]))
    assert p not in h.r.mesh_peers(T)
    assert h.r.backoff_remaining(p, T) == pytest.approx(5.0)
    for _ in range(5):  # 5 s of heartbeats: still backed off (+1 heartbeat of slack)
        h.heartbeat()
        assert p not in h.r.mesh_peers(T)
    h.heartbeat()
    h.heartbeat()
    assert p in h.r.mesh_peers(T)
    assert grafts(h.sent().get(p)) == [T]


def test_prune_without_backoff_uses_default() -> None:
    h = Harness(prune_backoff=30.0)
    (p,) = h.add(1)
    h.r.join(T, 0.0)
    h.feed(p, control(prune=[rpc_pb2.ControlPrune(topicID=T)]))
    assert h.r.backoff_remaining(p, T) == pytest.approx(30.0)


def test_graft_during_backoff_is_refused_and_penalised() -> None:
    h = Harness(graft_flood_threshold=10.0, prune_backoff=60.0)
    (p,) = h.add(1)
    h.r.join(T, 0.0)
    h.r.set_app_score(p, -0.1)
    h.heartbeat()  # negative score: pruned, backoff 60 s
    assert p not in h.r.mesh_peers(T)
    h.r.set_app_score(p, 0.0)
    h.sent()
    h.now += 1.0
    h.feed(p, control(graft=[rpc_pb2.ControlGraft(topicID=T)]))
    out = h.sent()
    (pr,) = prunes(out[p])
    assert pr.backoff == 60 and not pr.peers
    assert p not in h.r.mesh_peers(T)
    # penalty 1, doubled because it came within graft_flood_threshold: P7 = 2^2 * -10
    assert h.r.peer_score(p) == pytest.approx(-40.0)
    assert h.r.backoff_remaining(p, T) == pytest.approx(60.0)  # refreshed
    h.now += 20.0  # past the flood threshold, still backed off: one more penalty
    h.feed(p, control(graft=[rpc_pb2.ControlGraft(topicID=T)]))
    assert h.r.peer_score(p) == pytest.approx(-90.0)
    assert h.r.stats["graft_backoff_violation"] == 2


def test_graft_from_negative_score_peer_refused() -> None:
    h = Harness()
    (p,) = h.add(1)
    h.r.join(T, 0.0)
    h.r.mesh[T].clear()
    h.r.set_app_score(p, -1.0)
    h.sent()
    h.feed(p, control(graft=[rpc_pb2.ControlGraft(topicID=T)]))
    assert p not in h.r.mesh_peers(T)
    assert len(prunes(h.sent()[p])) == 1


def test_graft_at_dhi_only_from_outbound_peers() -> None:
    h = Harness()
    inbound = h.add(13)
    (out_peer,) = h.add(1, outbound=True)
    h.r.join(T, 0.0)
    h.r.mesh[T] = set(inbound[:12])
    late = inbound[12]
    h.sent()
    h.feed(late, control(graft=[rpc_pb2.ControlGraft(topicID=T)]))
    assert late not in h.r.mesh_peers(T)
    assert len(prunes(h.sent()[late])) == 1
    h.feed(out_peer, control(graft=[rpc_pb2.ControlGraft(topicID=T)]))
    assert out_peer in h.r.mesh_peers(T)


def test_direct_peers_never_meshed() -> None:
    h = Harness()
    (d,) = h.add(1)
    h.r.add_direct_peer(d)
    h.r.join(T, 0.0)
    assert d not in h.r.mesh_peers(T)
    h.sent()
    h.feed(d, control(graft=[rpc_pb2.ControlGraft(topicID=T)]))
    assert d not in h.r.mesh_peers(T)
    assert len(prunes(h.sent()[d])) == 1
    # but it gets every message
    (other,) = h.add(1)
    h.sent()
    h.feed(other, rpc_pb2.RPC(publish=[h.msg(other)]))
    assert len(h.sent()[d].publish) == 1


def test_direct_peer_reconnect_requested() -> None:
    h = Harness(direct_connect_ticks=3)
    d = pid(make_key(99))
    h.r.add_direct_peer(d)
    assert ConnectPeer(d, "direct") in h.r.take_events()
    for _ in range(3):
        h.heartbeat()
    assert ConnectPeer(d, "direct") in h.r.take_events()


# --------------------------------------------------------------------------------------------
# heartbeat mesh maintenance


def test_heartbeat_fills_mesh_below_dlo() -> None:
    h = Harness()
    h.add(20)
    h.r.join(T, 0.0)
    h.r.mesh[T] = set(list(h.r.mesh[T])[:2])
    h.heartbeat()
    assert len(h.r.mesh_peers(T)) == 6


def test_heartbeat_prunes_above_dhi_keeping_outbound_quota() -> None:
    h = Harness()
    inbound = h.add(14)
    outbound = h.add(2, outbound=True)
    h.r.join(T, 0.0)
    h.r.mesh[T] = set(inbound) | set(outbound)  # 16 > Dhi
    h.sent()
    h.heartbeat()
    mesh = h.r.mesh_peers(T)
    assert len(mesh) == 6
    assert set(outbound) <= mesh  # Dout = 2 outbound peers kept
    out = h.sent()
    pruned = [p for p, rpc in out.items() if prunes(rpc)]
    assert len(pruned) == 10
    for p in pruned:
        assert prunes(out[p])[0].backoff == 60
        assert h.r.backoff_remaining(p, T) == pytest.approx(60.0)


def test_heartbeat_grafts_outbound_when_quota_missing() -> None:
    h = Harness()
    h.add(6)
    outs = h.add(3, outbound=True)
    h.r.join(T, 0.0)
    h.r.mesh[T] = {p for p in h.r.mesh[T] if p not in outs}
    while len(h.r.mesh[T]) < 6:
        h.r.mesh[T].add(next(p for p in h.ids if p not in h.r.mesh[T] and p not in outs))
    h.heartbeat()
    assert len(h.r.mesh_peers(T) & set(outs)) >= 2


def test_heartbeat_prunes_negative_score_without_px() -> None:
    h = Harness(do_px=True)
    peers = h.add(8)
    h.r.join(T, 0.0)
    bad = next(iter(h.r.mesh_peers(T)))
    h.r.set_app_score(bad, -0.5)
    h.sent()
    h.heartbeat()
    assert bad not in h.r.mesh_peers(T)
    (pr,) = prunes(h.sent()[bad])
    assert not pr.peers  # no peer exchange for a peer we do not like
    assert len(peers) == 8


def test_prune_with_px_when_enabled() -> None:
    h = Harness(do_px=True)
    h.add(16)
    h.r.join(T, 0.0)
    h.r.mesh[T] = set(h.ids[:14])
    h.sent()
    h.heartbeat()
    out = h.sent()
    pruned = [p for p, rpc in out.items() if prunes(rpc)]
    assert pruned
    offered = {bytes(i.peerID) for i in prunes(out[pruned[0]])[0].peers}
    assert offered and pruned[0].to_bytes() not in offered


def test_px_followed_only_from_well_scored_peers() -> None:
    h = Harness()
    good, poor = h.add(2)
    h.r.join(T, 0.0)
    stranger = pid(make_key(150))
    info = rpc_pb2.PeerInfo(peerID=stranger.to_bytes(), signedPeerRecord=b"rec")
    h.feed(poor, control(prune=[rpc_pb2.ControlPrune(topicID=T, peers=[info])]))
    assert not [e for e in h.r.take_events() if isinstance(e, ConnectPeer)]
    h.r.set_app_score(good, 5.0)  # 50 >= accept_px_threshold 10
    h.feed(good, control(prune=[rpc_pb2.ControlPrune(topicID=T, peers=[info])]))
    assert ConnectPeer(stranger, "px", b"rec") in h.r.take_events()


def test_opportunistic_graft_when_median_score_is_low() -> None:
    h = Harness(opportunistic_graft_ticks=2, opportunistic_graft_peers=2)
    h.add(12)
    h.r.join(T, 0.0)
    outside = [p for p in h.ids if p not in h.r.mesh[T]]
    for p in outside:
        h.r.set_app_score(p, 3.0)  # 30 > median 0 and above the threshold 20
    h.heartbeat()
    h.heartbeat()
    assert len(h.r.mesh_peers(T) & set(outside)) == 2
    assert h.r.stats["opportunistic_graft"] == 2


# --------------------------------------------------------------------------------------------
# messages


def test_message_delivered_and_forwarded_to_mesh_except_source() -> None:
    h = Harness()
    peers = h.add(8)
    h.r.join(T, 0.0)
    h.sent()
    src = next(iter(h.r.mesh_peers(T)))
    h.feed(src, rpc_pb2.RPC(publish=[h.msg(peers[0], b"hello")]))
    assert h.deliveries() == [b"hello"]
    out = h.sent()
    receivers = {p for p, rpc in out.items() if rpc.publish}
    # forwarded to the mesh, not back to the sender nor to the author (peers[0])
    assert receivers == h.r.mesh_peers(T) - {src, peers[0]}


def test_forwarding_follows_mesh_and_peer_changes() -> None:
    """The sorted mesh kept between messages is recomputed when the mesh or the peers change:
    a peer pruned, grafted, or gone and back (a new connection) gets exactly what it should."""
    h = Harness()
    peers = h.add(10)
    h.r.join(T, 0.0)
    h.sent()
    author = peers[0]
    seqno = 0

    def forward_once() -> set[PeerID]:
        nonlocal seqno
        seqno += 1
        src = sorted(h.r.mesh_peers(T))[0]
        h.feed(src, rpc_pb2.RPC(publish=[h.msg(author, b"m%d" % seqno, seqno=seqno)]))
        got = {p for p, rpc in h.sent().items() if rpc.publish}
        assert got == h.r.mesh_peers(T) - {src, author}
        return got

    first = forward_once()
    assert forward_once() == first
    # the remote prunes us: it leaves the mesh at once
    gone = sorted(first)[-1]
    h.feed(gone, control(prune=[rpc_pb2.ControlPrune(topicID=T)]))
    assert gone not in forward_once()
    # a peer leaves and comes back (a new _Peer): it is grafted again and receives
    back = sorted(h.r.mesh_peers(T) - {author})[-1]
    h.r.remove_peer(back, h.now)
    assert back not in forward_once()
    h.r.add_peer(back, MESHSUB_V12, now=h.now)
    h.feed(back, rpc_pb2.RPC(subscriptions=[sub(T)]))
    h.feed(back, control(graft=[rpc_pb2.ControlGraft(topicID=T)]))
    assert back in h.r.mesh_peers(T)
    assert back in forward_once()
    # the same, with no message in between: the mesh is the same set again, the _Peer is not
    h.r.remove_peer(back, h.now)
    h.r.add_peer(back, MESHSUB_V12, now=h.now)
    h.feed(back, rpc_pb2.RPC(subscriptions=[sub(T)]))
    h.feed(back, control(graft=[rpc_pb2.ControlGraft(topicID=T)]))
    h.sent()
    assert back in forward_once()
    # a direct peer besides the mesh takes the general path, and receives too
    direct = h.add(1)[0]
    h.r.add_direct_peer(direct)
    assert direct in {p for p in forward_once_with_direct(h, author, direct)}


def forward_once_with_direct(h: Harness, author: PeerID, direct: PeerID) -> set[PeerID]:
    src = sorted(h.r.mesh_peers(T))[0]
    h.feed(src, rpc_pb2.RPC(publish=[h.msg(author, b"direct", seqno=999)]))
    got = {p for p, rpc in h.sent().items() if rpc.publish}
    assert got == (h.r.mesh_peers(T) | {direct}) - {src, author}
    return got


def test_duplicates_never_delivered_twice() -> None:
    h = Harness()
    a, b = h.add(2)
    h.r.join(T, 0.0)
    m = h.msg(a, b"once")
    h.feed(a, rpc_pb2.RPC(publish=[m, m]))
    h.feed(b, rpc_pb2.RPC(publish=[m]))
    assert h.deliveries() == [b"once"]
    assert h.r.stats["msg_duplicate"] == 2


def test_duplicate_known_by_its_bytes_is_scored_and_a_broken_frame_refused_whole() -> None:
    # Duplicates are recognised from the message cache by their bytes, without decoding: they
    # must still count for the sender's mesh deliveries (P3), and a frame whose other part is
    # undecodable must still be refused whole.
    h = Harness(scored_topic(mesh_message_deliveries_window=1.0))
    a, b = h.add(2)
    h.r.join(T, 0.0)
    assert b in h.r.mesh_peers(T)
    m = h.msg(a, b"once")
    h.feed(a, rpc_pb2.RPC(publish=[m]))
    raw = m.SerializeToString()
    assert h.r.mcache.lookup_bytes(raw) is not None
    frame = rpc_pb2.RPC(publish=[m]).SerializeToString()
    with pytest.raises(InvalidRPC):
        h.r.handle_rpc(b, frame + b"\x12\x05ab", h.now)  # a publish field cut short
    assert "msg_duplicate" not in h.r.stats
    h.r.handle_rpc(b, frame, h.now)
    assert h.r.stats["msg_duplicate"] == 1
    assert h.r.score._peers[b].topics[T].mesh_deliveries == 1
    h.r.handle_rpc(b, frame, h.now)  # the same peer again: counted once
    assert h.r.score._peers[b].topics[T].mesh_deliveries == 1
    assert h.deliveries() == [b"once"]


def test_cached_message_no_longer_seen_is_handled_in_full() -> None:
    # A seen TTL shorter than the cache's history: the bytes are still cached, the ID is no
    # longer seen, so the message is decoded, verified and delivered again (as without the cache).
    h = Harness(seen_ttl=1.0, heartbeat_interval=1.0)
    (a,) = h.add(1)
    h.r.join(T, 0.0)
    m = h.msg(a, b"again")
    h.feed(a, rpc_pb2.RPC(publish=[m]))
    h.heartbeat(2.0)
    assert len(h.r.seen) == 0
    assert h.r.mcache.lookup_bytes(m.SerializeToString()) is not None
    h.feed(a, rpc_pb2.RPC(publish=[m]))
    assert h.deliveries() == [b"again", b"again"]
    assert "msg_duplicate" not in h.r.stats


def test_message_for_unsubscribed_topic_dropped() -> None:
    h = Harness()
    (a,) = h.add(1)
    h.feed(a, rpc_pb2.RPC(publish=[h.msg(a)]))
    assert h.deliveries() == []


@pytest.mark.parametrize(
    "tamper",
    ["signature", "data", "no_signature", "no_seqno", "short_seqno", "wrong_key", "no_from"],
)
def test_invalid_messages_rejected_and_counted_p4(tamper: str) -> None:
    h = Harness(scored_topic(invalid_message_deliveries_weight=-10.0, topic_weight=1.0))
    a, b = h.add(2)
    h.r.join(T, 0.0)
    m = h.msg(a, b"payload")
    if tamper == "signature":
        m.signature = bytes(64)
    elif tamper == "data":
        m.data = b"other"
    elif tamper == "no_signature":
        m.ClearField("signature")
    elif tamper == "no_seqno":
        m.ClearField("seqno")
    elif tamper == "short_seqno":
        m.seqno = b"\x01"
    elif tamper == "wrong_key":
        m.key = make_key(77).public_key.to_protobuf()
    elif tamper == "no_from":
        m.ClearField("from_")
    h.sent()
    h.feed(b, rpc_pb2.RPC(publish=[m]))
    assert h.deliveries() == []
    assert all(not rpc.publish for rpc in h.sent().values())
    assert h.r.score.breakdown(b, h.now).topics[T]["p4"] == 1.0
    assert h.r.peer_score(b) < 0


def test_strict_no_sign_policy() -> None:
    h = Harness(signature_policy=SignaturePolicy.STRICT_NO_SIGN)
    a, b = h.add(2)
    h.r.join(T, 0.0)
    ok = build_message(T, b"anon", policy=SignaturePolicy.STRICT_NO_SIGN)
    h.feed(a, rpc_pb2.RPC(publish=[ok]))
    signed = h.msg(a, b"signed")
    h.feed(b, rpc_pb2.RPC(publish=[signed]))  # a signature is forbidden under StrictNoSign
    assert h.deliveries() == [b"anon"]
    # our own publish carries none of from/seqno/signature/key
    h.sent()
    h.r.publish(T, b"mine", h.now)
    rpc = next(iter(h.sent().values()))
    m = rpc.publish[0]
    assert not any(m.HasField(f) for f in ("from_", "seqno", "signature", "key"))


def test_validation_accept_reject_ignore() -> None:
    h = Harness(scored_topic(invalid_message_deliveries_weight=-10.0, topic_weight=1.0))
    a, b, c = h.add(3)
    h.r.join(T, 0.0)
    h.r.set_validated(T, True)
    ms = [h.msg(a, b"good", 1), h.msg(a, b"bad", 2), h.msg(a, b"meh", 3)]
    h.feed(b, rpc_pb2.RPC(publish=ms))
    h.feed(c, rpc_pb2.RPC(publish=[ms[1]]))  # a duplicate while validation is pending
    events = h.r.take_events()
    assert all(isinstance(e, ValidateMessage) for e in events) and len(events) == 3
    h.sent()
    verdicts = [ValidationResult.ACCEPT, ValidationResult.REJECT, ValidationResult.IGNORE]
    for ev, verdict in zip(events, verdicts, strict=True):
        assert isinstance(ev, ValidateMessage)
        h.r.report_validation(ev.message.id, verdict, h.now)
    assert h.deliveries() == [b"good"]
    forwarded = [bytes(m.data) for rpc in h.sent().values() for m in rpc.publish]
    assert set(forwarded) == {b"good"}
    # the rejected message counts against its sender and the duplicate's sender
    assert h.r.score.breakdown(b, h.now).topics[T]["p4"] == 1.0
    assert h.r.score.breakdown(c, h.now).topics[T]["p4"] == 1.0


def test_validation_throttled_when_too_many_pending() -> None:
    h = Harness(max_pending_validations=2)
    (a,) = h.add(1)
    h.r.join(T, 0.0)
    h.r.set_validated(T, True)
    h.feed(a, rpc_pb2.RPC(publish=[h.msg(a, b"%d" % i, i + 1) for i in range(4)]))
    assert len(h.r.take_events()) == 2
    assert h.r.stats["msg_throttled"] == 2


def test_publish_flood_respects_publish_threshold() -> None:
    h = Harness()
    peers = h.add(10)
    h.r.set_app_score(peers[0], -6.0)  # -60 < publish threshold -50
    mid = h.r.publish(T, b"flood", 0.0).message_id
    out = h.sent()
    assert {p for p, rpc in out.items() if rpc.publish} == set(peers[1:])
    assert mid == pid(h.key).to_bytes() + out[peers[1]].publish[0].seqno
    with pytest.raises(DuplicateMessageError):
        h.r.publish_message(out[peers[1]].publish[0], 0.0)


def test_publish_emits_self_delivery() -> None:
    h = Harness()
    h.r.join(T, 0.0)
    h.r.publish(T, b"me", 0.0)
    assert h.deliveries() == [b"me"]
    h2 = Harness(emit_self=False)
    h2.r.join(T, 0.0)
    h2.r.publish(T, b"me", 0.0)
    assert h2.deliveries() == []


def test_publish_too_large() -> None:
    h = Harness(max_message_size=2048)
    with pytest.raises(MessageTooLargeError):
        h.r.publish(T, bytes(4096), 0.0)


def test_fanout_expires_after_ttl() -> None:
    h = Harness(flood_publish=False, fanout_ttl=3.0)
    h.add(10)
    h.r.publish(T, b"a", 0.0)
    assert len(h.r.fanout_peers(T)) == 6
    h.heartbeat(2.0)
    assert len(h.r.fanout_peers(T)) == 6
    h.heartbeat(2.0)
    assert h.r.fanout_peers(T) == set()


def test_big_rpc_split_into_frames() -> None:
    h = Harness(max_message_size=4096)
    (p,) = h.add(1)
    for i in range(5):
        h.r.publish(T, bytes(1500) + bytes([i]), 0.0)
    frames = [f for peer, f in h.r.take_outgoing() if peer == p]
    assert len(frames) >= 3 and all(len(f) <= 4096 for f in frames)
    assert sum(len(rpc_pb2.RPC.FromString(f).publish) for f in frames) == 5


# --------------------------------------------------------------------------------------------
# gossip: IHAVE / IWANT / promises / IDONTWANT


def test_ihave_emitted_to_non_mesh_peers() -> None:
    h = Harness()
    h.add(20)
    h.r.join(T, 0.0)
    mid = h.r.publish(T, b"gossip me", 0.0).message_id
    h.sent()
    h.heartbeat()
    out = h.sent()
    ihave_to = {p for p, rpc in out.items() if rpc.control.ihave}
    assert ihave_to.isdisjoint(h.r.mesh_peers(T))
    assert len(ihave_to) == 6  # max(Dlazy, 0.25 * 14 eligible)
    for p in ihave_to:
        (ih,) = out[p].control.ihave
        assert ih.topicID == T and list(ih.messageIDs) == [mid]
    # after mcache_gossip (3) heartbeats the ID is no longer advertised
    h.heartbeat()
    h.heartbeat()
    h.sent()
    h.heartbeat()
    assert not any(rpc.control.ihave for rpc in h.sent().values())


def test_gossip_factor_scales_ihave_fanout() -> None:
    h = Harness(gossip_factor=0.5, d_lazy=2)
    h.add(30)
    h.r.join(T, 0.0)
    h.r.publish(T, b"x", 0.0)
    h.sent()
    h.heartbeat()
    assert sum(1 for rpc in h.sent().values() if rpc.control.ihave) == 12  # 0.5 * 24


def test_ihave_answered_with_iwant_for_unseen_only() -> None:
    h = Harness()
    (a,) = h.add(1)
    h.r.join(T, 0.0)
    known = h.msg(a, b"known", 1)
    h.feed(a, rpc_pb2.RPC(publish=[known]))
    known_id = a.to_bytes() + known.seqno
    new_id = b"\x01" * 40
    h.sent()
    h.feed(a, control(ihave=[rpc_pb2.ControlIHave(topicID=T, messageIDs=[known_id, new_id])]))
    (iw,) = h.sent()[a].control.iwant
    assert list(iw.messageIDs) == [new_id]
    # IHAVE for a topic we are not in is ignored
    h.feed(a, control(ihave=[rpc_pb2.ControlIHave(topicID="other", messageIDs=[b"\x02" * 40])]))
    assert h.sent() == {}


def test_broken_iwant_promise_penalised() -> None:
    h = Harness(iwant_followup_time=3.0)
    a, b = h.add(2)
    h.r.join(T, 0.0)
    h.feed(a, control(ihave=[rpc_pb2.ControlIHave(topicID=T, messageIDs=[b"\x01" * 40])]))
    m = h.msg(b, b"kept", 5)
    kept_id = b.to_bytes() + m.seqno
    h.feed(b, control(ihave=[rpc_pb2.ControlIHave(topicID=T, messageIDs=[kept_id])]))
    h.feed(b, rpc_pb2.RPC(publish=[m]))  # b keeps its promise
    h.heartbeat(2.0)
    assert h.r.peer_score(a) == 0.0
    h.heartbeat(2.0)
    assert h.r.peer_score(a) == pytest.approx(-10.0)  # P7: 1^2 * -10
    assert h.r.peer_score(b) == 0.0


def test_promises_kept_by_messages_read_together_are_all_fulfilled() -> None:
    """Three promised messages arriving in one read (taken together as a batch): every
    promise is kept, none counted as broken."""
    h = Harness(iwant_followup_time=3.0)
    (b,) = h.add(1)
    h.r.join(T, 0.0)
    msgs = [h.msg(b, b"kept", seqno) for seqno in (5, 6, 7)]
    ids = [b.to_bytes() + m.seqno for m in msgs]
    for msg_id in ids:  # one IHAVE each: one IWANT and one promise each
        h.feed(b, control(ihave=[rpc_pb2.ControlIHave(topicID=T, messageIDs=[msg_id])]))
    assert len(h.r.tracer) == 3
    h.r.handle_rpcs(b, [rpc_pb2.RPC(publish=[m]).SerializeToString() for m in msgs], h.now)
    assert h.deliveries() == [b"kept"] * 3
    assert len(h.r.tracer) == 0
    h.heartbeat(4.0)
    assert h.r.peer_score(b) == 0.0  # no broken promise (P7)


def test_iwant_answered_then_retransmission_capped_and_penalised() -> None:
    h = Harness(gossip_retransmission=3)
    (a,) = h.add(1)
    mid = h.r.publish(T, b"want me", 0.0).message_id
    h.sent()
    for i in range(3):
        h.feed(a, control(iwant=[rpc_pb2.ControlIWant(messageIDs=[mid])]))
        assert [bytes(m.data) for m in h.sent()[a].publish] == [b"want me"], i
    h.feed(a, control(iwant=[rpc_pb2.ControlIWant(messageIDs=[mid])]))
    assert h.sent() == {}
    assert h.r.peer_score(a) == pytest.approx(-10.0)


def test_idontwant_received_suppresses_forwarding() -> None:
    h = Harness()
    peers = h.add(8)
    h.r.join(T, 0.0)
    mesh = sorted(h.r.mesh_peers(T))
    src, skip = mesh[0], mesh[1]
    m = h.msg(peers[-1] if peers[-1] not in mesh else peers[0], b"big", 9)
    mid = bytes(m.from_) + m.seqno
    h.feed(skip, control(idontwant=[rpc_pb2.ControlIDontWant(messageIDs=[mid])]))
    h.sent()
    h.feed(src, rpc_pb2.RPC(publish=[m]))
    out = h.sent()
    assert skip not in out or not out[skip].publish
    assert any(rpc.publish for rpc in out.values())


def test_idontwant_sent_for_large_messages_to_v12_mesh_peers() -> None:
    h = Harness(idontwant_message_threshold=100)
    v12 = h.add(3, MESHSUB_V12)
    v11 = h.add(3, MESHSUB_V11)
    h.r.join(T, 0.0)
    h.sent()
    src = v12[0]
    big = h.msg(v11[0], bytes(200), 1)
    h.feed(src, rpc_pb2.RPC(publish=[big]))
    out = h.sent()
    got = {p for p, rpc in out.items() if rpc.control.idontwant}
    assert got == (set(v12) - {src}) & h.r.mesh_peers(T)
    small = h.msg(v11[0], b"tiny", 2)
    h.feed(src, rpc_pb2.RPC(publish=[small]))
    assert not any(rpc.control.idontwant for rpc in h.sent().values())


def test_idontwant_entries_expire_and_are_rate_limited() -> None:
    h = Harness(max_idontwant_messages=2, idontwant_ttl=2)
    (a,) = h.add(1)
    ids = [bytes([i]) * 40 for i in range(3)]
    h.feed(a, control(idontwant=[rpc_pb2.ControlIDontWant(messageIDs=ids)]))
    assert set(h.r.peers[a].dont_send) == set(ids[:2])
    h.heartbeat()
    assert len(h.r.peers[a].dont_send) == 2
    h.heartbeat()
    assert h.r.peers[a].dont_send == {}


# --------------------------------------------------------------------------------------------
# scores in the router's decisions


def test_graylisted_peer_rpcs_ignored() -> None:
    h = Harness()
    (a,) = h.add(1)
    h.r.join(T, 0.0)
    h.r.set_app_score(a, -9.0)  # -90 < graylist -80
    h.feed(a, rpc_pb2.RPC(publish=[h.msg(a, b"ignored")], subscriptions=[sub("new")]))
    assert h.deliveries() == []
    assert h.r.topic_peers("new") == set()
    assert h.r.stats["rpc_graylisted"] == 1


def test_gossip_ignored_from_and_not_sent_to_low_scorers() -> None:
    h = Harness()
    peers = h.add(10)
    h.r.join(T, 0.0)
    low = [p for p in peers if p not in h.r.mesh_peers(T)]
    for p in low:
        h.r.set_app_score(p, -2.0)  # -20 < gossip threshold -10
    h.sent()
    h.feed(low[0], control(ihave=[rpc_pb2.ControlIHave(topicID=T, messageIDs=[b"\x05" * 40])]))
    assert h.sent() == {}
    h.r.publish(T, b"m", h.now)
    h.sent()
    h.heartbeat()
    assert not any(h.sent().get(p, rpc_pb2.RPC()).control.ihave for p in low)


def test_protocol_versions() -> None:
    h = Harness()
    (old,) = h.add(1, MESHSUB_V10)
    (flood,) = h.add(1, FLOODSUB_ID)
    h.r.join(T, 0.0)
    assert flood not in h.r.mesh_peers(T)
    assert old in h.r.mesh_peers(T)
    h.sent()
    h.r.leave(T, 0.0)
    out = h.sent()
    (pr,) = prunes(out[old])
    assert not pr.HasField("backoff")  # v1.0 PRUNE carries no backoff
    assert not out[flood].HasField("control")
    # floodsub peers receive every message of their topics
    h.r.join(T, 0.0)
    h.sent()
    h.r.publish(T, b"flood", 0.0)
    assert h.sent()[flood].publish[0].data == b"flood"
    # and their control messages are ignored
    h.feed(flood, control(graft=[rpc_pb2.ControlGraft(topicID=T)]))
    assert flood not in h.r.mesh_peers(T)


def test_undecodable_rpc_raises_and_the_router_penalises() -> None:
    h = Harness()
    a, b = h.add(2)
    with pytest.raises(InvalidRPC):
        h.r.handle_rpc(a, b"\xff\xff\xff", 0.0)
    assert h.r.score.breakdown(a, h.now).behaviour_penalty < 0
    assert h.r.stats["frame_undecodable"] == 1
    # broken framing the adapter reports: counted, not penalised (limits differ between stacks)
    h.r.report_bad_frame(b, BadFrame.OVERSIZED, 0.0)
    h.r.report_bad_frame(b, BadFrame.TRUNCATED, 0.0)
    assert h.r.score.breakdown(b, h.now).behaviour_penalty == 0.0
    assert h.r.stats["frame_oversized"] == h.r.stats["frame_truncated"] == 1


def test_publish_result_and_zero_peer_policy() -> None:
    h = Harness(allow_publish_to_zero_peers=False)
    with pytest.raises(NoPeersError):
        h.r.publish("elsewhere", b"nobody", 0.0)
    assert h.r.take_outgoing() == [] and len(h.r.seen) == 0
    h.r.join(T, 0.0)  # our own subscription receives it (emit_self): not nobody
    assert h.r.publish(T, b"self only", 0.0).peers == 0
    a, b = h.add(2)
    result = h.r.publish(T, b"two", 0.0)
    assert result.recipients == {a, b} and result.peers == 2
    assert set(h.sent()) == {a, b}


def test_validator_failures_are_ignored_without_penalty() -> None:
    h = Harness(scored_topic(invalid_message_deliveries_weight=-10.0, topic_weight=1.0))
    a, b = h.add(2)
    h.r.join(T, 0.0)
    h.r.set_validated(T, True)
    h.feed(b, rpc_pb2.RPC(publish=[h.msg(a, b"slow", 1), h.msg(a, b"broken", 2)]))
    events = h.r.take_events()
    assert len(events) == 2
    h.sent()
    for ev, failure in zip(events, ValidationFailure, strict=True):
        assert isinstance(ev, ValidateMessage)
        h.r.report_validation(ev.message.id, failure, h.now)
    assert h.deliveries() == []
    assert not any(rpc.publish for rpc in h.sent().values())  # nothing forwarded
    assert h.r.score.breakdown(b, h.now).topics[T]["p4"] == 0.0
    assert h.r.stats["validation_timeout"] == h.r.stats["validation_error"] == 1
    # validation off again: new messages go straight through
    h.r.set_validated(T, False)
    h.feed(b, rpc_pb2.RPC(publish=[h.msg(a, b"direct", 3)]))
    assert h.deliveries() == [b"direct"]


def test_parameters_validated() -> None:
    with pytest.raises(InvalidParameters, match="d_lo"):
        GossipsubRouter(pid(make_key(1)), GossipsubConfig(d_lo=7), key=make_key(1))
    with pytest.raises(InvalidParameters, match="d_out"):
        GossipsubRouter(pid(make_key(1)), GossipsubConfig(d_out=5), key=make_key(1))
    with pytest.raises(InvalidParameters, match="mcache"):
        GossipsubRouter(pid(make_key(1)), GossipsubConfig(mcache_gossip=6), key=make_key(1))
    with pytest.raises(InvalidParameters, match="StrictSign"):
        GossipsubRouter(pid(make_key(1)), GossipsubConfig())
    with pytest.raises(InvalidParameters, match="publish_threshold"):
        GossipsubRouter(
            pid(make_key(1)),
            None,
            None,
            PeerScoreThresholds(publish_threshold=-5.0),
            key=make_key(1),
        )
    with pytest.raises(InvalidParameters, match="topic 'x'"):
        GossipsubRouter(
            pid(make_key(1)),
            None,
            PeerScoreParams(topics={"x": TopicScoreParams(mesh_message_deliveries_weight=1.0)}),
            key=make_key(1),
        )


def test_prune_above_dhi_keeps_the_best_scored() -> None:
    h = Harness()
    peers = h.add(16)
    h.r.join(T, 0.0)
    h.r.mesh[T] = set(peers)
    best = peers[3:7]
    for p in best:
        h.r.set_app_score(p, 1.0)
    h.heartbeat()
    assert len(h.r.mesh_peers(T)) == 6
    assert set(best) <= h.r.mesh_peers(T)  # the top d_score (4) by score stay


def test_seen_cache_ttl() -> None:
    h = Harness(seen_ttl=5.0)
    (a,) = h.add(1)
    h.r.join(T, 0.0)
    m = h.msg(a, b"again")
    h.feed(a, rpc_pb2.RPC(publish=[m]))
    h.heartbeat(2.0)
    h.feed(a, rpc_pb2.RPC(publish=[m]))
    assert h.deliveries() == [b"again"]
    assert len(h.r.seen) == 1
    h.heartbeat(4.0)  # 6 s > seen_ttl: forgotten
    assert len(h.r.seen) == 0


def test_prefixed_outgoing_frames_are_the_frames_with_their_length_prefix() -> None:
    """``take_outgoing(prefixed=True)`` (what the adapter writes) gives the same frames as
    ``take_outgoing()``, each behind its uvarint length: for greetings and grafts (control and
    subscriptions), for forwarded messages, and for frames split at ``max_message_size``."""
    from p2pnet.wire.framing import FrameDecoder

    def run(prefixed: bool) -> list[list[tuple[PeerID, bytes]]]:
        h = Harness(max_message_size=2000)
        h.r.join(T, h.now)
        rounds = [h.r.take_outgoing(prefixed=prefixed)]
        a, *_ = h.add(4)
        rounds.append(h.r.take_outgoing(prefixed=prefixed))
        for i in range(12):  # enough to split a peer's frame in two
            h.feed(a, rpc_pb2.RPC(publish=[h.msg(a, data=bytes(300), seqno=i + 1)]))
        rounds.append(h.r.take_outgoing(prefixed=prefixed))
        return rounds

    plain, prefixed = run(False), run(True)
    assert [len(r) for r in plain] == [len(r) for r in prefixed]
    assert any(len({p for p, _ in r}) < len(r) for r in plain)  # a peer got two frames
    for plain_round, prefixed_round in zip(plain, prefixed, strict=True):
        for (p1, frame), (p2, framed) in zip(plain_round, prefixed_round, strict=True):
            assert p1 == p2
            dec = FrameDecoder(max_length=4000)
            assert dec.split(framed) == [frame] and dec.buffered == 0
