"""One exception hierarchy for the whole library.

Everything p2pnet raises on purpose derives from :class:`P2PError`, so an application can catch
the library's failures in one place and let programming errors through.
"""

from __future__ import annotations


class P2PError(Exception):
    """Base class of every error p2pnet raises."""


class ProtocolError(P2PError):
    """The remote peer broke a protocol rule (malformed bytes, illegal frame, limit exceeded)."""


class MessageTooLargeError(ProtocolError):
    """A message is larger than the limit that applies to it.

    Received: a length prefix or frame announced more bytes than the configured maximum (the
    remote broke the limit). Sent: the caller's data cannot fit in one frame (a pubsub publish, a
    handshake payload).
    """


class NoPeersError(P2PError):
    """An operation needs peers and has none: a DHT lookup with an empty routing table and no
    connection, a publish no peer would receive (with ``allow_publish_to_zero_peers=False``)."""


class NodeError(P2PError):
    """A node-level operation failed (a service disabled, no bootstrap peer reachable, ...)."""


class HandshakeError(P2PError):
    """A security or negotiation handshake failed."""


class PeerIDMismatch(HandshakeError):
    """The remote authenticated as a different peer than the one dialed."""


class NegotiationError(P2PError):
    """multistream-select could not agree on a protocol."""


class ProtocolNotSupported(NegotiationError):
    """The remote answered ``na`` to every protocol we proposed."""


class DialError(P2PError):
    """Dialing a peer failed on every address tried."""


class ConnectionClosed(P2PError):
    """The connection was closed (locally or by the remote) while in use."""


class StreamError(P2PError):
    """A stream-level failure."""


class StreamReset(StreamError):
    """The stream was reset, by us or by the remote."""


class StreamClosed(StreamError):
    """Write after the local side closed the stream, or read after EOF where data was required."""


class StreamLimitExceeded(StreamError):
    """Opening the stream would exceed a configured stream limit."""


class IncompleteRead(ConnectionClosed):
    """EOF arrived before the requested number of bytes.

    ``partial`` holds what did arrive.
    """

    def __init__(self, partial: bytes, expected: int) -> None:
        super().__init__(f"EOF after {len(partial)} of {expected} bytes")
        self.partial = partial
        self.expected = expected


class CryptoError(P2PError):
    """A key could not be decoded or a signature is malformed."""


class InvalidPeerID(CryptoError):
    """A peer id (bytes or text) is malformed: bad multihash, multibase, CID or key."""


class ResourceLimitExceeded(P2PError):
    """A reservation (connection, stream, memory, fd) would exceed a resource-manager limit.

    ``scope`` names the scope that refused it (``system``, ``transient``, ``peer:<id>``,
    ``ip:<addr>``, ``conn``, ``stream``, ``protocol:<id>``), ``resource`` what was asked.
    """

    def __init__(self, scope: str, resource: str, message: str) -> None:
        super().__init__(message)
        self.scope = scope
        self.resource = resource
