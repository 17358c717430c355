"""Gossipsub v1.1 with peer scoring (and v1.2 IDONTWANT), wire-compatible with go and js libp2p.

* :mod:`~p2pnet.pubsub.router`: the sans-IO router (mesh, fanout, gossip, scoring decisions),
* :mod:`~p2pnet.pubsub.gossipsub`: :class:`Pubsub`, the asyncio service on a host,
* :mod:`~p2pnet.pubsub.score`: peer scoring and its parameters,
* :mod:`~p2pnet.pubsub.messages`: signing, the signature policy, message IDs,
* :mod:`~p2pnet.pubsub.sim`: an in-process network of routers on a virtual clock.

See docs/pubsub.md.
"""

from p2pnet.pubsub.errors import (
    DuplicateMessageError,
    InvalidMessage,
    InvalidParameters,
    InvalidRPC,
    MessageTooLargeError,
    NoPeersError,
    NotStartedError,
    PublishError,
    PubsubError,
)
from p2pnet.pubsub.gossipsub import Gossipsub, Pubsub, Subscription, Validator
from p2pnet.pubsub.messages import (
    Message,
    PublishResult,
    ValidationFailure,
    ValidationResult,
    msg_id_from_seqno,
    msg_id_js_strict_sign,
    msg_id_sha256,
)
from p2pnet.pubsub.params import (
    FLOODSUB_ID,
    MESHSUB_V10,
    MESHSUB_V11,
    MESHSUB_V12,
    GossipsubConfig,
    SignaturePolicy,
)
from p2pnet.pubsub.router import GossipsubRouter
from p2pnet.pubsub.score import PeerScoreParams, PeerScoreThresholds, TopicScoreParams

__all__ = [
    "FLOODSUB_ID",
    "MESHSUB_V10",
    "MESHSUB_V11",
    "MESHSUB_V12",
    "DuplicateMessageError",
    "Gossipsub",
    "GossipsubConfig",
    "GossipsubRouter",
    "InvalidMessage",
    "InvalidParameters",
    "InvalidRPC",
    "Message",
    "MessageTooLargeError",
    "NoPeersError",
    "NotStartedError",
    "PeerScoreParams",
    "PeerScoreThresholds",
    "PublishError",
    "PublishResult",
    "Pubsub",
    "PubsubError",
    "SignaturePolicy",
    "Subscription",
    "TopicScoreParams",
    "ValidationFailure",
    "ValidationResult",
    "Validator",
    "msg_id_from_seqno",
    "msg_id_js_strict_sign",
    "msg_id_sha256",
]
