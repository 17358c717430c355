"""p2pnet: a pure-Python, asyncio-native libp2p stack and an agent network on top.

The public API is small and imported lazily (``import p2pnet`` stays cheap)::

    from p2pnet import Node, NodeConfig, KeyPair, KeyType, PeerID, P2PError
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Node": "p2pnet.node",
    "NodeError": "p2pnet.errors",
    "NodeConfig": "p2pnet.config",
    "ConfigError": "p2pnet.config",
    "KeyPair": "p2pnet.crypto.keys",
    "KeyType": "p2pnet.crypto.keys",
    "PeerID": "p2pnet.peer.peer_id",
    "P2PError": "p2pnet.errors",
    "Agent": "p2pnet.agent.agent",
    "AgentConfig": "p2pnet.agent.agent",
}

__all__ = [
    "Agent",
    "AgentConfig",
    "ConfigError",
    "KeyPair",
    "KeyType",
    "Node",
    "NodeConfig",
    "NodeError",
    "P2PError",
    "PeerID",
    "__version__",
]

if TYPE_CHECKING:
    from p2pnet.agent.agent import Agent, AgentConfig
    from p2pnet.config import ConfigError, NodeConfig
    from p2pnet.crypto.keys import KeyPair, KeyType
    from p2pnet.errors import NodeError, P2PError
    from p2pnet.node import Node
    from p2pnet.peer.peer_id import PeerID


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'p2pnet' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
