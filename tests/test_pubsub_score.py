"""Peer scoring of gossipsub v1.1: every parameter P1-P7, decay, retention, validation."""

from __future__ import annotations

import random
from typing import Any

import pytest

from p2pnet.crypto.keys import KeyPair
from p2pnet.peer.peer_id import PeerID
from p2pnet.pubsub import InvalidParameters, PeerScoreParams, PeerScoreThresholds, TopicScoreParams
from p2pnet.pubsub.score import GossipTracer, PeerScore

T = "t"


def peer(i: int) -> PeerID:
    return PeerID.from_public_key(KeyPair.from_ed25519_seed(bytes(31) + bytes([i])).public_key)


A, B, C, D = (peer(i) for i in range(1, 5))


def only(**kw: float) -> TopicScoreParams:
    """Topic parameters with every weight 0 except those given."""
    base: dict[str, float] = {
        "topic_weight": 1.0,
        "time_in_mesh_weight": 0.0,
        "first_message_deliveries_weight": 0.0,
        "mesh_message_deliveries_weight": 0.0,
        "mesh_failure_penalty_weight": 0.0,
        "invalid_message_deliveries_weight": 0.0,
    }
    base.update(kw)
    return TopicScoreParams(**base)


def scorer(tp: TopicScoreParams | None = None, **kw: object) -> PeerScore:
    params = PeerScoreParams(topics={T: tp} if tp else {}, topic_score_cap=0.0, **kw)  # type: ignore[arg-type]
    params.validate()
    return PeerScore(params)


def test_p1_time_in_mesh() -> None:
    s = scorer(only(time_in_mesh_weight=0.5, time_in_mesh_quantum=2.0, time_in_mesh_cap=10.0))
    s.add_peer(A)
    s.graft(A, T, 100.0)
    assert s.score(A, 100.0) == 0.0
    assert s.score(A, 110.0) == pytest.approx(2.5)  # 10 s / 2 s quantum * 0.5
    assert s.score(A, 200.0) == pytest.approx(5.0)  # capped at 10 quanta
    s.prune(A, T, 200.0)
    assert s.score(A, 300.0) == 0.0


def test_p2_first_deliveries_capped_and_decaying() -> None:
    s = scorer(
        only(
            first_message_deliveries_weight=2.0,
            first_message_deliveries_cap=3.0,
            first_message_deliveries_decay=0.5,
        ),
        decay_to_zero=0.01,
    )
    s.add_peer(A)
    for i in range(5):
        s.validate_message(bytes([i]), 0.0)
        s.deliver_message(A, bytes([i]), T, 0.0)
    assert s.score(A, 0.0) == pytest.approx(6.0)  # capped at 3 * 2
    s.refresh(0.0)
    s.refresh(1.0)
    assert s.score(A, 1.0) == pytest.approx(3.0)


def test_p3_mesh_delivery_deficit_after_activation() -> None:
    s = scorer(
        only(
            mesh_message_deliveries_weight=-1.0,
            mesh_message_deliveries_threshold=4.0,
            mesh_message_deliveries_activation=5.0,
            mesh_message_deliveries_window=0.1,
        )
    )
    s.add_peer(A)
    s.add_peer(B)
    s.graft(A, T, 0.0)
    s.graft(B, T, 0.0)
    assert s.score(A, 4.0) == 0.0  # not active yet
    assert s.score(A, 6.0) == pytest.approx(-16.0)  # deficit 4, squared
    # B delivers first, A delivers a duplicate within the window: both count
    s.validate_message(b"m1", 6.0)
    s.deliver_message(B, b"m1", T, 6.0)
    s.duplicate_message(A, b"m1", T, 6.05)
    assert s.score(A, 6.1) == pytest.approx(-9.0)
    assert s.score(B, 6.1) == pytest.approx(-9.0)
    # a duplicate after the window does not count
    s.validate_message(b"m2", 7.0)
    s.deliver_message(B, b"m2", T, 7.0)
    s.duplicate_message(A, b"m2", T, 7.5)
    assert s.score(A, 7.5) == pytest.approx(-9.0)
    assert s.score(B, 7.5) == pytest.approx(-4.0)


