"""Resource accounting: what each peer makes us hold, bounded (docs/limits.md)."""

from p2pnet.resources.limits import PEER_MEMORY_CAP, ProtocolLimits, ResourceLimits
from p2pnet.resources.manager import (
    ConnectionScope,
    ResourceManager,
    Scope,
    StreamScope,
    TokenBucket,
    stream_scope_of,
)

__all__ = [
    "PEER_MEMORY_CAP",
    "ConnectionScope",
    "ProtocolLimits",
    "ResourceLimits",
    "ResourceManager",
    "Scope",
    "StreamScope",
    "TokenBucket",
    "stream_scope_of",
]
