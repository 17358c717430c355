"""Gossipsub router parameters: one dataclass, defaults from the specs and go-libp2p-pubsub.

Durations are in seconds (floats). :meth:`GossipsubConfig.validate` checks the relations the
spec requires (``Dout < Dlo <= D <= Dhi``, ``Dout <= D/2``, ``mcache_gossip <= mcache_len``,
...) and raises :class:`~p2pnet.pubsub.errors.InvalidParameters` naming the offending field.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pnet.pubsub.errors import InvalidParameters
from p2pnet.wire.pb import rpc_pb2

FLOODSUB_ID = "/floodsub/1.0.0"
MESHSUB_V10 = "/meshsub/1.0.0"
MESHSUB_V11 = "/meshsub/1.1.0"
MESHSUB_V12 = "/meshsub/1.2.0"

#: Offered in this order when we open a stream; served all at once.
DEFAULT_PROTOCOLS: tuple[str, ...] = (MESHSUB_V12, MESHSUB_V11, MESHSUB_V10, FLOODSUB_ID)
GOSSIPSUB_PROTOCOLS = frozenset({MESHSUB_V10, MESHSUB_V11, MESHSUB_V12})

#: go-libp2p-pubsub DefaultMaxMessageSize: the largest RPC frame we read or write.
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20

#: A message ID function sees the raw protobuf message (``from``, ``seqno``, ``data``, ...).
MsgIdFn = Callable[[rpc_pb2.Message], bytes]


class SignaturePolicy(enum.Enum):
    """How published messages are signed and what received messages must carry."""

    #: from, seqno, signature (and key when the peer ID does not inline it) required and checked.
    STRICT_SIGN = "StrictSign"
    #: from, seqno, signature and key must all be absent.
    STRICT_NO_SIGN = "StrictNoSign"


def supports_backoff(protocol: str) -> bool:
    """gossipsub v1.1+: PRUNE carries a backoff and peer exchange."""
    return protocol in (MESHSUB_V11, MESHSUB_V12)


def supports_idontwant(protocol: str) -> bool:
    return protocol == MESHSUB_V12


@dataclass
class GossipsubConfig:
    """Router parameters (gossipsub v1.0/v1.1/v1.2 specs; go-libp2p-pubsub defaults)."""

    # -- overlay (mesh) ---------------------------------------------------------------------
    #: Desired mesh degree.
    d: int = 6
    #: Lower bound: below it the heartbeat grafts up to ``d``.
    d_lo: int = 5
    #: Upper bound: above it the heartbeat prunes down to ``d``.
    d_hi: int = 12
    #: Peers kept by score when pruning an oversubscribed mesh (the rest are random).
    d_score: int = 4
    #: Outbound-connection quota kept in every mesh.
    d_out: int = 2
    #: Minimum number of peers that get IHAVE gossip per topic and heartbeat.
    d_lazy: int = 6

    # -- timing -------------------------------------------------------------------------------
    heartbeat_interval: float = 1.0
    heartbeat_initial_delay: float = 0.1
    #: A fanout set (topic we publish to without joining) is dropped after this idle time.
    fanout_ttl: float = 60.0
    #: Seen-message cache: IDs remembered this long; duplicates are dropped.
    seen_ttl: float = 120.0

    # -- gossip -------------------------------------------------------------------------------
    #: Heartbeats of full messages kept for IWANT answers.
    mcache_len: int = 5
    #: Of those, the most recent windows advertised in IHAVE.
    mcache_gossip: int = 3
    #: IHAVE goes to max(d_lazy, gossip_factor * eligible peers).
    gossip_factor: float = 0.25
    #: A peer may fetch one message through IWANT at most this often.
    gossip_retransmission: int = 3
    #: IHAVE messages accepted from one peer per heartbeat.
    max_ihave_messages: int = 10
    #: Message IDs we ask one peer for per heartbeat (and IDs per IHAVE we send).
    max_ihave_length: int = 5000
    #: A peer that advertised an ID must deliver it within this time after our IWANT (else P7).
    iwant_followup_time: float = 3.0
    #: Penalise (P7) a peer that asks for one message more than gossip_retransmission times.
    penalize_iwant_spam: bool = True

    # -- publishing -------------------------------------------------------------------------
    #: Own messages go to every topic peer above the publish threshold, not just the mesh.
    flood_publish: bool = True
    signature_policy: SignaturePolicy = SignaturePolicy.STRICT_SIGN
    #: None: from ‖ seqno (StrictSign), sha256(data) (StrictNoSign).
    msg_id_fn: MsgIdFn | None = None
    #: Largest RPC frame read or written (a message must fit in one).
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: Deliver our own published messages to our own subscriptions.
    emit_self: bool = True
    #: Raise NoPeersError from publish when no peer would receive the message.
    allow_publish_to_zero_peers: bool = True

    # -- pruning, backoff, peer exchange ---------------------------------------------------
    prune_backoff: float = 60.0
    unsubscribe_backoff: float = 10.0
    #: A GRAFT this soon after our PRUNE counts double against the peer (P7).
    graft_flood_threshold: float = 10.0
    #: Offer peers (peer exchange) in our PRUNEs.
    do_px: bool = False
    #: Peers offered in one PRUNE and accepted from one.
    prune_peers: int = 16
    #: Concurrent connection attempts to exchanged / direct peers.
    max_pending_connects: int = 8
    opportunistic_graft_ticks: int = 60
    opportunistic_graft_peers: int = 2

    # -- direct peers ------------------------------------------------------------------------
    #: Multiaddrs with /p2p/<id>: always forwarded to, never meshed, reconnected.
    direct_peers: list[str] = field(default_factory=list)
    direct_connect_ticks: int = 300
    direct_connect_initial_delay: float = 1.0

    # -- IDONTWANT (v1.2) ------------------------------------------------------------------
    #: Messages at least this large trigger IDONTWANT to our mesh peers.
    idontwant_message_threshold: int = 1024
    #: IDONTWANT message IDs accepted from one peer per heartbeat.
    max_idontwant_messages: int = 1000
    #: Heartbeats an IDONTWANT entry is kept.
    idontwant_ttl: int = 3

    # -- protocols and limits -----------------------------------------------------------------
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    #: Topics one peer may be subscribed to (more are ignored).
    max_topics_per_peer: int = 1024
    #: Longest topic name accepted.
    max_topic_length: int = 1024

    # -- asyncio adapter -------------------------------------------------------------------
    #: Frames waiting for one peer's writer; more are dropped (a slow peer never blocks us).
    outbound_queue_size: int = 512
    #: Messages waiting in one Subscription; more are dropped (oldest first).
    subscription_queue_size: int = 4096
    #: Validations in flight; more are ignored (throttled).
    max_pending_validations: int = 1024
    validate_timeout: float = 5.0
    stream_open_timeout: float = 10.0
    write_timeout: float = 10.0
    #: Once the first byte of a frame arrived, the rest must follow within this time.
    frame_read_timeout: float = 30.0
    connect_timeout: float = 10.0
    #: Wait for our outbound stream before handling RPCs of a peer that opened one to us.
    peer_ready_timeout: float = 10.0

    def validate(self) -> None:
        """Raise InvalidParameters if the values contradict each other or the spec."""

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise InvalidParameters(f"invalid gossipsub parameters: {what}")

        need(self.d >= 1, f"d must be >= 1 (got {self.d})")
        need(
            0 <= self.d_lo <= self.d <= self.d_hi,
            f"need 0 <= d_lo <= d <= d_hi (got {self.d_lo}, {self.d}, {self.d_hi})",
        )
        need(0 <= self.d_score <= self.d_hi, f"d_score must be in [0, d_hi] (got {self.d_score})")
        need(
            0 <= self.d_out < max(self.d_lo, 1) and self.d_out <= self.d // 2,
            f"d_out must be < d_lo and <= d/2 (got {self.d_out})",
        )
        need(self.d_lazy >= 0, "d_lazy must be >= 0")
        need(self.heartbeat_interval > 0, "heartbeat_interval must be > 0")
        need(self.heartbeat_initial_delay >= 0, "heartbeat_initial_delay must be >= 0")
        need(self.fanout_ttl > 0, "fanout_ttl must be > 0")
        need(self.seen_ttl > 0, "seen_ttl must be > 0")
        need(
            1 <= self.mcache_gossip <= self.mcache_len,
            f"need 1 <= mcache_gossip <= mcache_len (got {self.mcache_gossip}, {self.mcache_len})",
        )
        need(0 <= self.gossip_factor <= 1, "gossip_factor must be in [0, 1]")
        need(self.gossip_retransmission >= 1, "gossip_retransmission must be >= 1")
        need(self.max_ihave_messages >= 1, "max_ihave_messages must be >= 1")
        need(self.max_ihave_length >= 1, "max_ihave_length must be >= 1")
        need(self.iwant_followup_time > 0, "iwant_followup_time must be > 0")
        need(self.max_message_size >= 1024, "max_message_size must be >= 1024")
        need(self.prune_backoff > 0, "prune_backoff must be > 0")
        need(self.unsubscribe_backoff > 0, "unsubscribe_backoff must be > 0")
        need(self.graft_flood_threshold >= 0, "graft_flood_threshold must be >= 0")
        need(self.prune_peers >= 0, "prune_peers must be >= 0")
        need(self.max_pending_connects >= 1, "max_pending_connects must be >= 1")
        need(self.opportunistic_graft_ticks >= 1, "opportunistic_graft_ticks must be >= 1")
        need(self.opportunistic_graft_peers >= 0, "opportunistic_graft_peers must be >= 0")
        need(self.direct_connect_ticks >= 1, "direct_connect_ticks must be >= 1")
        need(self.idontwant_message_threshold >= 0, "idontwant_message_threshold must be >= 0")
        need(self.max_idontwant_messages >= 0, "max_idontwant_messages must be >= 0")
        need(self.idontwant_ttl >= 1, "idontwant_ttl must be >= 1")
        need(len(self.protocols) > 0, "protocols must not be empty")
        unknown = set(self.protocols) - set(DEFAULT_PROTOCOLS)
        need(not unknown, f"unknown protocols {sorted(unknown)}")
        need(self.max_topics_per_peer >= 1, "max_topics_per_peer must be >= 1")
        need(self.max_topic_length >= 1, "max_topic_length must be >= 1")
        need(self.outbound_queue_size >= 1, "outbound_queue_size must be >= 1")
        need(self.subscription_queue_size >= 1, "subscription_queue_size must be >= 1")
        need(self.max_pending_validations >= 1, "max_pending_validations must be >= 1")
        for name in (
            "validate_timeout",
            "stream_open_timeout",
            "write_timeout",
            "frame_read_timeout",
            "connect_timeout",
            "peer_ready_timeout",
        ):
            need(getattr(self, name) > 0, f"{name} must be > 0")
        need(isinstance(self.signature_policy, SignaturePolicy), "bad signature_policy")