def test_duplicate_during_validation_settles_with_the_verdict() -> None:
    s = scorer(
        only(
            mesh_message_deliveries_weight=-1.0,
            mesh_message_deliveries_threshold=2.0,
            mesh_message_deliveries_activation=1.0,
            invalid_message_deliveries_weight=-1.0,
        )
    )
    for p in (A, B, C):
        s.add_peer(p)
        s.graft(p, T, 0.0)
    s.validate_message(b"ok", 5.0)
    s.duplicate_message(B, b"ok", T, 5.0)  # while validating
    s.deliver_message(A, b"ok", T, 5.0)
    assert s.score(B, 5.0) == pytest.approx(-1.0)  # credited: deficit 1
    s.validate_message(b"bad", 5.0)
    s.duplicate_message(C, b"bad", T, 5.0)
    s.reject_message(A, b"bad", T, 5.0)
    assert s.breakdown(C, 5.0).topics[T]["p4"] == 1.0
    assert s.breakdown(A, 5.0).topics[T]["p4"] == 1.0
    s.duplicate_message(D, b"bad", T, 5.0)  # unknown peer: nothing happens
    s.validate_message(b"meh", 5.0)
    s.duplicate_message(C, b"meh", T, 5.0)
    s.ignore_message(b"meh", 5.0)
    assert s.breakdown(C, 5.0).topics[T]["p4"] == 1.0


def test_p3b_mesh_failure_penalty_is_sticky() -> None:
    s = scorer(
        only(
            mesh_message_deliveries_weight=-1.0,
            mesh_message_deliveries_threshold=3.0,
            mesh_message_deliveries_activation=1.0,
            mesh_failure_penalty_weight=-2.0,
            mesh_failure_penalty_decay=0.5,
        ),
        decay_to_zero=0.01,
    )
    s.add_peer(A)
    s.graft(A, T, 0.0)
    s.prune(A, T, 2.0)  # active, deficit 3: penalty 9
    assert s.score(A, 2.0) == pytest.approx(-18.0)
    s.refresh(2.0)
    s.refresh(3.0)
    assert s.score(A, 3.0) == pytest.approx(-9.0)
    # pruned before activation: no penalty
    s.add_peer(B)
    s.graft(B, T, 10.0)
    s.prune(B, T, 10.5)
    assert s.score(B, 11.0) == 0.0


def test_p4_invalid_messages_squared() -> None:
    s = scorer(only(invalid_message_deliveries_weight=-3.0))
    s.add_peer(A)
    for _ in range(3):
        s.reject_message(A, None, T, 0.0)
    assert s.score(A, 0.0) == pytest.approx(-27.0)


def test_topic_weight_and_cap() -> None:
    params = PeerScoreParams(
        topics={T: only(topic_weight=0.5, first_message_deliveries_weight=10.0)},
        topic_score_cap=20.0,
    )
    s = PeerScore(params)
    s.add_peer(A)
    s.validate_message(b"1", 0.0)
    s.deliver_message(A, b"1", T, 0.0)
    assert s.score(A, 0.0) == pytest.approx(5.0)
    for i in range(2, 10):
        s.validate_message(bytes([i]), 0.0)
        s.deliver_message(A, bytes([i]), T, 0.0)
    assert s.score(A, 0.0) == pytest.approx(20.0)  # capped
    # an unscored topic contributes nothing
    s.deliver_message(A, b"z", "other", 0.0)
    assert s.score(A, 0.0) == pytest.approx(20.0)


def test_p5_application_score() -> None:
    s = scorer(app_specific_weight=2.0, app_specific_score=lambda p: 1.0 if p == B else 0.0)
    s.add_peer(A)
    s.add_peer(B)
    s.set_app_score(A, -3.0)
    assert s.score(A, 0.0) == pytest.approx(-6.0)
    assert s.score(B, 0.0) == pytest.approx(2.0)
    with pytest.raises(InvalidParameters):
        s.set_app_score(A, float("nan"))


