"""The gossipsub router as a sans-IO state machine (gossipsub v1.0, v1.1 and v1.2 IDONTWANT).

Feed it what happens, with the current time in seconds:

* ``add_peer`` / ``remove_peer`` when a pubsub stream to a peer is ready / the peer is gone,
* ``handle_rpc`` with every RPC frame a peer sent,
* ``join`` / ``leave`` / ``publish`` for the local application,
* ``set_validated(topic, on)`` when the application installs or removes a topic validator, and
  ``report_validation`` with the validator's verdict (or its failure: a timeout, an exception),
* ``report_bad_frame`` when a peer's stream broke framing (oversized, cut off),
* ``heartbeat`` every ``heartbeat_interval``.

The router makes every scoring decision: what a bad frame, an undecodable RPC, a rejected, ignored
or timed-out validation costs the peer. The asyncio adapter only reports what happened.

It never does IO. After each call, ``take_outgoing()`` returns the RPC frames to write (one
protobuf ``RPC`` per frame, without the length prefix) and ``take_events()`` the messages to
deliver, the messages to validate, and the peers to connect to (peer exchange, direct peers).

Behaviour follows go-libp2p-pubsub (the reference for v1.1), with two additions also found in
rust-libp2p and js: a peer that subscribes to a topic whose mesh is below ``d_lo`` is grafted at
once rather than at the next heartbeat, and an unsubscribing peer leaves our mesh at once.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
import operator
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from p2pnet.crypto.keys import KeyPair
from p2pnet.peer.peer_id import PeerID
from p2pnet.pubsub.errors import (
    DuplicateMessageError,
    InvalidMessage,
    InvalidParameters,
    InvalidRPC,
    MessageTooLargeError,
    NoPeersError,
)
from p2pnet.pubsub.mcache import MessageCache, TimeCache
from p2pnet.pubsub.messages import (
    Message,
    PublishResult,
    SeqnoCounter,
    SignatureVerifier,
    ValidationFailure,
    ValidationResult,
    app_message,
    build_message,
    default_msg_id_fn,
    get_from,
    message_fields,
    msg_id_from_seqno,
    msg_id_sha256,
    to_app_message,
)
from p2pnet.pubsub.params import (
    FLOODSUB_ID,
    GOSSIPSUB_PROTOCOLS,
    GossipsubConfig,
    SignaturePolicy,
    supports_backoff,
    supports_idontwant,
)
from p2pnet.pubsub.rpc_wire import (
    MalformedRPC,
    ParsedMessage,
    lone_message,
    parse_message,
    publish_piece,
    split_rpc_fields,
)
from p2pnet.pubsub.score import GossipTracer, PeerScore, PeerScoreParams, PeerScoreThresholds
from p2pnet.wire.pb import rpc_pb2
from p2pnet.wire.varint import encode_uvarint

log = logging.getLogger("p2pnet.pubsub")

# RPC field tags (field number << 3 | wire type 2), for assembling frames from encoded parts.
_TAG_SUBSCRIPTION = b"\x0a"
_TAG_CONTROL = b"\x1a"
#: sorts _Peer objects by peer ID bytes in C (PeerID's own comparisons are Python calls)
_peer_key = operator.attrgetter("key")

#: Topics with counters of their own in ``topic_stats``; later ones share ``OTHER_TOPICS``.
MAX_TOPIC_STATS = 64
OTHER_TOPICS = "_other"


# --------------------------------------------------------------------------------------------
# events


@dataclass(frozen=True, slots=True)
class DeliverMessage:
    """A valid message in a topic we subscribe to: hand it to the application."""

    message: Message


#: a message of :meth:`GossipsubRouter.handle_rpcs`'s batch: ID, bytes, publish field, fields
#: (:func:`rpc_wire.parse_message`), author (None when unsigned)
_Batched = tuple[bytes, bytes, bytes, ParsedMessage, PeerID | None]


class _NewMessages:
    """New messages of one topic gathered from one read, to be taken together."""

    __slots__ = ("ids", "items", "topic")

    def __init__(self) -> None:
        self.items: list[_Batched] = []
        self.ids: set[bytes] = set()
        self.topic: str | None = None


def _mark_order(mark: tuple[int, int, object]) -> tuple[int, int]:
    return mark[0], mark[1]


def _joined(parts: list[bytes], prefixed: bool) -> bytes:
    frame = b"".join(parts)
    return encode_uvarint(len(frame)) + frame if prefixed else frame


_new_object = object.__new__
_set_delivered = DeliverMessage.message.__set__  # type: ignore[attr-defined,misc]


def _deliver(message: Message) -> DeliverMessage:
    """``DeliverMessage(message)`` for every message a node delivers: the slot's setter, not a
    frozen dataclass's ``__init__`` (which sets the field through ``object.__setattr__``)."""
    ev = _new_object(DeliverMessage)
    _set_delivered(ev, message)
    return ev


@dataclass(frozen=True, slots=True)
class ValidateMessage:
    """Run the topic validator on ``message``, then call ``report_validation(message.id, ...)``."""

    message: Message


@dataclass(frozen=True, slots=True)
class ConnectPeer:
    """Connect to ``peer`` (``reason`` is ``"px"`` or ``"direct"``).

    ``signed_record`` is the signed peer record offered with it in peer exchange, if any.
    """

    peer: PeerID
    reason: str
    signed_record: bytes | None = None


RouterEvent = DeliverMessage | ValidateMessage | ConnectPeer


class BadFrame(enum.Enum):
    """How a peer's stream broke RPC framing (reported by the adapter, judged by the router)."""

    #: A length prefix above ``max_message_size``.
    OVERSIZED = "oversized"
    #: A frame whose bytes stopped coming (``frame_read_timeout``) or ended with the stream.
    TRUNCATED = "truncated"
    #: A complete frame that is not a protobuf RPC (found by :meth:`GossipsubRouter.handle_rpc`).
    UNDECODABLE = "undecodable"


# --------------------------------------------------------------------------------------------
# per-peer state


class _Outbox:
    __slots__ = ("control", "msgs", "subs")

    def __init__(self) -> None:
        self.subs: list[bytes] = []
        #: message ID -> publish field ready to join into a frame (tag, length, message bytes),
        #: shared by all the peers a message goes to: a message is encoded once, however many
        #: peers get it; queued once per peer (the keys), in order (the dict's)
        self.msgs: dict[bytes, bytes] = {}
        self.control: rpc_pb2.ControlMessage | None = None

    def ctrl(self) -> rpc_pb2.ControlMessage:
        if self.control is None:
            self.control = rpc_pb2.ControlMessage()
        return self.control


class _Peer:
    __slots__ = (
        "dont_send",
        "iasked",
        "id",
        "idontwant_count",
        "ihave_count",
        "is_gossip",
        "iwant_spam",
        "key",
        "outbound",
        "outbox",
        "protocol",
        "topics",
    )

    def __init__(self, peer: PeerID, protocol: str, outbound: bool) -> None:
        self.id = peer
        self.key = peer.to_bytes()
        self.protocol = protocol
        self.is_gossip = protocol in GOSSIPSUB_PROTOCOLS
        self.outbound = outbound
        self.topics: set[str] = set()
        self.ihave_count = 0
        self.iasked = 0
        self.idontwant_count = 0
        self.iwant_spam = False
        self.dont_send: dict[bytes, int] = {}
        self.outbox = _Outbox()


class _Pending:
    __slots__ = ("data", "message", "source")

    def __init__(self, source: PeerID, data: bytes, message: Message) -> None:
        self.source = source
        #: the message as received (its encoded bytes), forwarded unchanged once accepted
        self.data = data
        self.message = message


# --------------------------------------------------------------------------------------------


