"""Peer scoring of gossipsub v1.1 (pubsub/gossipsub/gossipsub-v1.1.md, "Peer Scoring").

    score = TopicCap(sum over topics of topic_weight * (w1 P1 + w2 P2 + w3 P3 + w3b P3b + w4 P4))
            + w5 P5 + w6 P6 + w7 P7

P1 time in mesh, P2 first message deliveries, P3 mesh message delivery deficit (squared, once
active), P3b mesh failure penalty (sticky, added at prune), P4 invalid messages (squared), P5
application score, P6 IP colocation surplus (squared), P7 behaviour penalty (squared excess).
Counters decay multiplicatively every ``decay_interval``; a disconnected peer's score is kept for
``retain_score`` (unless positive). Time is passed in (``now``, seconds): the class does no IO.

The spec gives no default weights. Ours are those of js @libp2p/gossipsub and rust-libp2p
(thresholds -10/-50/-80, accept-PX 10, opportunistic graft 20; P6 -5 over 10 peers per IP; P7 -10
with decay 0.2), except that loopback addresses are exempt from P6 by default so that local
devnets and tests work. Topics are only scored when ``PeerScoreParams.topics`` has parameters
for them.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import repeat
from typing import cast

from p2pnet.peer.peer_id import PeerID
from p2pnet.pubsub.errors import InvalidParameters

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: A score is recomputed after this long even if nothing changed (P1 grows with time).
SCORE_CACHE_TIME = 0.1


def _fail(what: str) -> None:
    raise InvalidParameters(what)


@dataclass
class TopicScoreParams:
    """Per-topic parameters (P1-P4). Durations in seconds."""

    topic_weight: float = 0.5
    # P1: time in mesh
    time_in_mesh_weight: float = 1.0
    time_in_mesh_quantum: float = 1.0
    time_in_mesh_cap: float = 3600.0
    # P2: first message deliveries
    first_message_deliveries_weight: float = 1.0
    first_message_deliveries_decay: float = 0.5
    first_message_deliveries_cap: float = 2000.0
    # P3: mesh message deliveries
    mesh_message_deliveries_weight: float = -1.0
    mesh_message_deliveries_decay: float = 0.5
    mesh_message_deliveries_cap: float = 100.0
    mesh_message_deliveries_threshold: float = 20.0
    mesh_message_deliveries_window: float = 0.01
    mesh_message_deliveries_activation: float = 5.0
    # P3b: mesh failure penalty
    mesh_failure_penalty_weight: float = -1.0
    mesh_failure_penalty_decay: float = 0.5
    # P4: invalid messages
    invalid_message_deliveries_weight: float = -1.0
    invalid_message_deliveries_decay: float = 0.3

    def validate(self) -> None:
        if self.topic_weight < 0:
            _fail("topic_weight must be >= 0")
        if self.time_in_mesh_weight < 0:
            _fail("time_in_mesh_weight must be >= 0")
        if self.time_in_mesh_quantum <= 0:
            _fail("time_in_mesh_quantum must be > 0")
        if self.time_in_mesh_weight != 0 and self.time_in_mesh_cap <= 0:
            _fail("time_in_mesh_cap must be > 0")
        if self.first_message_deliveries_weight < 0:
            _fail("first_message_deliveries_weight must be >= 0")
        if self.first_message_deliveries_weight != 0:
            if not 0 < self.first_message_deliveries_decay < 1:
                _fail("first_message_deliveries_decay must be in (0, 1)")
            if self.first_message_deliveries_cap <= 0:
                _fail("first_message_deliveries_cap must be > 0")
        if self.mesh_message_deliveries_weight > 0:
            _fail("mesh_message_deliveries_weight must be <= 0")
        if self.mesh_message_deliveries_weight != 0:
            if not 0 < self.mesh_message_deliveries_decay < 1:
                _fail("mesh_message_deliveries_decay must be in (0, 1)")
            if self.mesh_message_deliveries_cap <= 0:
                _fail("mesh_message_deliveries_cap must be > 0")
            if self.mesh_message_deliveries_threshold <= 0:
                _fail("mesh_message_deliveries_threshold must be > 0")
            if self.mesh_message_deliveries_window < 0:
                _fail("mesh_message_deliveries_window must be >= 0")
            if self.mesh_message_deliveries_activation <= 0:
                _fail("mesh_message_deliveries_activation must be > 0")
        if self.mesh_failure_penalty_weight > 0:
            _fail("mesh_failure_penalty_weight must be <= 0")
        if self.mesh_failure_penalty_weight != 0 and not 0 < self.mesh_failure_penalty_decay < 1:
            _fail("mesh_failure_penalty_decay must be in (0, 1)")
        if self.invalid_message_deliveries_weight > 0:
            _fail("invalid_message_deliveries_weight must be <= 0")
        if not 0 < self.invalid_message_deliveries_decay < 1:
            _fail("invalid_message_deliveries_decay must be in (0, 1)")


def default_topic_score_params() -> TopicScoreParams:
    """What a topic without its own parameters scores: only P4, invalid messages.

    Without it a peer could flood a topic nobody configured with invalid messages at no cost.
    Every other weight is 0, so silence or mesh churn on such a topic costs nothing. Nine invalid
    messages in a row take a peer below the default graylist threshold (-80); the counter decays
    by 10 % per decay interval.
    """
    return TopicScoreParams(
        topic_weight=1.0,
        time_in_mesh_weight=0.0,
        first_message_deliveries_weight=0.0,
        mesh_message_deliveries_weight=0.0,
        mesh_failure_penalty_weight=0.0,
        invalid_message_deliveries_weight=-1.0,
        invalid_message_deliveries_decay=0.9,
    )


def _default_whitelist() -> list[str]:
    return ["127.0.0.0/8", "::1/128"]


@dataclass
class PeerScoreParams:
    """Global score parameters (P5-P7, decay, retention) and the per-topic ones."""

    topics: dict[str, TopicScoreParams] = field(default_factory=dict)
    #: Parameters of every topic not in ``topics`` (None: such topics score nothing).
    default_topic: TopicScoreParams | None = field(default_factory=default_topic_score_params)
    #: Cap on the (positive) topic part of the score; 0 = no cap.
    topic_score_cap: float = 10.0
    #: P5: optional callback; ``Pubsub.set_app_score`` values are added to it.
    app_specific_score: Callable[[PeerID], float] | None = None
    app_specific_weight: float = 10.0
    # P6
    ip_colocation_factor_weight: float = -5.0
    ip_colocation_factor_threshold: float = 10.0
    #: Networks exempt from P6 (CIDR strings); loopback by default.
    ip_colocation_factor_whitelist: list[str] = field(default_factory=_default_whitelist)
    # P7
    behaviour_penalty_weight: float = -10.0
    behaviour_penalty_threshold: float = 0.0
    behaviour_penalty_decay: float = 0.2
    #: Counters decay every this many seconds (applied on the heartbeat).
    decay_interval: float = 1.0
    #: A decayed counter below this becomes 0.
    decay_to_zero: float = 0.1
    #: Non-positive scores of disconnected peers are remembered this long.
    retain_score: float = 3600.0

    def topic_params(self, topic: str) -> TopicScoreParams | None:
        """The parameters ``topic`` is scored with (its own, else ``default_topic``)."""
        tp = self.topics.get(topic)
        return self.default_topic if tp is None else tp

    def validate(self) -> None:
        if self.default_topic is not None:
            try:
                self.default_topic.validate()
            except InvalidParameters as exc:
                raise InvalidParameters(f"default topic score parameters: {exc}") from None
        for topic, tp in self.topics.items():
            try:
                tp.validate()
            except InvalidParameters as exc:
                raise InvalidParameters(f"score parameters of topic {topic!r}: {exc}") from None
        if self.topic_score_cap < 0:
            _fail("topic_score_cap must be >= 0 (0 = no cap)")
        if self.ip_colocation_factor_weight > 0:
            _fail("ip_colocation_factor_weight must be <= 0")
        if self.ip_colocation_factor_weight != 0 and self.ip_colocation_factor_threshold < 1:
            _fail("ip_colocation_factor_threshold must be >= 1")
        for net in self.ip_colocation_factor_whitelist:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise InvalidParameters(f"bad ip_colocation_factor_whitelist: {exc}") from None
        if self.behaviour_penalty_weight > 0:
            _fail("behaviour_penalty_weight must be <= 0")
        if self.behaviour_penalty_weight != 0 and not 0 < self.behaviour_penalty_decay < 1:
            _fail("behaviour_penalty_decay must be in (0, 1)")
        if self.behaviour_penalty_threshold < 0:
            _fail("behaviour_penalty_threshold must be >= 0")
        if self.decay_interval <= 0:
            _fail("decay_interval must be > 0")
        if not 0 < self.decay_to_zero < 1:
            _fail("decay_to_zero must be in (0, 1)")
        if self.retain_score < 0:
            _fail("retain_score must be >= 0")


@dataclass
class PeerScoreThresholds:
    """Score thresholds the router acts on (gossipsub v1.1, "Score Thresholds")."""

    #: Below: no gossip to or from the peer.
    gossip_threshold: float = -10.0
    #: Below: our own messages are not flood-published to the peer.
    publish_threshold: float = -50.0
    #: Below: all RPCs from the peer are ignored.
    graylist_threshold: float = -80.0
    #: At or above: peer exchange from the peer's PRUNE is followed.
    accept_px_threshold: float = 10.0
    #: Median mesh score below this triggers opportunistic grafting.
    opportunistic_graft_threshold: float = 20.0

    def validate(self) -> None:
        if self.gossip_threshold > 0:
            _fail("gossip_threshold must be <= 0")
        if self.publish_threshold > 0 or self.publish_threshold > self.gossip_threshold:
            _fail("publish_threshold must be <= 0 and <= gossip_threshold")
        if self.graylist_threshold > 0 or self.graylist_threshold > self.publish_threshold:
            _fail("graylist_threshold must be <= 0 and <= publish_threshold")
        if self.accept_px_threshold < 0:
            _fail("accept_px_threshold must be >= 0")
        if self.opportunistic_graft_threshold < 0:
            _fail("opportunistic_graft_threshold must be >= 0")


# --------------------------------------------------------------------------------------------


class _TopicStats:
    __slots__ = (
        "first_deliveries",
        "graft_time",
        "in_mesh",
        "invalid_deliveries",
        "mesh_deliveries",
        "mesh_failure_penalty",
    )

    def __init__(self) -> None:
        self.in_mesh = False
        self.graft_time = 0.0
        self.first_deliveries = 0.0
        self.mesh_deliveries = 0.0
        self.mesh_failure_penalty = 0.0
        self.invalid_deliveries = 0.0


class _PeerStats:
    __slots__ = (
        "behaviour_penalty",
        "cache_epoch",
        "cache_floor_until",
        "cache_time",
        "cache_value",
        "cache_version",
        "connected",
        "expire",
        "ips",
        "topics",
        "version",
    )

    def __init__(self) -> None:
        self.version = 0  # bumped by every change of this peer's counters
        self.cache_version = -1
        self.cache_epoch = -1
        self.cache_time = 0.0
        self.cache_value = 0.0
        #: until then (same version and epoch) the score is at least ``cache_value``
        self.cache_floor_until = 0.0
        self.connected = True
        self.expire = 0.0
        self.topics: dict[str, _TopicStats] = {}
        self.ips: set[str] = set()
        self.behaviour_penalty = 0.0


# delivery record states
_UNKNOWN, _VALID, _INVALID, _IGNORED = range(4)


#: A message's delivery record: its state, when it was validated (0.0 before), and the peers that
#: delivered it besides the first, by peer ID bytes. A tuple, replaced on each change; the usual
#: record, a valid message with no other sender to remember, is stored as just its validation
#: time (a float). Every node keeps one per message for the seen TTL: plain values are no work
#: for the cyclic garbage collector (an object with a set was two tracked containers each).
_Record = tuple[int, float, tuple[bytes, ...]]
_NEW_RECORD: _Record = (_UNKNOWN, 0.0, ())


@dataclass
class ScoreBreakdown:
    """The parts of one peer's score, for inspection and tests."""

    total: float
    topics: dict[str, dict[str, float]]
    app: float
    ip_colocation: float
    behaviour_penalty: float


