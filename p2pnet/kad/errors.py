"""Errors of the Kademlia DHT, all under :class:`p2pnet.errors.P2PError`."""

from __future__ import annotations

from p2pnet.errors import NoPeersError, P2PError, ProtocolError

# NoPeersError (a lookup could not start: empty routing table, no connection) is the
# library-wide class of p2pnet.errors, re-exported for `from p2pnet.kad.errors import ...`.
__all__ = [
    "InvalidRecord",
    "KadError",
    "KadProtocolError",
    "NoPeersError",
    "NotFound",
    "PeerNotFound",
    "RecordNotFound",
    "UnknownNamespace",
]


class KadError(P2PError):
    """Base class of the DHT's errors."""


class NotFound(KadError):
    """A lookup ended without finding what it looked for."""


class PeerNotFound(NotFound):
    """find_peer: no peer in the DHT knows an address of the target."""


class RecordNotFound(NotFound):
    """get_value: no valid record for the key was found."""


class InvalidRecord(KadError):
    """A record failed its namespace's validator (bad signature, wrong key, too large, ...)."""


class UnknownNamespace(InvalidRecord):
    """A record key's namespace has no registered validator (every node refuses such keys)."""


class KadProtocolError(ProtocolError, KadError):
    """A peer sent a malformed or nonsensical kad message."""
