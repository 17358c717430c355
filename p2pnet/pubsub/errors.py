"""Pubsub errors, all under :class:`p2pnet.errors.P2PError`.

``MessageTooLargeError`` and ``NoPeersError`` are the library-wide classes of
:mod:`p2pnet.errors`, re-exported here because publish raises them.
"""

from __future__ import annotations

from p2pnet.errors import MessageTooLargeError, NoPeersError, P2PError, ProtocolError

__all__ = [
    "DuplicateMessageError",
    "InvalidMessage",
    "InvalidParameters",
    "InvalidRPC",
    "MessageTooLargeError",
    "NoPeersError",
    "NotStartedError",
    "PublishError",
    "PubsubError",
]


class PubsubError(P2PError):
    """Base class of the pubsub layer's errors."""


class InvalidParameters(PubsubError, ValueError):
    """Router, score or threshold parameters are inconsistent (raised at start)."""


class InvalidMessage(PubsubError):
    """A received message breaks the signature policy or is malformed.

    ``reason`` is a short machine-readable tag (``"missing_signature"``, ``"invalid_signature"``,
    ``"invalid_peer_id"``, ...).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class InvalidRPC(PubsubError, ProtocolError):
    """An RPC frame could not be decoded."""


class PublishError(PubsubError):
    """A message could not be published."""


class DuplicateMessageError(PublishError):
    """The message ID was already seen (published before)."""


class NotStartedError(PubsubError):
    """The pubsub service is not running (not started yet, or closed)."""