def test_p6_ip_colocation() -> None:
    s = scorer(
        ip_colocation_factor_weight=-1.0,
        ip_colocation_factor_threshold=2.0,
        ip_colocation_factor_whitelist=["127.0.0.0/8"],
    )
    for p in (A, B, C, D):
        s.add_peer(p, ["1.2.3.4"])
    assert s.score(A, 0.0) == pytest.approx(-4.0)  # 4 peers, threshold 2: surplus 2, squared
    s.add_peer(D, ["5.6.7.8"])  # D moved
    assert s.score(A, 0.0) == pytest.approx(-1.0)
    assert s.score(D, 0.0) == 0.0
    s2 = scorer(ip_colocation_factor_weight=-1.0, ip_colocation_factor_threshold=1.0)
    for p in (A, B, C):
        s2.add_peer(p, ["127.0.0.1"])  # loopback is whitelisted by default
    assert s2.score(A, 0.0) == 0.0


def test_p7_behaviour_penalty() -> None:
    s = scorer(
        behaviour_penalty_weight=-1.0,
        behaviour_penalty_threshold=2.0,
        behaviour_penalty_decay=0.5,
        decay_to_zero=0.01,
    )
    s.add_peer(A)
    s.add_penalty(A, 2)
    assert s.score(A, 0.0) == 0.0  # at the threshold
    s.add_penalty(A, 3)
    assert s.score(A, 0.0) == pytest.approx(-9.0)
    s.refresh(0.0)
    s.refresh(1.0)  # 5 -> 2.5: excess 0.5
    assert s.score(A, 1.0) == pytest.approx(-0.25)
    s.add_penalty(B, 100)  # unknown peer: ignored
    assert s.score(B, 1.0) == 0.0


def test_decay_to_zero_and_multiple_intervals() -> None:
    s = scorer(behaviour_penalty_weight=-1.0, behaviour_penalty_decay=0.5, decay_to_zero=0.2)
    s.add_peer(A)
    s.add_penalty(A, 1)
    s.refresh(0.0)
    s.refresh(2.5)  # two intervals: 1 -> 0.5 -> 0.25
    assert s.score(A, 2.5) == pytest.approx(-0.0625)
    s.refresh(3.0)  # 0.125 < 0.2 -> 0
    assert s.score(A, 3.0) == 0.0


def test_retention_of_negative_scores() -> None:
    s = scorer(behaviour_penalty_weight=-1.0, retain_score=10.0)
    s.add_peer(A)
    s.add_peer(B)
    s.add_penalty(A, 2)
    s.set_app_score(B, 1.0)
    s.remove_peer(A, 0.0)
    s.remove_peer(B, 0.0)
    assert not s.known(B)  # a positive score is not kept
    assert s.score(A, 5.0) == pytest.approx(-4.0)
    s.refresh(0.0)
    s.refresh(5.0)
    assert s.score(A, 5.0) == pytest.approx(-4.0)  # retained scores do not decay
    s.add_peer(A)  # reconnecting inside the window keeps the score
    assert s.score(A, 6.0) == pytest.approx(-4.0)
    s.remove_peer(A, 6.0)
    s.refresh(17.0)
    assert not s.known(A)


def test_remove_applies_mesh_failure_penalty() -> None:
    s = scorer(
        only(
            mesh_message_deliveries_weight=-1.0,
            mesh_message_deliveries_threshold=2.0,
            mesh_message_deliveries_activation=1.0,
            mesh_failure_penalty_weight=-1.0,
        )
    )
    s.add_peer(A)
    s.graft(A, T, 0.0)
    s.remove_peer(A, 5.0)
    bd = s.breakdown(A, 5.0)
    assert bd.topics[T]["p3b"] == pytest.approx(4.0)
    assert bd.total == pytest.approx(-4.0)


def test_score_params_validation() -> None:
    bad_topics = [
        {"topic_weight": -1.0},
        {"time_in_mesh_quantum": 0.0},
        {"first_message_deliveries_weight": -1.0},
        {"first_message_deliveries_decay": 1.5},
        {"mesh_message_deliveries_weight": 1.0},
        {"mesh_message_deliveries_threshold": 0.0},
        {"mesh_message_deliveries_activation": 0.0},
        {"mesh_failure_penalty_weight": 1.0},
        {"invalid_message_deliveries_weight": 1.0},
        {"invalid_message_deliveries_decay": 0.0},
    ]
    for kw in bad_topics:
        with pytest.raises(InvalidParameters):
            PeerScoreParams(topics={T: TopicScoreParams(**kw)}).validate()
    bad_global: list[dict[str, object]] = [
        {"topic_score_cap": -1.0},
        {"ip_colocation_factor_weight": 1.0},
        {"ip_colocation_factor_threshold": 0.5},
        {"ip_colocation_factor_whitelist": ["not an ip"]},
        {"behaviour_penalty_weight": 1.0},
        {"behaviour_penalty_decay": 1.0},
        {"behaviour_penalty_threshold": -1.0},
        {"decay_interval": 0.0},
        {"decay_to_zero": 0.0},
        {"retain_score": -1.0},
    ]
    for gkw in bad_global:
        with pytest.raises(InvalidParameters):
            PeerScoreParams(**gkw).validate()  # type: ignore[arg-type]
    PeerScoreParams(topics={T: TopicScoreParams()}).validate()


