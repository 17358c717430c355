"""The on-chain agent registry (ERC-8004 Identity Registry): settings, backends, cache, policy.

Importing this package stays light; the chain backend loads web3.py (the ``registry`` extra)
only when a node actually talks to a chain.
"""

from p2pnet.registry.cache import AgentStatus
from p2pnet.registry.errors import RegistryError, RegistrySettingsError, RegistryUnavailable
from p2pnet.registry.settings import RegistryPolicy, RegistrySettings

__all__ = [
    "AgentStatus",
    "RegistryError",
    "RegistryPolicy",
    "RegistrySettings",
    "RegistrySettingsError",
    "RegistryUnavailable",
]