class GossipsubRouter:
    """One node's gossipsub state. See the module docstring for how to drive it."""

    def __init__(
        self,
        local_peer: PeerID,
        config: GossipsubConfig | None = None,
        score_params: PeerScoreParams | None = None,
        score_thresholds: PeerScoreThresholds | None = None,
        *,
        key: KeyPair | None = None,
        rng: random.Random | None = None,
        seqno_start: int | None = None,
    ) -> None:
        """``rng``: the node's RNG (default: one seeded from ``local_peer``, so a router alone is
        reproducible; a running node passes its own, seeded by the OS unless configured, since
        mesh and gossip choices must not be predictable from outside). ``seqno_start``: where our
        seqnos count up from; pass the wall clock in nanoseconds as go and js do (default: a
        random 64-bit value from ``rng``)."""
        self.config = config or GossipsubConfig()
        self.score_params = score_params or PeerScoreParams()
        self.thresholds = score_thresholds or PeerScoreThresholds()
        self.config.validate()
        self.score_params.validate()
        self.thresholds.validate()
        if self.config.signature_policy is SignaturePolicy.STRICT_SIGN and key is None:
            raise InvalidParameters("StrictSign needs the node's key to sign messages")
        self.local_peer = local_peer
        self._local_key = local_peer.to_bytes()
        self.key = key
        self.rng = rng if rng is not None else random.Random(local_peer.to_bytes())
        self.msg_id_fn = self.config.msg_id_fn or default_msg_id_fn(self.config.signature_policy)
        self.verifier = SignatureVerifier(self.config.signature_policy)
        self.seqno = SeqnoCounter(self.rng.getrandbits(64) if seqno_start is None else seqno_start)

        self.peers: dict[PeerID, _Peer] = {}
        self.topics: dict[str, set[PeerID]] = {}
        self.subscriptions: set[str] = set()
        self.mesh: dict[str, set[PeerID]] = {}
        self.fanout: dict[str, set[PeerID]] = {}
        self.fanout_lastpub: dict[str, float] = {}
        self.backoff: dict[str, dict[PeerID, float]] = {}
        self.direct: set[PeerID] = set()
        self.floodsub_peers: set[PeerID] = set()
        #: Topics whose messages wait for the application's validator (``set_validated``).
        self.validated_topics: set[str] = set()
        self.peer_records: dict[PeerID, bytes] = {}
        #: Where records not in ``peer_records`` are looked up (the host's peer store).
        self.record_source: Callable[[PeerID], bytes | None] | None = None

        self.mcache = MessageCache(self.config.mcache_gossip, self.config.mcache_len)
        self.seen: TimeCache[bytes] = TimeCache(self.config.seen_ttl)
        self.score = PeerScore(self.score_params, delivery_record_ttl=self.config.seen_ttl)
        self.tracer = GossipTracer(self.config.iwant_followup_time, self.rng)
        self.pending: dict[bytes, _Pending] = {}
        #: per topic: the mesh it was computed for, ``_peers_changes`` then, the sorted peers
        self._mesh_sorted: dict[str, tuple[frozenset[PeerID], int, list[_Peer]]] = {}
        #: bumped when a peer is added or removed (its _Peer object is new or gone)
        self._peers_changes = 0

        #: new messages of a read taken together (:meth:`handle_rpcs`); off: one at a time,
        #: the reference the batch is tested against
        self.batch_first_deliveries = True
        #: the batch of :meth:`handle_rpcs`, one per router (empty between calls: each read's
        #: batch is taken before it returns), not three objects per read
        self._new_messages = _NewMessages()
        self.heartbeat_ticks = 0
        self.now = 0.0
        #: the peers with something queued, in the order they were given it (by _Peer object:
        #: hashed in C, unlike a PeerID; a removed peer leaves it)
        self._dirty: dict[_Peer, None] = {}
        self._events: list[RouterEvent] = []
        #: counters for tests and metrics
        self.stats: dict[str, int] = {}
        #: per-topic counters (published, delivered, rejected, ignored, invalid) for metrics
        self.topic_stats: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------ outputs

    def take_outgoing(self, *, prefixed: bool = False) -> list[tuple[PeerID, bytes]]:
        """The RPC frames to send since the last call (each fits ``max_message_size``).

        ``prefixed``: each frame with its uvarint length prefix (as it goes on a stream),
        joined in the same pass as the frame instead of copied into a new buffer after it.
        """
        out: list[tuple[PeerID, bytes]] = []
        limit = self.config.max_message_size
        for peer in self._dirty:  # insertion order: reproducible
            pid = peer.id
            box = peer.outbox
            msgs = box.msgs
            if not box.subs and box.control is None:
                if not msgs:
                    continue
                # only messages, the usual case: one join if they fit in one frame
                box.msgs = {}
                pieces = msgs.values()
                size = sum(map(len, pieces))
                if size <= limit:
                    if prefixed:
                        out.append((pid, b"".join([encode_uvarint(size), *pieces])))
                    else:
                        out.append((pid, b"".join(pieces)))
                    continue
            else:
                peer.outbox = _Outbox()
                pieces = msgs.values()
            parts: list[bytes] = []
            size = 0
            if box.control is not None and box.control.ByteSize() > 0:
                c = box.control.SerializeToString()
                parts += (_TAG_CONTROL, encode_uvarint(len(c)), c)
                size += len(c) + 6
            for s in box.subs:
                parts += (_TAG_SUBSCRIPTION, encode_uvarint(len(s)), s)
                size += len(s) + 6
            for piece in pieces:
                n = len(piece)
                if parts and size + n > limit:
                    out.append((pid, _joined(parts, prefixed)))
                    parts, size = [], 0
                parts.append(piece)
                size += n
            if parts:
                out.append((pid, _joined(parts, prefixed)))
        self._dirty.clear()
        return out

    def take_events(self) -> list[RouterEvent]:
        events, self._events = self._events, []
        return events

    def _count_topic(self, topic: str, name: str) -> None:
        # Topic names come from the network: beyond MAX_TOPIC_STATS they share one entry.
        stats = self.topic_stats.get(topic)
        if stats is None:
            if len(self.topic_stats) >= MAX_TOPIC_STATS:
                topic = OTHER_TOPICS
            stats = self.topic_stats.setdefault(topic, {})
        stats[name] = stats.get(name, 0) + 1

    def _count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    def _box(self, pid: PeerID) -> _Outbox:
        p = self.peers[pid]
        self._dirty[p] = None
        return p.outbox

    def _send_message(self, pid: PeerID, msg_id: bytes, piece: bytes) -> None:
        """Queue ``piece`` (:func:`rpc_wire.publish_piece` of the message) for ``pid``."""
        self._queue_piece(self.peers[pid], msg_id, piece)

    def _queue_piece(self, p: _Peer, msg_id: bytes, piece: bytes) -> None:
        msgs = p.outbox.msgs
        if msg_id not in msgs:
            msgs[msg_id] = piece
            if len(msgs) == 1:  # else the peer is marked already (saves a PeerID hash)
                self._dirty[p] = None

    def _send_subscription(self, pid: PeerID, topic: str, subscribe: bool) -> None:
        sub = rpc_pb2.RPC.SubOpts(subscribe=subscribe, topicid=topic)
        self._box(pid).subs.append(sub.SerializeToString())

    def _send_graft(self, pid: PeerID, topic: str) -> None:
        self._box(pid).ctrl().graft.add(topicID=topic)

    def _send_prune(self, pid: PeerID, topic: str, *, px: bool, unsubscribe: bool) -> None:
        prune = self._make_prune(pid, topic, px, unsubscribe)
        self._box(pid).ctrl().prune.append(prune)

    # ------------------------------------------------------------------ peers

    def add_peer(
        self,
        peer: PeerID,
        protocol: str,
        *,
        outbound: bool = False,
        ips: Iterable[str] = (),
        now: float,
    ) -> None:
        """A stream to ``peer`` speaking ``protocol`` is ready: greet it with our topics."""
        self.now = now
        if peer in self.peers:
            p = self.peers[peer]
            p.protocol = protocol
            p.is_gossip = protocol in GOSSIPSUB_PROTOCOLS
            if p.is_gossip:
                self.floodsub_peers.discard(peer)
            else:
                self.floodsub_peers.add(peer)
            return
        if protocol not in GOSSIPSUB_PROTOCOLS and protocol != FLOODSUB_ID:
            raise InvalidParameters(f"unknown pubsub protocol {protocol!r}")
        self.peers[peer] = _Peer(peer, protocol, outbound)
        self._peers_changes += 1
        if protocol == FLOODSUB_ID:
            self.floodsub_peers.add(peer)
        self.score.add_peer(peer, ips)
        log.debug("peer %s added (%s, %s)", peer, protocol, "out" if outbound else "in")
        for topic in sorted(self.subscriptions):
            self._send_subscription(peer, topic, True)

    def remove_peer(self, peer: PeerID, now: float) -> None:
        self.now = now
        p = self.peers.pop(peer, None)
        if p is None:
            return
        self._peers_changes += 1
        self.floodsub_peers.discard(peer)
        for topic in p.topics:
            subs = self.topics.get(topic)
            if subs is not None:
                subs.discard(peer)
                if not subs:
                    del self.topics[topic]
        for topic, mesh in self.mesh.items():
            if peer in mesh:
                mesh.discard(peer)
                self.score.prune(peer, topic, now)
        for fanout in self.fanout.values():
            fanout.discard(peer)
        self.tracer.remove_peer(peer)
        self.score.remove_peer(peer, now)
        self._dirty.pop(p, None)
        log.debug("peer %s removed", peer)

    def add_direct_peer(self, peer: PeerID) -> None:
        """Always forward to ``peer``, never mesh it; reconnect it when it goes away."""
        if peer == self.local_peer or peer in self.direct:
            return
        self.direct.add(peer)
        for topic, mesh in self.mesh.items():
            if peer in mesh:
                mesh.discard(peer)
                self.score.prune(peer, topic, self.now)
        if peer not in self.peers:
            self._events.append(ConnectPeer(peer, "direct"))

    def set_app_score(self, peer: PeerID, value: float) -> None:
        self.score.set_app_score(peer, value)

    def peer_score(self, peer: PeerID, now: float | None = None) -> float:
        return self.score.score(peer, self.now if now is None else now)

    def _score(self, peer: PeerID) -> float:
        return self.score.score(peer, self.now)

    # ------------------------------------------------------------------ queries

    def mesh_peers(self, topic: str) -> set[PeerID]:
        return set(self.mesh.get(topic, ()))

    def fanout_peers(self, topic: str) -> set[PeerID]:
        return set(self.fanout.get(topic, ()))

    def topic_peers(self, topic: str) -> set[PeerID]:
        return set(self.topics.get(topic, ()))

    def peer_protocol(self, peer: PeerID) -> str | None:
        p = self.peers.get(peer)
        return None if p is None else p.protocol

    def backoff_remaining(self, peer: PeerID, topic: str, now: float | None = None) -> float:
        expire = self.backoff.get(topic, {}).get(peer)
        t = self.now if now is None else now
        return 0.0 if expire is None else max(0.0, expire - t)

    # ------------------------------------------------------------------ backoff

    def _add_backoff(self, peer: PeerID, topic: str, seconds: float) -> None:
        entries = self.backoff.setdefault(topic, {})
        expire = self.now + seconds
        if entries.get(peer, 0.0) < expire:
            entries[peer] = expire

    def _backed_off(self, peer: PeerID, topic: str, slack: bool = False) -> bool:
        expire = self.backoff.get(topic, {}).get(peer)
        if expire is None:
            return False
        if slack:  # one heartbeat of slack against clock skew (specs PR 289)
            expire += self.config.heartbeat_interval
        return self.now < expire

    def _clear_backoff(self) -> None:
        slack = self.config.heartbeat_interval
        for topic in list(self.backoff):
            entries = self.backoff[topic]
            for peer in [p for p, e in entries.items() if e + slack < self.now]:
                del entries[peer]
            if not entries:
                del self.backoff[topic]

    # ------------------------------------------------------------------ local application

    def join(self, topic: str, now: float) -> None:
        """Subscribe: announce it to every peer and build a mesh (from the fanout first)."""
        self.now = now
        if topic in self.subscriptions:
            return
        self.subscriptions.add(topic)
        for pid in self.peers:
            self._send_subscription(pid, topic, True)
        if topic in self.mesh:
            return
        d = self.config.d
        mesh = self.fanout.pop(topic, set())
        self.fanout_lastpub.pop(topic, None)
        mesh = {
            p
            for p in mesh
            if p in self.peers and self._score(p) >= 0 and not self._backed_off(p, topic, True)
        }
        if len(mesh) < d:
            mesh.update(
                self._get_peers(
                    topic,
                    d - len(mesh),
                    lambda p: (
                        p not in mesh
                        and p not in self.direct
                        and not self._backed_off(p, topic, True)
                        and self._score(p) >= 0
                    ),
                )
            )
        self.mesh[topic] = mesh
        for p in mesh:
            self.score.graft(p, topic, now)
            self._send_graft(p, topic)
        log.debug("joined %s with %d mesh peers", topic, len(mesh))

    def leave(self, topic: str, now: float) -> None:
        """Unsubscribe: announce it, prune the mesh with the unsubscribe backoff."""
        self.now = now
        if topic not in self.subscriptions:
            return
        self.subscriptions.discard(topic)
        for pid in self.peers:
            self._send_subscription(pid, topic, False)
        mesh = self.mesh.pop(topic, set())
        self._mesh_sorted.pop(topic, None)
        for p in mesh:
            self.score.prune(p, topic, now)
            self._send_prune(p, topic, px=self.config.do_px, unsubscribe=True)
            self._add_backoff(p, topic, self.config.unsubscribe_backoff)

    def publish(self, topic: str, data: bytes, now: float) -> PublishResult:
        """Sign (per policy) and send a new message: its ID and the peers it went to.

        Raises MessageTooLargeError (checked before signing, and again on the built message),
        and NoPeersError when ``allow_publish_to_zero_peers`` is off and nobody would get it.
        """
        self.now = now
        cfg = self.config
        if len(data) >= cfg.max_message_size:
            raise MessageTooLargeError(
                f"{len(data)} bytes of data exceed max_message_size {cfg.max_message_size}"
            )
        msg = build_message(
            topic,
            data,
            policy=cfg.signature_policy,
            key=self.key,
            peer_id=self.local_peer,
            seqno=self.seqno.next() if self.key is not None else None,
        )
        return self.publish_message(msg, now)

    def publish_message(self, msg: rpc_pb2.Message, now: float) -> PublishResult:
        """Send a message built by the caller (see :func:`messages.build_message`)."""
        self.now = now
        data = msg.SerializeToString()
        if len(data) + 16 > self.config.max_message_size:
            raise MessageTooLargeError(
                f"message of {len(data)} bytes does not fit in an RPC of at most "
                f"{self.config.max_message_size} bytes"
            )
        msg_id = self.msg_id_fn(msg)
        if msg_id in self.seen:
            raise DuplicateMessageError(f"message {msg_id.hex()} was already published or seen")
        topic = msg.topic
        if (
            not self.config.allow_publish_to_zero_peers
            and not self.publish_targets(topic)
            and not (self.config.emit_self and topic in self.subscriptions)
        ):
            raise NoPeersError(f"no peer to publish to in {topic!r}")
        self.seen.add(msg_id, now)
        self.mcache.put(msg_id, topic, data)
        self.tracer.fulfil(msg_id)
        targets = self._publish_targets(topic)
        piece = publish_piece(data)
        for pid in sorted(targets):  # sorted: the order frames leave in is reproducible
            self._send_message(pid, msg_id, piece)
        self._count("published")
        self._count_topic(topic, "published")
        if self.config.emit_self and topic in self.subscriptions:
            author = PeerID.from_bytes(get_from(msg)) if msg.HasField("from_") else None
            self._events.append(
                DeliverMessage(to_app_message(msg, msg_id, author, self.local_peer))
            )
        return PublishResult(msg_id, frozenset(targets))

    def publish_targets(self, topic: str) -> set[PeerID]:
        """The peers a message published now would be sent to (without side effects)."""
        saved = dict(self.fanout), dict(self.fanout_lastpub)
        try:
            return self._publish_targets(topic)
        finally:
            self.fanout, self.fanout_lastpub = saved

    def _publish_targets(self, topic: str) -> set[PeerID]:
        tmap = self.topics.get(topic, set())
        pub_threshold = self.thresholds.publish_threshold
        tosend: set[PeerID] = set()
        if self.config.flood_publish:
            for p in tmap:
                if p in self.direct or self._score(p) >= pub_threshold:
                    tosend.add(p)
            return tosend
        tosend.update(p for p in self.direct if p in tmap)
        for p in self.floodsub_peers:
            if p in tmap and self._score(p) >= pub_threshold:
                tosend.add(p)
        gmap = self.mesh.get(topic)
        if gmap is None:
            gmap = self.fanout.get(topic)
            if not gmap:
                gmap = set(
                    self._get_peers(
                        topic,
                        self.config.d,
                        lambda p: p not in self.direct and self._score(p) >= pub_threshold,
                    )
                )
                if gmap:
                    self.fanout[topic] = gmap
            self.fanout_lastpub[topic] = self.now
        tosend.update(gmap)
        return tosend

    # ------------------------------------------------------------------ receiving

    def accept_from(self, peer: PeerID) -> bool:
        """False when the peer is graylisted: its RPCs are ignored."""
        if peer in self.direct:
            return True
        return self._score(peer) >= self.thresholds.graylist_threshold

    def report_bad_frame(self, peer: PeerID, fault: BadFrame, now: float) -> None:
        """``peer``'s stream broke framing; the adapter resets that stream (not the connection).

        An undecodable RPC is a behaviour penalty (P7): no honest implementation sends one. An
        oversized or cut-off frame is not: limits differ between implementations (js and go
        default to 1 MiB, others less) and a frame cut off by a dying connection is no offence.
        """
        self.now = now
        self._count(f"frame_{fault.value}")
        if fault is BadFrame.UNDECODABLE and peer in self.peers:
            self.score.add_penalty(peer, 1)

    def handle_rpc(self, peer: PeerID, data: bytes, now: float) -> None:
        """Process one RPC frame from ``peer``.

        Raises InvalidRPC if it cannot be decoded (already judged: see :meth:`report_bad_frame`);
        the adapter then resets the stream it came from.
        """
        self.handle_rpcs(peer, (data,), now)

    def handle_rpcs(self, peer: PeerID, frames: Iterable[bytes], now: float) -> None:
        """:meth:`handle_rpc` for each of ``frames`` in turn (what one read of a stream held):
        the peer is looked up once, and a frame that is exactly one message (what every
        implementation sends for a message alone) is taken without splitting it into lists.

        New messages of one topic in a row (the usual traffic) are gathered and taken together
        (:meth:`_take_batch`): verified one by one, then recorded, delivered and queued for the
        mesh in one pass per cache and per peer, with the outcome of one message at a time.

        Raises InvalidRPC at the first undecodable frame: the frames before it were handled,
        the ones after it are not (the stream is reset), as with one call per frame.
        """
        self.now = now
        p = self.peers.get(peer)
        if p is None:
            log.debug("RPC from unknown peer %s dropped", peer)
            for _ in frames:
                self._count("rpc_unknown_peer")
            return
        # accept_from, per frame: a frame can lower the peer's score. Not asked again after a
        # frame whose message was only gathered into the batch: that touched no score (the
        # batch is taken later, and deliveries only raise it) and ``now`` is the same
        direct = passed = bool(self.direct) and peer in self.direct
        at_least, graylist = self.score.at_least, self.thresholds.graylist_threshold
        batch = self._new_messages if self._batching() else None
        try:
            for data in frames:
                if not (passed or at_least(peer, graylist, now, p.key)) and self._refuses(
                    p, batch, now
                ):
                    continue
                lone = lone_message(data)
                if lone is None:
                    self._take_batch(p, batch, now)
                    self._handle_frame(p, data, now)
                    passed = direct
                else:
                    passed = self._handle_lone_message(p, lone[0], lone[1], batch, now) or direct
            if batch is not None and batch.items:  # (a read of one duplicate has none)
                self._take_batch(p, batch, now)
        except BaseException:
            if batch is not None:  # (an undecodable frame took it first) not for the next read
                batch.items.clear()
                batch.ids.clear()
            raise

    def _batching(self) -> bool:
        """Whether new messages can be taken together (:meth:`_take_batch` does not forward to
        direct or floodsub peers, and knows only the default message ID)."""
        return (
            self.batch_first_deliveries
            and self.msg_id_fn is msg_id_from_seqno
            and not self.direct
            and not self.floodsub_peers
        )

    def _refuses(self, p: _Peer, batch: _NewMessages | None, now: float) -> bool:
        """A frame from ``p`` whose score is under the graylist threshold: refused, unless
        taking the pending batch (which can only raise the score) brings it back over."""
        if batch is not None and batch.items:
            self._take_batch(p, batch, now)
            if self.score.at_least(p.id, self.thresholds.graylist_threshold, now, p.key):
                return False
        log.debug("RPC from graylisted peer %s ignored", p.id)
        self._count("rpc_graylisted")
        return True

    def _handle_lone_message(
        self,
        p: _Peer,
        raw: bytes,
        piece: bytes | None,
        batch: _NewMessages | None,
        now: float,
    ) -> bool:
        """A frame that is one message ``raw`` and nothing else (``piece``: the frame, if it is
        the publish field as :func:`rpc_wire.publish_piece` makes it). True if the message was
        only gathered into ``batch`` (no score touched yet)."""
        stats = self.stats
        msg_id = self.mcache.lookup_bytes(raw)
        if msg_id is not None:  # a cached message's bytes: most often a duplicate
            if batch is not None and batch.items:  # (most reads hold no batch to take)
                self._take_batch(p, batch, now)
            stats["rpc_received"] = stats.get("rpc_received", 0) + 1
            if self._handle_cached(p, raw, msg_id, now):
                stats["msg_duplicate"] = stats.get("msg_duplicate", 0) + 1
            return False
        parsed = parse_message(raw)
        if parsed is None:  # not in canonical form: decoded
            self._take_batch(p, batch, now)
            try:
                decoded = rpc_pb2.Message.FromString(raw)
            except DecodeError as exc:
                self.report_bad_frame(p.id, BadFrame.UNDECODABLE, now)
                raise InvalidRPC(f"undecodable RPC from {p.id}: {exc}") from None
            stats["rpc_received"] = stats.get("rpc_received", 0) + 1
            self._handle_message(p, raw, message_fields(decoded, raw), decoded)
            return False
        stats["rpc_received"] = stats.get("rpc_received", 0) + 1
        if batch is not None:
            gathered = self._batched(p, raw, piece, parsed, batch, now)
            if gathered is not None:
                return gathered
        self._take_batch(p, batch, now)
        self._handle_message(p, raw, parsed, None, piece)
        return False

    def _batched(
        self,
        p: _Peer,
        raw: bytes,
        piece: bytes | None,
        parsed: ParsedMessage,
        batch: _NewMessages,
        now: float,
    ) -> bool | None:
        """Gather a message into ``batch`` if it is new and can be taken with the others (see
        :meth:`_take_batch`), its signature checked now: True if it was gathered, False if it
        was refused for a bad signature (as :meth:`_handle_message` refuses it, after the
        batch), None if it is not for the batch."""
        from_, body, seqno, topic, signature, key, signed = parsed
        if (
            from_ is None
            or seqno is None
            or topic not in self.subscriptions
            or topic in self.validated_topics
            or len(body) >= self.config.idontwant_message_threshold
            or from_ == self._local_key
            or (batch.items and topic != batch.topic)
        ):
            return None
        msg_id = from_ + seqno
        if (
            msg_id in self.seen.keys
            or msg_id in self.pending
            or msg_id in batch.ids
            or msg_id in self.mcache.holds
            or msg_id in self.score.recorded
        ):
            return None
        try:
            author = self.verifier.verify_fields(from_, seqno, signature, key, signed, None)
        except InvalidMessage as exc:
            self._take_batch(p, batch, now)  # (the score drops: the next frame sees it)
            log.debug("invalid message from %s: %s", p.id, exc)
            self.score.reject_message(p.id, None, topic, now)
            self._count("msg_invalid")
            self._count_topic(topic, "invalid")
            return False
        batch.items.append((msg_id, raw, piece or publish_piece(raw), parsed, author))
        batch.ids.add(msg_id)
        batch.topic = topic
        return True

    def _take_batch(self, p: _Peer, pending: _NewMessages | None, now: float) -> None:
        """New valid messages from ``p`` gathered by :meth:`handle_rpcs`: all of one subscribed
        topic without a validator, none seen, pending, cached or recorded, none ours, under the
        IDONTWANT size, with seqno IDs, signatures checked; no direct or floodsub peers. What
        :meth:`_handle_message` and :meth:`_accept_new` do for each in turn, with the same
        outcome: recorded, delivered and queued for the mesh in one pass per cache and peer.
        Empties ``pending``."""
        if pending is None or not pending.items:
            return
        batch, topic = pending.items, pending.topic
        pending.items = []
        pending.ids.clear()
        assert topic is not None
        ids = [b[0] for b in batch]
        n = len(ids)
        seen = self.seen
        seen.insert_new(ids, now + seen.ttl)
        tracer = self.tracer
        if tracer.promised:
            for msg_id in ids:
                tracer.fulfil(msg_id)
        events = self._events
        source = p.id
        for msg_id, _, _, fields, author in batch:
            _, data, seqno, _, signature, key, _ = fields
            events.append(
                _deliver(
                    app_message(
                        topic,
                        data,
                        author,
                        None if seqno is None else int.from_bytes(seqno, "big"),
                        msg_id,
                        source,
                        signature,
                        key,
                    )
                )
            )
        self.mcache.put_new(ids, topic, [b[1] for b in batch])
        self.score.deliver_new_batch(p.key, ids, topic, now)
        stats = self.stats
        stats["msg_delivered"] = stats.get("msg_delivered", 0) + n
        tstats = self.topic_stats.get(topic)
        if tstats is None:
            self._count_topic(topic, "delivered")
            tstats = self.topic_stats.get(topic) or self.topic_stats[OTHER_TOPICS]
            tstats["delivered"] += n - 1
        else:
            tstats["delivered"] = tstats.get("delivered", 0) + n
        mesh = self.mesh.get(topic)
        if not mesh or not self.topics.get(topic):
            return
        # forwarding: per mesh peer, every message for it in one update of its outbox; the
        # peers newly given something are marked in the order one message at a time would
        # mark them (by their first message, then mesh order): frames leave in the same order
        skip = p.key
        origins = [None if b[4] is None else b[3][0] for b in batch]
        authors = set(origins)  # (most batches have one author: membership without a scan)
        pieces = [b[2] for b in batch]
        marks: list[tuple[int, int, _Peer]] = []
        sent = 0
        for pos, q in enumerate(self._mesh_order(topic, mesh)):
            key = q.key
            if key == skip:
                continue
            dont_send = q.dont_send
            msgs = q.outbox.msgs
            empty = not msgs
            if dont_send or key in authors:
                first = -1
                count = 0
                for i in range(n):
                    msg_id = ids[i]
                    if origins[i] == key or msg_id in dont_send:
                        continue
                    if first < 0:
                        first = i
                    count += 1
                    if msg_id not in msgs:
                        msgs[msg_id] = pieces[i]
                if not count:
                    continue
            else:
                first, count = 0, n
                msgs.update(zip(ids, pieces, strict=True))
            sent += count
            if empty:
                marks.append((first, pos, q))
        if marks:
            marks.sort(key=_mark_order)
            dirty = self._dirty
            for _, _, q in marks:
                dirty[q] = None
        if sent:
            stats["msg_forwarded"] = stats.get("msg_forwarded", 0) + sent

    def _handle_cached(self, p: _Peer, raw: bytes, msg_id: bytes, now: float) -> bool:
        """A message whose bytes are a cached message's (``msg_id``); True if a duplicate."""
        topic = self.mcache.cached_topic(msg_id)
        if topic not in self.subscriptions:
            self._count("msg_not_subscribed")
        elif msg_id in self.seen.keys or msg_id in self.pending:
            self.score.duplicate_by_key(p.key, msg_id, topic, now)
            return True
        else:  # cached but no longer seen (a seen TTL shorter than the history)
            parsed = parse_message(raw)
            if parsed is None:
                decoded = rpc_pb2.Message.FromString(raw)
                self._handle_message(p, raw, message_fields(decoded, raw), decoded)
            else:
                self._handle_message(p, raw, parsed, None)
        return False

    def _handle_frame(self, p: _Peer, data: bytes, now: float) -> None:
        """One RPC frame from ``p`` (not graylisted), in full."""
        # The frame is split at the byte level so that each message keeps the bytes it arrived
        # as (forwarded unchanged); every part is decoded before any is acted upon, so a frame
        # with one broken part is refused whole, as a full decode would refuse it.
        # A message whose bytes equal a cached message's (most receptions are duplicates,
        # forwarded unchanged) is known without decoding: those bytes decoded before.
        lookup = self.mcache.lookup_bytes
        try:
            sub_parts, publish, control_part = split_rpc_fields(data)
            subs = [rpc_pb2.RPC.SubOpts.FromString(b) for b in sub_parts] if sub_parts else ()
            # per message: the ID of the cached message with these bytes; else its fields read
            # from the bytes (parse_message); else, in another form, decoded
            msgs: list[tuple[bytes | ParsedMessage | rpc_pb2.Message, bytes]] = []
            for b in publish:
                msgs.append((lookup(b) or parse_message(b) or rpc_pb2.Message.FromString(b), b))
            control = (
                None if control_part is None else rpc_pb2.ControlMessage.FromString(control_part)
            )
        except (MalformedRPC, DecodeError) as exc:
            self.report_bad_frame(p.id, BadFrame.UNDECODABLE, now)
            raise InvalidRPC(f"undecodable RPC from {p.id}: {exc}") from None
        stats = self.stats
        stats["rpc_received"] = stats.get("rpc_received", 0) + 1
        for sub in subs:
            self._handle_subscription(p, sub)
        seen, pending, subscriptions = self.seen.keys, self.pending, self.subscriptions
        duplicate = self.score.duplicate_by_key
        key = p.key
        duplicates = 0
        cached_topic = self.mcache.cached_topic
        for msg, raw in msgs:
            if type(msg) is bytes:  # known by its bytes: the cached message's ID
                topic = cached_topic(msg)
                if topic in subscriptions and (msg in seen or msg in pending):
                    duplicate(key, msg, topic, now)  # the usual case, inlined
                    duplicates += 1
                elif self._handle_cached(p, raw, msg, now):
                    duplicates += 1
            elif type(msg) is tuple:
                self._handle_message(p, raw, msg, None)
            else:  # not in canonical form: decoded
                assert isinstance(msg, rpc_pb2.Message)
                self._handle_message(p, raw, message_fields(msg, raw), msg)
        if duplicates:
            stats["msg_duplicate"] = stats.get("msg_duplicate", 0) + duplicates
        if control is not None and p.is_gossip:
            self._handle_control(p, control)

    def _handle_subscription(self, p: _Peer, sub: rpc_pb2.RPC.SubOpts) -> None:
        if not sub.HasField("topicid"):
            return
        topic = sub.topicid
        if sub.subscribe:
            if topic in p.topics:
                return
            if (
                len(p.topics) >= self.config.max_topics_per_peer
                or len(topic) > self.config.max_topic_length
            ):
                self._count("subscriptions_refused")
                return
            p.topics.add(topic)
            self.topics.setdefault(topic, set()).add(p.id)
            self._graft_on_subscribe(p, topic)
        else:
            if topic not in p.topics:
                return
            p.topics.discard(topic)
            subs = self.topics.get(topic)
            if subs is not None:
                subs.discard(p.id)
                if not subs:
                    del self.topics[topic]
            mesh = self.mesh.get(topic)
            if mesh is not None and p.id in mesh:
                mesh.discard(p.id)
                self.score.prune(p.id, topic, self.now)
            fanout = self.fanout.get(topic)
            if fanout is not None:
                fanout.discard(p.id)

    def _graft_on_subscribe(self, p: _Peer, topic: str) -> None:
        mesh = self.mesh.get(topic)
        if (
            mesh is None
            or p.id in mesh
            or len(mesh) >= self.config.d_lo
            or not p.is_gossip
            or p.id in self.direct
            or self._backed_off(p.id, topic, True)
            or self._score(p.id) < 0
        ):
            return
        mesh.add(p.id)
        self.score.graft(p.id, topic, self.now)
        self._send_graft(p.id, topic)

    def _handle_message(
        self,
        p: _Peer,
        raw: bytes,
        fields: ParsedMessage,
        msg: rpc_pb2.Message | None,
        piece: bytes | None = None,
    ) -> None:
        """A message not known by its bytes: ``fields`` as :func:`rpc_wire.parse_message` reads
        them, ``msg`` the decoded message if it was decoded (else it is, only for a message ID
        function of the application's). ``piece``: ``raw`` as a publish field
        (:func:`rpc_wire.publish_piece`), if at hand.

        This runs for every new message a node receives: the calls of the usual path (seen
        cache, tracer, scoring, delivery, forwarding) are inlined here and in
        :meth:`_accept_new`, each a Python call saved per message."""
        now = self.now
        from_, data, seqno, topic, signature, key, signed = fields
        if topic is None or topic not in self.subscriptions:
            self._count("msg_not_subscribed")
            return
        id_fn = self.msg_id_fn
        try:
            if id_fn is msg_id_from_seqno:
                if from_ is None or seqno is None:  # seqno_msg_id, inlined
                    raise InvalidMessage(
                        "missing_from_or_seqno", "default message ID needs from and seqno"
                    )
                msg_id = from_ + seqno
            elif id_fn is msg_id_sha256:
                msg_id = hashlib.sha256(data).digest()
            else:
                if msg is None:
                    msg = rpc_pb2.Message.FromString(raw)
                msg_id = id_fn(msg)
        except InvalidMessage as exc:
            log.debug("message from %s without a usable ID: %s", p.id, exc)
            self.score.reject_message(p.id, None, topic, now)
            self._count("msg_invalid")
            return
        seen = self.seen
        if msg_id in seen.keys or msg_id in self.pending:
            self.score.duplicate_by_key(p.key, msg_id, topic, now)
            self._count("msg_duplicate")
            return
        try:
            author = self.verifier.verify_fields(from_, seqno, signature, key, signed, msg)
        except InvalidMessage as exc:
            log.debug("invalid message from %s: %s", p.id, exc)
            self.score.reject_message(p.id, None, topic, now)
            self._count("msg_invalid")
            self._count_topic(topic, "invalid")
            return
        if author is not None and from_ == self._local_key:
            # our own message came back after the seen cache forgot it, or a forgery
            self._count("msg_self_origin")
            return
        seen.insert(msg_id, now + seen.ttl)  # seen.add: known absent (tested above)
        if self.tracer.promised:
            self.tracer.fulfil(msg_id)
        if len(data) >= self.config.idontwant_message_threshold:
            self._send_idontwant(msg_id, topic, p.id)
        app_msg = app_message(
            topic,
            data,
            author,
            None if seqno is None else int.from_bytes(seqno, "big"),
            msg_id,
            p.id,
            signature,
            key,
        )
        # forwarded as received (``raw``): never encoded again
        if topic in self.validated_topics:
            self.score.validate_message(msg_id, now)
            if len(self.pending) >= self.config.max_pending_validations:
                self.score.ignore_message(msg_id, now)
                self._count("msg_throttled")
                return
            self.pending[msg_id] = _Pending(p.id, raw, app_msg)
            self._events.append(ValidateMessage(app_msg))
            return
        self._accept_new(
            p, msg_id, raw, app_msg, topic, from_ if author is not None else None, piece
        )

    def set_validated(self, topic: str, validated: bool) -> None:
        """Whether messages of ``topic`` wait for the application's validator (ValidateMessage).

        Messages already waiting when validation is turned off still get their verdict.
        """
        if validated:
            self.validated_topics.add(topic)
        else:
            self.validated_topics.discard(topic)

    def report_validation(
        self, msg_id: bytes, result: ValidationResult | ValidationFailure, now: float
    ) -> None:
        """The validator's verdict for a message announced with ValidateMessage.

        A validator that failed (timed out, raised) counts as IGNORE: the failure is ours, not
        the sender's, so it costs the sender nothing (go does the same).
        """
        self.now = now
        pending = self.pending.pop(msg_id, None)
        if pending is None:
            return
        topic = pending.message.topic
        if isinstance(result, ValidationFailure):
            log.debug("validation of %s in %s failed: %s", msg_id.hex(), topic, result.value)
            self._count(f"validation_{result.value}")
            result = ValidationResult.IGNORE
        if result is ValidationResult.ACCEPT:
            # delivered and forwarded even if the sender left meanwhile
            self._accept(pending.source, msg_id, pending.data, pending.message, validated=True)
        elif result is ValidationResult.REJECT:
            self.score.reject_message(pending.source, msg_id, topic, now)
            self._count("msg_rejected")
            self._count_topic(topic, "rejected")
        else:
            self.score.ignore_message(msg_id, now)
            self._count("msg_ignored")
            self._count_topic(topic, "ignored")

    def _accept(
        self, source: PeerID, msg_id: bytes, data: bytes, message: Message, *, validated: bool
    ) -> None:
        """Deliver and forward; ``validated``: the message went through a validator (its
        delivery record was opened then), else it is accepted as it is received."""
        topic = message.topic
        self.mcache.put(msg_id, topic, data)
        if validated:
            self.score.deliver_message(source, msg_id, topic, self.now)
        else:
            self.score.deliver_new_message(source, msg_id, topic, self.now)
        self._count("msg_delivered")
        self._count_topic(topic, "delivered")
        if topic in self.subscriptions:
            self._events.append(DeliverMessage(message))
        self._forward(msg_id, topic, data, source, message.from_peer)

    def _accept_new(
        self,
        p: _Peer,
        msg_id: bytes,
        data: bytes,
        message: Message,
        topic: str,
        origin: bytes | None,
        piece: bytes | None,
    ) -> None:
        """:meth:`_accept` of a message that had no validator, from ``p`` (its first sender):
        this runs for every message a node relays. ``origin``: the author's peer ID bytes (None
        when unsigned); ``piece``: ``data`` as a publish field, if at hand."""
        self.mcache.put(msg_id, topic, data)
        self.score.deliver_new_by_key(p.key, msg_id, topic, self.now)
        stats = self.stats
        stats["msg_delivered"] = stats.get("msg_delivered", 0) + 1
        tstats = self.topic_stats.get(topic)
        if tstats is None:
            self._count_topic(topic, "delivered")
        else:
            tstats["delivered"] = tstats.get("delivered", 0) + 1
        self._events.append(_deliver(message))  # (topic is subscribed: tested on reception)
        if self.direct or self.floodsub_peers:
            self._forward(msg_id, topic, data, p.id, message.from_peer)
        elif self.topics.get(topic):
            self._forward_to_mesh(msg_id, topic, data, p.key, origin, piece)

    def _forward(
        self, msg_id: bytes, topic: str, data: bytes, source: PeerID, origin: PeerID | None
    ) -> None:
        tmap = self.topics.get(topic)
        if not tmap:
            return
        if self.direct or self.floodsub_peers:
            self._forward_to_all(msg_id, topic, data, source, origin, tmap)
            return
        skip_origin = None if origin is None else origin.to_bytes()
        self._forward_to_mesh(msg_id, topic, data, source.to_bytes(), skip_origin)

    def _forward_to_mesh(
        self,
        msg_id: bytes,
        topic: str,
        data: bytes,
        skip: bytes,
        skip_origin: bytes | None,
        piece: bytes | None = None,
    ) -> None:
        """The usual forwarding: to the topic's mesh (in the order of a sorted list kept while
        it holds) but the peers whose ID bytes are ``skip`` (the source) and ``skip_origin``
        (the author) and those who said IDONTWANT. ``piece``: ``data`` as a publish field, if
        at hand (else made once for every peer)."""
        mesh = self.mesh.get(topic)
        if not mesh:
            return
        dirty = self._dirty
        sent = 0
        for p in self._mesh_order(topic, mesh):
            key = p.key
            if key == skip or key == skip_origin or msg_id in p.dont_send:
                continue
            sent += 1
            if piece is None:
                piece = publish_piece(data)
            msgs = p.outbox.msgs  # _queue_piece, inlined: this runs for every message and peer
            if msg_id not in msgs:
                msgs[msg_id] = piece
                if len(msgs) == 1:
                    dirty[p] = None
        if sent:
            self._count("msg_forwarded", sent)

    def _mesh_order(self, topic: str, mesh: set[PeerID]) -> list[_Peer]:
        """``topic``'s mesh peers sorted by peer ID bytes (reproducible frame order), computed
        again only when the mesh or the peers changed: comparing two sets of the same PeerID
        objects runs in C, sorting and looking every peer up does not."""
        cached = self._mesh_sorted.get(topic)
        if cached is not None and cached[1] == self._peers_changes and cached[0] == mesh:
            return cached[2]
        peers = self.peers
        order = sorted((peers[pid] for pid in mesh), key=_peer_key)
        self._mesh_sorted[topic] = (frozenset(mesh), self._peers_changes, order)
        return order

    def _forward_to_all(
        self,
        msg_id: bytes,
        topic: str,
        data: bytes,
        source: PeerID,
        origin: PeerID | None,
        tmap: set[PeerID],
    ) -> None:
        """Forwarding with direct or floodsub peers besides the mesh."""
        peers = self.peers
        # keyed by peer ID bytes: hashing and comparing bytes runs in C, a PeerID's in Python
        tosend: dict[bytes, _Peer] = {}
        for pid in self.direct:
            if pid in tmap and (p := peers.get(pid)) is not None:
                tosend[p.key] = p
        if self.floodsub_peers:
            pub_threshold = self.thresholds.publish_threshold
            for pid in self.floodsub_peers:
                if pid in tmap and self._score(pid) >= pub_threshold:
                    p = peers[pid]
                    tosend[p.key] = p
        for pid in self.mesh.get(topic, ()):
            p = peers[pid]
            if msg_id not in p.dont_send:
                tosend[p.key] = p
        tosend.pop(source.to_bytes(), None)
        if origin is not None:
            tosend.pop(origin.to_bytes(), None)
        if not tosend:
            return
        piece = publish_piece(data)  # one encoding for every peer it goes to
        dirty = self._dirty
        for key in sorted(tosend):  # sorted: reproducible frame order
            p = tosend[key]
            msgs = p.outbox.msgs  # _queue_piece, inlined: this runs for every message and peer
            if msg_id not in msgs:
                msgs[msg_id] = piece
                if len(msgs) == 1:
                    dirty[p] = None
        self._count("msg_forwarded", len(tosend))

    def _send_idontwant(self, msg_id: bytes, topic: str, source: PeerID) -> None:
        for pid in self.mesh.get(topic, ()):
            if pid != source and supports_idontwant(self.peers[pid].protocol):
                ctrl = self._box(pid).ctrl()
                if ctrl.idontwant:
                    ctrl.idontwant[0].messageIDs.append(msg_id)
                else:
                    ctrl.idontwant.add(messageIDs=[msg_id])
                self._count("idontwant_sent")

    # ------------------------------------------------------------------ control

    def _handle_control(self, p: _Peer, ctrl: rpc_pb2.ControlMessage) -> None:
        if ctrl.ihave:
            self._handle_ihave(p, ctrl.ihave)
        if ctrl.iwant:
            self._handle_iwant(p, ctrl.iwant)
        if ctrl.graft:
            self._handle_graft(p, ctrl.graft)
        if ctrl.prune:
            self._handle_prune(p, ctrl.prune)
        if ctrl.idontwant:
            self._handle_idontwant(p, ctrl.idontwant)

    def _handle_ihave(self, p: _Peer, ihaves: Iterable[rpc_pb2.ControlIHave]) -> None:
        cfg = self.config
        if self._score(p.id) < self.thresholds.gossip_threshold:
            self._count("ihave_ignored_score")
            return
        p.ihave_count += 1
        if p.ihave_count > cfg.max_ihave_messages:
            self._count("ihave_ignored_flood")
            return
        if p.iasked >= cfg.max_ihave_length:
            self._count("ihave_ignored_flood")
            return
        want: dict[bytes, None] = {}
        for ihave in ihaves:
            if ihave.topicID not in self.mesh:
                continue
            for mid in ihave.messageIDs:
                if mid not in self.seen and mid not in self.pending and mid not in want:
                    want[mid] = None
                    if len(want) >= cfg.max_ihave_length:
                        break
        if not want:
            return
        iask = min(len(want), cfg.max_ihave_length - p.iasked)
        ids = list(want)
        self.rng.shuffle(ids)
        ids = ids[:iask]
        p.iasked += iask
        self._box(p.id).ctrl().iwant.add(messageIDs=ids)
        self.tracer.add_promise(p.id, ids, self.now)
        self._count("iwant_sent")

    def _handle_iwant(self, p: _Peer, iwants: Iterable[rpc_pb2.ControlIWant]) -> None:
        if self._score(p.id) < self.thresholds.gossip_threshold:
            self._count("iwant_ignored_score")
            return
        limit = self.config.gossip_retransmission
        n = 0
        for iwant in iwants:
            for mid in iwant.messageIDs:
                n += 1
                if n > self.config.max_ihave_length:
                    return
                if mid in p.dont_send:
                    continue
                entry = self.mcache.get_for_peer(mid, p.id)
                if entry is None:
                    continue
                data, _topic, count = entry
                if count > limit:
                    self._count("iwant_over_limit")
                    if self.config.penalize_iwant_spam and not p.iwant_spam:
                        # once per heartbeat: a peer asking again and again is spamming
                        p.iwant_spam = True
                        self.score.add_penalty(p.id, 1)
                    continue
                self._queue_piece(p, mid, publish_piece(data))
                self._count("iwant_answered")

    def _handle_graft(self, p: _Peer, grafts: Iterable[rpc_pb2.ControlGraft]) -> None:
        cfg = self.config
        score = self._score(p.id)
        do_px = cfg.do_px
        prune: list[str] = []
        for graft in grafts:
            topic = graft.topicID
            mesh = self.mesh.get(topic)
            if mesh is None:
                do_px = False  # do not leak our peers for topics we are not in
                continue
            if p.id in mesh:
                continue
            if p.id in self.direct:
                log.warning("GRAFT from direct peer %s in %s: refused", p.id, topic)
                prune.append(topic)
                do_px = False
                continue
            expire = self.backoff.get(topic, {}).get(p.id)
            if expire is not None and self.now < expire:
                log.debug("GRAFT from %s in %s during backoff: penalised", p.id, topic)
                self.score.add_penalty(p.id, 1)
                self._count("graft_backoff_violation")
                do_px = False
                flood_cutoff = expire + cfg.graft_flood_threshold - cfg.prune_backoff
                if self.now < flood_cutoff:
                    self.score.add_penalty(p.id, 1)
                self._add_backoff(p.id, topic, cfg.prune_backoff)
                prune.append(topic)
                continue
            if score < 0:
                prune.append(topic)
                do_px = False
                self._add_backoff(p.id, topic, cfg.prune_backoff)
                continue
            if len(mesh) >= cfg.d_hi and not p.outbound:
                prune.append(topic)
                self._add_backoff(p.id, topic, cfg.prune_backoff)
                continue
            mesh.add(p.id)
            self.score.graft(p.id, topic, self.now)
            self._count("graft_accepted")
        for topic in prune:
            self._send_prune(p.id, topic, px=do_px, unsubscribe=False)

    def _handle_prune(self, p: _Peer, prunes: Iterable[rpc_pb2.ControlPrune]) -> None:
        score = self._score(p.id)
        for prune in prunes:
            topic = prune.topicID
            mesh = self.mesh.get(topic)
            if mesh is None:
                continue
            if p.id in mesh:
                mesh.discard(p.id)
                self.score.prune(p.id, topic, self.now)
            self._count("prune_received")
            if prune.HasField("backoff") and prune.backoff > 0:
                self._add_backoff(p.id, topic, min(float(prune.backoff), 24 * 3600.0))
            else:
                self._add_backoff(p.id, topic, self.config.prune_backoff)
            if prune.peers:
                if score < self.thresholds.accept_px_threshold:
                    self._count("px_ignored_score")
                    continue
                self._px_connect(prune.peers)

    def _px_connect(self, infos: Iterable[rpc_pb2.PeerInfo]) -> None:
        infos = list(infos)
        if len(infos) > self.config.prune_peers:
            self.rng.shuffle(infos)
            infos = infos[: self.config.prune_peers]
        for info in infos:
            try:
                peer = PeerID.from_bytes(info.peerID)
            except Exception:  # a malformed ID in someone's PX: skip it
                continue
            if peer == self.local_peer or peer in self.peers:
                continue
            record = info.signedPeerRecord if info.HasField("signedPeerRecord") else None
            self._events.append(ConnectPeer(peer, "px", record))
            self._count("px_offered")

    def _handle_idontwant(self, p: _Peer, idontwants: Iterable[rpc_pb2.ControlIDontWant]) -> None:
        limit = self.config.max_idontwant_messages
        self._count("idontwant_received")
        for idw in idontwants:
            for mid in idw.messageIDs:
                if p.idontwant_count >= limit:
                    self._count("idontwant_over_limit")
                    return
                p.idontwant_count += 1
                p.dont_send[mid] = self.heartbeat_ticks

    def _make_prune(
        self, pid: PeerID, topic: str, px: bool, unsubscribe: bool
    ) -> rpc_pb2.ControlPrune:
        prune = rpc_pb2.ControlPrune(topicID=topic)
        peer = self.peers.get(pid)
        if peer is None or not supports_backoff(peer.protocol):
            return prune
        seconds = self.config.unsubscribe_backoff if unsubscribe else self.config.prune_backoff
        prune.backoff = max(1, math.ceil(seconds))
        if px:
            for other in self._get_peers(
                topic, self.config.prune_peers, lambda x: x != pid and self._score(x) >= 0
            ):
                info = prune.peers.add(peerID=other.to_bytes())
                record = self.peer_records.get(other)
                if record is None and self.record_source is not None:
                    record = self.record_source(other)
                if record is not None:
                    info.signedPeerRecord = record
        return prune

    # ------------------------------------------------------------------ heartbeat

    def _get_peers(self, topic: str, count: int, accept: Callable[[PeerID], bool]) -> list[PeerID]:
        """Up to ``count`` random gossipsub peers in ``topic`` for which ``accept`` holds."""
        candidates = sorted(
            pid for pid in self.topics.get(topic, ()) if self.peers[pid].is_gossip and accept(pid)
        )
        self.rng.shuffle(candidates)  # sorted first: runs are reproducible from the rng seed
        return candidates[:count]

    def heartbeat(self, now: float) -> None:
        """Mesh maintenance, fanout expiry, gossip emission, score decay, cache shifting."""
        self.now = now
        cfg = self.config
        self.heartbeat_ticks += 1
        self.score.refresh(now)
        self.seen.expire(now)
        if self.heartbeat_ticks % 15 == 0:
            self._clear_backoff()
        # broken IWANT promises are P7 penalties
        for pid, count in self.tracer.broken_promises(now).items():
            if pid in self.peers:
                log.debug("peer %s broke %d IWANT promises", pid, count)
                self.score.add_penalty(pid, count)
                self._count("broken_promises", count)
        # per-heartbeat counters and IDONTWANT expiry
        ttl = cfg.idontwant_ttl
        for p in self.peers.values():
            p.ihave_count = 0
            p.iasked = 0
            p.idontwant_count = 0
            p.iwant_spam = False
            if p.dont_send:
                ticks = self.heartbeat_ticks
                p.dont_send = {m: t for m, t in p.dont_send.items() if ticks - t < ttl}
        if self.direct and self.heartbeat_ticks % cfg.direct_connect_ticks == 0:
            for pid in self.direct:
                if pid not in self.peers:
                    self._events.append(ConnectPeer(pid, "direct"))

        scores = {pid: self._score(pid) for pid in self.peers}
        to_graft: dict[PeerID, list[str]] = {}
        to_prune: dict[PeerID, list[str]] = {}
        no_px: set[PeerID] = set()

        for topic, mesh in self.mesh.items():
            self._maintain_mesh(topic, mesh, scores, to_graft, to_prune, no_px)
            self._emit_gossip(topic, mesh, scores)

        # fanout: expire, keep peers in the topic and above the publish threshold, top up
        publish_threshold = self.thresholds.publish_threshold
        for topic in [t for t, last in self.fanout_lastpub.items() if last + cfg.fanout_ttl < now]:
            self.fanout.pop(topic, None)
            del self.fanout_lastpub[topic]
        for topic, fanout in self.fanout.items():
            tmap = self.topics.get(topic, set())
            for pid in [
                q for q in fanout if q not in tmap or scores.get(q, 0.0) < publish_threshold
            ]:
                fanout.discard(pid)
            if len(fanout) < cfg.d:

                def fanout_ok(q: PeerID, fanout: set[PeerID] = fanout) -> bool:
                    return (
                        q not in fanout
                        and q not in self.direct
                        and scores.get(q, 0.0) >= publish_threshold
                    )

                fanout.update(self._get_peers(topic, cfg.d - len(fanout), fanout_ok))
            self._emit_gossip(topic, fanout, scores)

        # coalesced GRAFT / PRUNE
        for pid, topics in to_graft.items():
            for topic in topics:
                self._send_graft(pid, topic)
            for topic in to_prune.pop(pid, []):
                self._send_prune(pid, topic, px=cfg.do_px and pid not in no_px, unsubscribe=False)
        for pid, topics in to_prune.items():
            for topic in topics:
                self._send_prune(pid, topic, px=cfg.do_px and pid not in no_px, unsubscribe=False)

        self.mcache.shift()

    def _maintain_mesh(
        self,
        topic: str,
        mesh: set[PeerID],
        scores: dict[PeerID, float],
        to_graft: dict[PeerID, list[str]],
        to_prune: dict[PeerID, list[str]],
        no_px: set[PeerID],
    ) -> None:
        cfg = self.config
        now = self.now

        def prune_peer(pid: PeerID) -> None:
            mesh.discard(pid)
            self.score.prune(pid, topic, now)
            self._add_backoff(pid, topic, cfg.prune_backoff)
            to_prune.setdefault(pid, []).append(topic)

        def graft_peer(pid: PeerID) -> None:
            mesh.add(pid)
            self.score.graft(pid, topic, now)
            to_graft.setdefault(pid, []).append(topic)

        def usable(pid: PeerID) -> bool:
            return (
                pid not in mesh
                and pid not in self.direct
                and not self._backed_off(pid, topic, True)
                and scores.get(pid, 0.0) >= 0
            )

        def usable_outbound(pid: PeerID) -> bool:
            return usable(pid) and self.peers[pid].outbound

        # drop peers with a negative score, without peer exchange
        for pid in [q for q in mesh if scores.get(q, 0.0) < 0]:
            prune_peer(pid)
            no_px.add(pid)

        # too few peers: graft up to D
        if len(mesh) < cfg.d_lo:
            for pid in self._get_peers(topic, cfg.d - len(mesh), usable):
                graft_peer(pid)

        # too many: keep the best d_score by score, the rest at random, and d_out outbound
        if len(mesh) > cfg.d_hi:
            plst = sorted(mesh)
            self.rng.shuffle(plst)
            plst.sort(key=lambda q: scores.get(q, 0.0), reverse=True)
            rest = plst[cfg.d_score :]
            self.rng.shuffle(rest)
            plst[cfg.d_score :] = rest
            outbound = sum(1 for q in plst[: cfg.d] if self.peers[q].outbound)
            if outbound < cfg.d_out:

                def rotate(i: int) -> None:
                    plst.insert(0, plst.pop(i))

                # bring the outbound peers among the first D to the front ...
                if outbound > 0:
                    left = outbound
                    i = 1
                    while i < cfg.d and left > 0:
                        if self.peers[plst[i]].outbound:
                            rotate(i)
                            left -= 1
                        i += 1
                # ... and enough outbound peers from beyond D to keep the quota
                ineed = cfg.d_out - outbound
                i = cfg.d
                while i < len(plst) and ineed > 0:
                    if self.peers[plst[i]].outbound:
                        rotate(i)
                        ineed -= 1
                    i += 1
            for pid in plst[cfg.d :]:
                prune_peer(pid)

        # enough peers but too few outbound ones: graft outbound peers
        if len(mesh) >= cfg.d_lo:
            outbound = sum(1 for q in mesh if self.peers[q].outbound)
            if outbound < cfg.d_out:
                for pid in self._get_peers(topic, cfg.d_out - outbound, usable_outbound):
                    graft_peer(pid)

        # opportunistic grafting: the mesh is poor, add peers scoring above its median
        if self.heartbeat_ticks % cfg.opportunistic_graft_ticks == 0 and len(mesh) > 1:
            ordered = sorted(mesh, key=lambda q: scores.get(q, 0.0))
            median = scores.get(ordered[len(ordered) // 2], 0.0)
            if median < self.thresholds.opportunistic_graft_threshold:

                def better(pid: PeerID) -> bool:
                    return usable(pid) and scores.get(pid, 0.0) > median

                for pid in self._get_peers(topic, cfg.opportunistic_graft_peers, better):
                    graft_peer(pid)
                    self._count("opportunistic_graft")

    def _emit_gossip(self, topic: str, exclude: set[PeerID], scores: dict[PeerID, float]) -> None:
        cfg = self.config
        mids = self.mcache.gossip_ids(topic)
        if not mids:
            return
        threshold = self.thresholds.gossip_threshold
        peers = sorted(
            pid
            for pid in self.topics.get(topic, ())
            if pid not in exclude
            and pid not in self.direct
            and self.peers[pid].is_gossip
            and scores.get(pid, 0.0) >= threshold
        )
        target = max(cfg.d_lazy, int(cfg.gossip_factor * len(peers)))
        if target < len(peers):
            self.rng.shuffle(peers)
            peers = peers[:target]
        for pid in peers:
            ids = mids
            if len(ids) > cfg.max_ihave_length:
                ids = list(mids)
                self.rng.shuffle(ids)
                ids = ids[: cfg.max_ihave_length]
            self._box(pid).ctrl().ihave.add(topicID=topic, messageIDs=ids)
            self._count("ihave_sent")
