"""Node events an application iterates: ``async for event in node.events(): ...``."""

from __future__ import annotations

from dataclasses import dataclass, field

from multiaddr import Multiaddr

from p2pnet.eventbus import EventBus, EventStream
from p2pnet.peer.peer_id import PeerID

__all__ = [
    "BootstrapFailed",
    "BootstrapSucceeded",
    "EventBus",
    "EventStream",
    "MessageReceived",
    "NodeEvent",
    "PeerConnected",
    "PeerDisconnected",
    "PeerDiscovered",
]


@dataclass(frozen=True)
class PeerConnected:
    peer: PeerID
    addr: Multiaddr
    direction: str  # "inbound" or "outbound"


@dataclass(frozen=True)
class PeerDisconnected:
    peer: PeerID


@dataclass(frozen=True)
class PeerDiscovered:
    """We learned of a peer and where to reach it (identify, the DHT, ...)."""

    peer: PeerID
    addrs: list[Multiaddr] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    source: str = ""


@dataclass(frozen=True)
class MessageReceived:
    """A pubsub message on a topic the node subscribed to through the node API."""

    topic: str
    from_peer: PeerID | None
    data: bytes
    seqno: int | None
    msg_id: bytes


@dataclass(frozen=True)
class BootstrapFailed:
    """No bootstrap peer could be reached; the node tries again in ``retry_in`` seconds."""

    attempt: int
    error: str
    retry_in: float


@dataclass(frozen=True)
class BootstrapSucceeded:
    """A bootstrap attempt reached at least one bootstrap peer (``routing_table``: DHT size)."""

    attempt: int
    routing_table: int


NodeEvent = (
    PeerConnected
    | PeerDisconnected
    | PeerDiscovered
    | MessageReceived
    | BootstrapFailed
    | BootstrapSucceeded
)