class PeerScore:
    """Sans-IO score keeper; every mutating call takes ``now`` in seconds."""

    def __init__(
        self,
        params: PeerScoreParams,
        *,
        delivery_record_ttl: float = 120.0,
    ) -> None:
        self.params = params
        self._peers: dict[PeerID, _PeerStats] = {}
        #: the same stats by peer ID bytes, for the per-message paths
        self._by_key: dict[bytes, _PeerStats] = {}
        self._peer_ips: dict[str, set[PeerID]] = {}
        self._app: dict[PeerID, float] = {}
        #: message ID -> its record, or its validation time for a valid message with no other
        #: sender remembered (see _Record)
        self._records: dict[bytes, _Record | float] = {}
        #: ``msg_id in score.recorded``: whether a message has a delivery record (a C-level test)
        self.recorded = self._records.keys()
        #: the records in the order they expire: their IDs and expiry times (two queues of
        #: plain values rather than one of tuples: no object for the garbage collector)
        self._record_ids: deque[bytes] = deque()
        self._record_expiry: deque[float] = deque()
        self._record_ttl = delivery_record_ttl
        self._last_decay: float | None = None
        self._epoch = 0  # bumped by changes that affect every peer (decay, IPs)
        self._whitelist: list[IPNetwork] = [
            ipaddress.ip_network(n, strict=False) for n in params.ip_colocation_factor_whitelist
        ]
        self._whitelisted_ips: dict[str, bool] = {}

    # -- peers ---------------------------------------------------------------------------------

    def add_peer(self, peer: PeerID, ips: Iterable[str] = ()) -> None:
        stats = self._peers.get(peer)
        if stats is None:
            stats = self._peers[peer] = self._by_key[peer.to_bytes()] = _PeerStats()
        stats.connected = True
        stats.version += 1
        self._set_ips(peer, stats, set(ips))

    def _set_ips(self, peer: PeerID, stats: _PeerStats, ips: set[str]) -> None:
        if ips != stats.ips:
            self._epoch += 1
        for ip in stats.ips - ips:
            peers = self._peer_ips.get(ip)
            if peers is not None:
                peers.discard(peer)
                if not peers:
                    del self._peer_ips[ip]
        for ip in ips - stats.ips:
            self._peer_ips.setdefault(ip, set()).add(peer)
        stats.ips = ips

    def remove_peer(self, peer: PeerID, now: float) -> None:
        stats = self._peers.get(peer)
        if stats is None:
            return
        if self.score(peer, now) > 0:
            self._forget(peer, stats)
            return
        # Keep a non-positive score so that reconnecting does not reset it.
        for topic, ts in stats.topics.items():
            ts.first_deliveries = 0.0
            tp = self.params.topic_params(topic)
            if tp is not None and ts.in_mesh:
                self._apply_mesh_failure(ts, tp, now)
            ts.in_mesh = False
        stats.connected = False
        stats.version += 1
        stats.expire = now + self.params.retain_score

    def _forget(self, peer: PeerID, stats: _PeerStats) -> None:
        self._set_ips(peer, stats, set())
        del self._peers[peer]
        del self._by_key[peer.to_bytes()]
        self._app.pop(peer, None)

    def known(self, peer: PeerID) -> bool:
        return peer in self._peers

    # -- mesh ----------------------------------------------------------------------------------

    def _topic_stats(
        self, peer: PeerID, topic: str
    ) -> tuple[_PeerStats, _TopicStats, TopicScoreParams] | None:
        """The peer's counters for ``topic`` (created), or None when the topic is not scored.

        Callers bump ``stats.version`` when they change a counter that carries weight: a
        message-rate call that changes nothing (a counter at its cap, a zero weight) keeps the
        cached score.
        """
        return self._topic_stats_by_key(peer.to_bytes(), topic)

    def _topic_stats_by_key(
        self, key: bytes, topic: str
    ) -> tuple[_PeerStats, _TopicStats, TopicScoreParams] | None:
        """:meth:`_topic_stats` of the peer whose ID bytes are ``key``."""
        tp = self.params.topic_params(topic)
        if tp is None:
            return None
        stats = self._by_key.get(key)
        if stats is None:
            return None
        ts = stats.topics.get(topic)
        if ts is None:
            ts = stats.topics[topic] = _TopicStats()
        return stats, ts, tp

    def graft(self, peer: PeerID, topic: str, now: float) -> None:
        found = self._topic_stats(peer, topic)
        if found is None:
            return
        stats, ts, _ = found
        stats.version += 1
        ts.in_mesh = True
        ts.graft_time = now

    def prune(self, peer: PeerID, topic: str, now: float) -> None:
        found = self._topic_stats(peer, topic)
        if found is None:
            return
        stats, ts, tp = found
        stats.version += 1
        if not ts.in_mesh:
            return
        self._apply_mesh_failure(ts, tp, now)
        ts.in_mesh = False

    @staticmethod
    def _p3_active(ts: _TopicStats, tp: TopicScoreParams, now: float) -> bool:
        return ts.in_mesh and now - ts.graft_time > tp.mesh_message_deliveries_activation

    def _apply_mesh_failure(self, ts: _TopicStats, tp: TopicScoreParams, now: float) -> None:
        threshold = tp.mesh_message_deliveries_threshold
        if self._p3_active(ts, tp, now) and ts.mesh_deliveries < threshold:
            deficit = tp.mesh_message_deliveries_threshold - ts.mesh_deliveries
            ts.mesh_failure_penalty += deficit * deficit

    # -- message deliveries ----------------------------------------------------------------------

    def _record(self, msg_id: bytes, now: float) -> _Record:
        rec = self._records.get(msg_id)
        if type(rec) is float:
            return (_VALID, rec, ())
        if rec is None:
            self._records[msg_id] = _NEW_RECORD
            self._record_ids.append(msg_id)
            self._record_expiry.append(now + self._record_ttl)
            return _NEW_RECORD
        return cast(_Record, rec)

    def validate_message(self, msg_id: bytes, now: float) -> None:
        """A new message passed the signature checks and starts validation."""
        self._record(msg_id, now)

    def deliver_message(self, peer: PeerID, msg_id: bytes, topic: str, now: float) -> None:
        """The message from ``peer`` (its first sender) was accepted."""
        self._deliver_by_key(peer.to_bytes(), msg_id, topic, now)

    def _deliver_by_key(self, key: bytes, msg_id: bytes, topic: str, now: float) -> None:
        self._mark_first_delivery(key, topic)
        status, _, peers = self._record(msg_id, now)
        if status != _UNKNOWN:
            return
        self._records[msg_id] = (_VALID, now, peers) if peers else now
        for other in peers:
            if other != key:
                self._mark_duplicate_delivery(other, topic, now, now)

    def deliver_new_message(self, peer: PeerID, msg_id: bytes, topic: str, now: float) -> None:
        """:meth:`validate_message` and :meth:`deliver_message` at once: a message accepted as
        soon as it is received (no validator), the usual case."""
        self.deliver_new_by_key(peer.to_bytes(), msg_id, topic, now)

    def deliver_new_by_key(self, key: bytes, msg_id: bytes, topic: str, now: float) -> None:
        """:meth:`deliver_new_message` from the peer whose ID bytes are ``key``."""
        records = self._records
        if msg_id in records:  # a record from before (the seen cache forgot it sooner)
            self._deliver_by_key(key, msg_id, topic, now)
            return
        records[msg_id] = now  # valid, no one else has delivered it yet
        self._record_ids.append(msg_id)
        self._record_expiry.append(now + self._record_ttl)
        self._mark_first_deliveries(key, topic, 1)

    def deliver_new_batch(self, key: bytes, msg_ids: list[bytes], topic: str, now: float) -> None:
        """:meth:`deliver_new_by_key` for each of ``msg_ids`` in turn, all new (none recorded)
        and from the peer whose ID bytes are ``key`` in ``topic``: the records in one pass,
        the counters moved once per message as there."""
        n = len(msg_ids)
        self._records.update(dict.fromkeys(msg_ids, now))
        self._record_ids.extend(msg_ids)
        self._record_expiry.extend(repeat(now + self._record_ttl, n))
        self._mark_first_deliveries(key, topic, n)

    def reject_message(self, peer: PeerID, msg_id: bytes | None, topic: str, now: float) -> None:
        """The message from ``peer`` is invalid (bad signature, or a validator rejected it)."""
        key = peer.to_bytes()
        if msg_id is None:
            self._mark_invalid_delivery(key, topic)
            return
        status, validated, peers = self._record(msg_id, now)
        if status != _UNKNOWN:
            if status == _INVALID:
                self._mark_invalid_delivery(key, topic)
            return
        self._records[msg_id] = (_INVALID, validated, ())
        self._mark_invalid_delivery(key, topic)
        for other in peers:
            self._mark_invalid_delivery(other, topic)

    def ignore_message(self, msg_id: bytes, now: float) -> None:
        """A validator ignored the message: no one is credited or penalised."""
        status, validated, _ = self._record(msg_id, now)
        if status != _UNKNOWN:
            return
        self._records[msg_id] = (_IGNORED, validated, ())

    def duplicate_message(self, peer: PeerID, msg_id: bytes, topic: str, now: float) -> None:
        """``peer`` sent a message we have seen (a P3 mesh delivery, or P4 if it was invalid)."""
        self.duplicate_by_key(peer.to_bytes(), msg_id, topic, now)

    def duplicate_by_key(self, key: bytes, msg_id: bytes, topic: str, now: float) -> None:
        """:meth:`duplicate_message` from the peer whose ID bytes are ``key``."""
        records = self._records
        rec = records.get(msg_id)
        if rec is None:
            return
        status: int
        validated: float
        peers: tuple[bytes, ...]
        if type(rec) is float:  # valid, no other sender remembered: the usual case
            status, validated, peers = _VALID, rec, ()
        else:
            status, validated, peers = cast(_Record, rec)
            if status > _VALID:  # invalid or ignored: nobody is added
                if status == _INVALID and key not in peers:
                    self._mark_invalid_delivery(key, topic)
                return
            if key in peers:  # (a few peers: the mesh's; mostly the same key objects)
                return  # a duplicate from the same peer
        if status == _UNKNOWN:
            records[msg_id] = (status, validated, peers + (key,))  # noqa: RUF005 (faster)
            return  # settled when validation ends
        # valid: a mesh delivery (P3) if it comes within the window after validation. Time only
        # moves forward, so a sender past the window is past it for every later copy too: it
        # need not be remembered (the tuple it would take is the one allocation a duplicate
        # would make, and most receptions are duplicates).
        params = self.params
        tp = params.topics.get(topic) or params.default_topic
        if tp is None:
            return  # an unscored topic: nothing counts, now or later
        late = validated and now > validated + tp.mesh_message_deliveries_window
        if not late:
            records[msg_id] = (status, validated, peers + (key,))  # noqa: RUF005 (faster)
        # _mark_duplicate_delivery inlined
        stats = self._by_key.get(key)
        if stats is None:
            return
        ts = stats.topics.get(topic)
        if ts is None:
            ts = stats.topics[topic] = _TopicStats()
        if ts.in_mesh and not late:
            mesh = min(ts.mesh_deliveries + 1, tp.mesh_message_deliveries_cap)
            if mesh != ts.mesh_deliveries:  # _add_mesh_deliveries, inlined
                ts.mesh_deliveries = mesh
                if tp.mesh_message_deliveries_weight != 0:
                    stats.version += 1

    # These run for every message received: the version (the score cache's key) moves only when
    # a counter the score weighs changes, so a busy peer's score is not recomputed per message.

    def _mark_first_delivery(self, key: bytes, topic: str) -> None:
        self._mark_first_deliveries(key, topic, 1)

    def _mark_first_deliveries(self, key: bytes, topic: str, count: int) -> None:
        """``count`` first deliveries (P2, and P3 while in the mesh) from the peer whose ID
        bytes are ``key``: the one place of that rule, also for a batch of messages (one step
        per message: the float counters sum as one at a time)."""
        found = self._topic_stats_by_key(key, topic)
        if found is None:
            return
        stats, ts, tp = found
        cap = tp.first_message_deliveries_cap
        for _ in range(count):
            first = min(ts.first_deliveries + 1, cap)
            if first == ts.first_deliveries:
                break  # at the cap: the steps left change nothing
            ts.first_deliveries = first
            if tp.first_message_deliveries_weight != 0:
                stats.version += 1
        if ts.in_mesh:
            self._add_mesh_deliveries(stats, ts, tp, count)

    @staticmethod
    def _add_mesh_deliveries(
        stats: _PeerStats, ts: _TopicStats, tp: TopicScoreParams, count: int = 1
    ) -> None:
        """``count`` mesh deliveries (P3), one step each (the counters are independent of the
        first deliveries', so a batch's can follow them instead of alternating)."""
        cap = tp.mesh_message_deliveries_cap
        for _ in range(count):
            mesh = min(ts.mesh_deliveries + 1, cap)
            if mesh == ts.mesh_deliveries:
                break  # at the cap
            ts.mesh_deliveries = mesh
            if tp.mesh_message_deliveries_weight != 0:
                stats.version += 1

    def _mark_duplicate_delivery(
        self, key: bytes, topic: str, validated: float, now: float
    ) -> None:
        found = self._topic_stats_by_key(key, topic)
        if found is None:
            return
        stats, ts, tp = found
        if not ts.in_mesh:
            return
        if validated and now > validated + tp.mesh_message_deliveries_window:
            return
        self._add_mesh_deliveries(stats, ts, tp)

    def _mark_invalid_delivery(self, key: bytes, topic: str) -> None:
        found = self._topic_stats_by_key(key, topic)
        if found is not None:
            stats, ts, _ = found
            ts.invalid_deliveries += 1
            stats.version += 1

    # -- P5, P7 --------------------------------------------------------------------------------

    def add_penalty(self, peer: PeerID, count: float = 1.0) -> None:
        stats = self._peers.get(peer)
        if stats is not None:
            stats.behaviour_penalty += count
            stats.version += 1

    def set_app_score(self, peer: PeerID, value: float) -> None:
        if not math.isfinite(value):
            raise InvalidParameters(f"application score must be finite, got {value}")
        self._app[peer] = value
        stats = self._peers.get(peer)
        if stats is not None:
            stats.version += 1

    # -- the score -----------------------------------------------------------------------------

    def score(self, peer: PeerID, now: float) -> float:
        """The peer's score; cached while its counters are unchanged, for at most 0.1 s."""
        stats = self._peers.get(peer)
        if stats is None:
            return 0.0
        if (
            stats.cache_version == stats.version
            and stats.cache_epoch == self._epoch
            and 0.0 <= now - stats.cache_time < SCORE_CACHE_TIME
        ):
            return stats.cache_value
        value = self._compute(peer, stats, now, None)
        stats.cache_version = stats.version
        stats.cache_epoch = self._epoch
        stats.cache_time = now
        stats.cache_value = value
        stats.cache_floor_until = self._floor_until(stats, now)
        return value

    def at_least(
        self, peer: PeerID, threshold: float, now: float, key: bytes | None = None
    ) -> bool:
        """``score(peer, now) >= threshold``, without computing the score again while the
        cached value proves it.

        With the counters unchanged (same version and epoch), the score can only move with
        time: P1 (time in mesh) only grows it (its weights are never negative), and P3 can
        only lower it once it activates. So a cached value at or above ``threshold`` still
        answers until the next P3 activation (the graylist check runs for every frame).
        ``key``: the peer's ID bytes, if at hand (a lookup by bytes is cheaper).
        """
        stats = self._peers.get(peer) if key is None else self._by_key.get(key)
        if stats is None:
            return threshold <= 0.0
        if (
            stats.cache_value >= threshold
            and stats.cache_version == stats.version
            and stats.cache_epoch == self._epoch
            and stats.cache_time <= now <= stats.cache_floor_until
        ):
            return True
        return self.score(peer, now) >= threshold

    def _floor_until(self, stats: _PeerStats, now: float) -> float:
        """Until when the score computed at ``now`` is a lower bound (counters unchanged)."""
        if self.params.app_specific_score is not None:
            return now  # an application's function may answer anything at any time
        until = math.inf
        p = self.params
        for topic, ts in stats.topics.items():
            if not ts.in_mesh:
                continue
            tp = p.topic_params(topic)
            if tp is None or tp.mesh_message_deliveries_weight == 0:
                continue
            activation = ts.graft_time + tp.mesh_message_deliveries_activation
            if activation >= now and activation < until:
                until = activation  # P3 starts counting then (a drop, maybe)
        return until

    def breakdown(self, peer: PeerID, now: float) -> ScoreBreakdown:
        parts: dict[str, dict[str, float]] = {}
        stats = self._peers.get(peer)
        if stats is None:
            return ScoreBreakdown(0.0, {}, 0.0, 0.0, 0.0)
        total = self._compute(peer, stats, now, parts)
        p = self.params
        return ScoreBreakdown(
            total=total,
            topics=parts,
            app=self._app_value(peer) * p.app_specific_weight,
            ip_colocation=self._ip_colocation(stats) * p.ip_colocation_factor_weight,
            behaviour_penalty=self._p7(stats) * p.behaviour_penalty_weight,
        )

    def _app_value(self, peer: PeerID) -> float:
        value = self._app.get(peer, 0.0)
        fn = self.params.app_specific_score
        if fn is not None:
            value += fn(peer)
        return value

    def _p7(self, stats: _PeerStats) -> float:
        excess = stats.behaviour_penalty - self.params.behaviour_penalty_threshold
        return excess * excess if excess > 0 else 0.0

    def _compute(
        self,
        peer: PeerID,
        stats: _PeerStats,
        now: float,
        parts: dict[str, dict[str, float]] | None,
    ) -> float:
        p = self.params
        score = 0.0
        for topic, ts in stats.topics.items():
            tp = p.topic_params(topic)
            if tp is None:
                continue
            p1 = 0.0
            if ts.in_mesh:
                p1 = min((now - ts.graft_time) / tp.time_in_mesh_quantum, tp.time_in_mesh_cap)
            p2 = ts.first_deliveries
            p3 = 0.0
            if (
                self._p3_active(ts, tp, now)
                and ts.mesh_deliveries < tp.mesh_message_deliveries_threshold
            ):
                deficit = tp.mesh_message_deliveries_threshold - ts.mesh_deliveries
                p3 = deficit * deficit
            p3b = ts.mesh_failure_penalty
            p4 = ts.invalid_deliveries * ts.invalid_deliveries
            topic_score = (
                p1 * tp.time_in_mesh_weight
                + p2 * tp.first_message_deliveries_weight
                + p3 * tp.mesh_message_deliveries_weight
                + p3b * tp.mesh_failure_penalty_weight
                + p4 * tp.invalid_message_deliveries_weight
            )
            score += topic_score * tp.topic_weight
            if parts is not None:
                parts[topic] = {"p1": p1, "p2": p2, "p3": p3, "p3b": p3b, "p4": p4}
        if p.topic_score_cap > 0 and score > p.topic_score_cap:
            score = p.topic_score_cap
        score += self._app_value(peer) * p.app_specific_weight
        score += self._ip_colocation(stats) * p.ip_colocation_factor_weight
        score += self._p7(stats) * p.behaviour_penalty_weight
        return score

    def _whitelisted(self, ip: str) -> bool:
        hit = self._whitelisted_ips.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                hit = False
            else:
                hit = any(addr in net for net in self._whitelist)
            if len(self._whitelisted_ips) > 10_000:
                self._whitelisted_ips.clear()
            self._whitelisted_ips[ip] = hit
        return hit

    def _ip_colocation(self, stats: _PeerStats) -> float:
        result = 0.0
        threshold = self.params.ip_colocation_factor_threshold
        for ip in stats.ips:
            if self._whitelisted(ip):
                continue
            count = len(self._peer_ips.get(ip, ()))
            if count > threshold:
                surplus = count - threshold
                result += surplus * surplus
        return result

    # -- decay ---------------------------------------------------------------------------------

    def refresh(self, now: float) -> None:
        """Apply every decay interval that has passed; expire old records (call per heartbeat)."""
        expiry, ids = self._record_expiry, self._record_ids
        while expiry and expiry[0] <= now:
            expiry.popleft()
            self._records.pop(ids.popleft(), None)
        if self._last_decay is None:
            self._last_decay = now
            return
        steps = int((now - self._last_decay) / self.params.decay_interval)
        if steps <= 0:
            return
        self._last_decay += steps * self.params.decay_interval
        for _ in range(min(steps, 100)):
            self._decay_once(now)

    def _decay_once(self, now: float) -> None:
        self._epoch += 1
        p = self.params
        zero = p.decay_to_zero

        def decay(value: float, factor: float) -> float:
            value *= factor
            return 0.0 if value < zero else value

        for peer, stats in list(self._peers.items()):
            if not stats.connected:
                if now > stats.expire:
                    self._forget(peer, stats)
                continue  # retained scores do not decay
            for topic, ts in stats.topics.items():
                tp = p.topic_params(topic)
                if tp is None:
                    continue
                ts.first_deliveries = decay(ts.first_deliveries, tp.first_message_deliveries_decay)
                ts.mesh_deliveries = decay(ts.mesh_deliveries, tp.mesh_message_deliveries_decay)
                ts.mesh_failure_penalty = decay(
                    ts.mesh_failure_penalty, tp.mesh_failure_penalty_decay
                )
                ts.invalid_deliveries = decay(
                    ts.invalid_deliveries, tp.invalid_message_deliveries_decay
                )
            stats.behaviour_penalty = decay(stats.behaviour_penalty, p.behaviour_penalty_decay)