def test_threshold_validation() -> None:
    PeerScoreThresholds().validate()
    for kw in (
        {"gossip_threshold": 1.0},
        {"publish_threshold": -5.0},
        {"graylist_threshold": -20.0},
        {"accept_px_threshold": -1.0},
        {"opportunistic_graft_threshold": -1.0},
    ):
        with pytest.raises(InvalidParameters):
            PeerScoreThresholds(**kw).validate()


def test_gossip_tracer_promises() -> None:
    tr = GossipTracer(3.0, random.Random(1))
    tr.add_promise(A, [b"1", b"2"], 0.0)
    tr.add_promise(B, [b"3"], 0.0)
    tr.add_promise(C, [b"4"], 0.0)
    tr.fulfil(b"3")
    tr.remove_peer(C)
    assert tr.broken_promises(2.0) == {}
    assert tr.broken_promises(4.0) == {A: 1}
    assert len(tr) == 0


def test_at_least_agrees_with_a_fresh_score_through_p3_activation() -> None:
    """The graylist check (``at_least``) trusts a cached score only while time can raise it
    (P1) and not lower it (P3 activating): compared with a fresh computation at every step
    (steps longer than the score cache's 0.1 s, so that a fallback computes afresh too)."""
    tp = only(
        time_in_mesh_weight=0.5,
        time_in_mesh_quantum=1.0,
        time_in_mesh_cap=100.0,
        mesh_message_deliveries_weight=-2.0,
        mesh_message_deliveries_threshold=4.0,
        mesh_message_deliveries_activation=3.0,
        mesh_message_deliveries_window=0.01,
    )
    rng = random.Random(7)
    for threshold in (-20.0, -5.0, -1.0, 0.0, 1.0):
        s = scorer(tp)
        fresh = scorer(tp)
        computed = 0
        compute = s._compute

        def counting(*args: Any, _compute: Any = compute) -> float:
            nonlocal computed
            computed += 1
            return float(_compute(*args))

        s._compute = counting  # type: ignore[method-assign]
        for sc in (s, fresh):
            sc.add_peer(A)
            sc.graft(A, T, 0.0)
        now = 0.0
        for _ in range(200):
            now += rng.choice((0.11, 0.2, 0.5))
            if rng.random() < 0.05:
                for sc in (s, fresh):
                    sc.validate_message(b"m%f" % now, now)
                    sc.deliver_message(A, b"m%f" % now, T, now)
            fresh._peers[A].cache_version = -1  # never cached: computed every time
            assert s.at_least(A, threshold, now) == (fresh.score(A, now) >= threshold), now
        if threshold <= -5.0:  # above the threshold throughout: rarely computed
            assert computed < 30, computed
    # P3 activates at 3 s with no deliveries: a score cached before it no longer answers
    s = scorer(tp)
    s.add_peer(A)
    s.graft(A, T, 0.0)
    assert s.at_least(A, -1.0, 2.9)  # P1 1.45, P3 not active yet
    assert not s.at_least(A, -1.0, 3.5)  # P1 1.75, P3 -32
    assert s.at_least(B, 0.0, 1.0) and not s.at_least(B, 0.1, 1.0)  # unknown peers score 0


def test_at_least_with_an_application_score_function_always_asks_it() -> None:
    answers = [5.0]
    s = scorer(only(time_in_mesh_weight=1.0), app_specific_score=lambda _: answers[0])
    s.add_peer(A)
    assert s.at_least(A, 0.0, 1.0)
    answers[0] = -5.0
    assert not s.at_least(A, 0.0, 1.0 + 0.2)  # past the cache time: the function is asked again
