"""Resource accounting: what each peer makes us hold, bounded (docs/limits.md)."""

from p2pnet.resources.limits import PEER_MEMORY_CAP, ProtocolLimits, RelayLimits, ResourceLimits
from p2pnet.resources.manager import (
    ConnectionScope,
    ResourceManager,
    Scope,
    StreamScope,
    TokenBucket,
    stream_scope_of,
)
from p2pnet.resources.relay import CircuitScope, RelayScopes

__all__ = [
    "PEER_MEMORY_CAP",
    "CircuitScope",
    "ConnectionScope",
    "ProtocolLimits",
    "RelayLimits",
    "RelayScopes",
    "ResourceLimits",
    "ResourceManager",
    "Scope",
    "StreamScope",
    "TokenBucket",
    "stream_scope_of",
]