class GossipTracer:
    """IWANT promises: a peer that advertised a message must deliver it after our IWANT.

    One random ID per IWANT is tracked (as go does); an unkept promise is a P7 penalty.
    """

    def __init__(self, followup_time: float, rng: random.Random) -> None:
        self.followup_time = followup_time
        self._rng = rng
        self._promises: dict[bytes, dict[PeerID, float]] = {}
        #: the same dict, read-only for the router: ``if tracer.promised`` spares a
        #: :meth:`fulfil` call per message while no promise is open (the usual case)
        self.promised: dict[bytes, dict[PeerID, float]] = self._promises
        self._by_peer: dict[PeerID, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._promises)

    def add_promise(self, peer: PeerID, msg_ids: list[bytes], now: float) -> None:
        if not msg_ids:
            return
        mid = self._rng.choice(msg_ids)
        peers = self._promises.setdefault(mid, {})
        if peer not in peers:
            peers[peer] = now + self.followup_time
            self._by_peer.setdefault(peer, set()).add(mid)

    def fulfil(self, msg_id: bytes) -> None:
        peers = self._promises.pop(msg_id, None)
        if peers is None:
            return
        for peer in peers:
            mids = self._by_peer.get(peer)
            if mids is not None:
                mids.discard(msg_id)
                if not mids:
                    del self._by_peer[peer]

    def remove_peer(self, peer: PeerID) -> None:
        for mid in self._by_peer.pop(peer, set()):
            peers = self._promises.get(mid)
            if peers is not None:
                peers.pop(peer, None)
                if not peers:
                    del self._promises[mid]

    def broken_promises(self, now: float) -> dict[PeerID, int]:
        """Count (and forget) the promises whose time ran out, per peer."""
        out: dict[PeerID, int] = {}
        for mid in list(self._promises):
            peers = self._promises[mid]
            for peer, expire in list(peers.items()):
                if expire < now:
                    out[peer] = out.get(peer, 0) + 1
                    del peers[peer]
                    mids = self._by_peer.get(peer)
                    if mids is not None:
                        mids.discard(mid)
                        if not mids:
                            del self._by_peer[peer]
            if not peers:
                del self._promises[mid]
        return out
