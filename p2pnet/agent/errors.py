"""Errors of the agent layer. Each carries the stable ``code`` that p2p-node reports."""

from __future__ import annotations

from p2pnet.errors import P2PError


class AgentError(P2PError):
    code = "INTERNAL"


class InvalidFields(AgentError, ValueError):
    code = "INVALID_FIELDS"


class MessageTooLarge(InvalidFields):
    """The data does not fit in one message (the gRPC interface answers RESOURCE_EXHAUSTED)."""


class NotConnected(AgentError):
    code = "NOT_CONNECTED"


class AlreadyConnected(AgentError):
    code = "ALREADY_CONNECTED"


class PortInUse(AgentError):
    code = "PORT_IN_USE"


class DialFailed(AgentError):
    code = "DIAL_FAILED"


class PeerNotFound(AgentError):
    code = "PEER_NOT_FOUND"


class SendFailed(AgentError):
    code = "SEND_FAILED"


class DhtLookupFailed(AgentError):
    code = "DHT_LOOKUP_FAILED"
