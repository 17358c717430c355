"""The ``Registry`` interface (what a node asks an agent registry) and its static backend.

A backend answers the raw questions (``balanceOf``, ``getAgentWallet``, ``tokenURI``, events
since a block); :mod:`p2pnet.registry.guard` caches the answers and decides. The chain backend
is :mod:`p2pnet.registry.chain`; :class:`StaticRegistry` is a fixed table for tests and
chain-less networks.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from p2pnet.crypto.eth import to_checksum_address


@dataclass(frozen=True)
class RegistryEvent:
    """A registry event that changes who is registered: what it names, for invalidation."""

    kind: str  # Registered | Transfer | URIUpdated | MetadataSet
    block: int
    agent_id: int
    #: Addresses the event concerns (owner, from, to), checksummed.
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentToken:
    """What the registry says about one agentId."""

    agent_id: int
    owner: str
    wallet: str | None  # None: no agentWallet set
    uri: str


class Registry(abc.ABC):
    """An ERC-8004 identity registry, as a node sees it."""

    #: ``eip155:<chainId>:<address>`` once connected (CAIP-10 form of the registry).
    ref: str = ""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Check that the registry can be used; raises RegistryUnavailable if not."""

    @abc.abstractmethod
    async def balance_of(self, address: str) -> int: ...

    @abc.abstractmethod
    async def token(self, agent_id: int) -> AgentToken | None:
        """Owner, agentWallet and URI of ``agent_id``; None if the token does not exist."""

    @abc.abstractmethod
    async def latest_block(self) -> int: ...

    @abc.abstractmethod
    async def events(self, from_block: int, to_block: int) -> list[RegistryEvent]:
        """Registered/Transfer/URIUpdated/MetadataSet events in ``from_block..to_block``."""

    async def find_agent_id(self, address: str) -> int | None:
        """An agentId that ``address`` owns or is the wallet of, if the backend can tell."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


@dataclass
class StaticRegistry(Registry):
    """A fixed registry: ``tokens`` by agentId. ``set_token``/``remove`` change it and record an
    event, so caches following it see the change as they would on a chain."""

    tokens: dict[int, AgentToken] = field(default_factory=dict)
    chain_id: int = 0
    address: str = "0x" + "00" * 20
    _log: list[RegistryEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ref = f"eip155:{self.chain_id}:{to_checksum_address(self.address)}"

    @classmethod
    def of(cls, owners: dict[int, str], uris: dict[int, str] | None = None) -> StaticRegistry:
        uris = uris or {}
        tokens = {
            i: AgentToken(i, to_checksum_address(a), to_checksum_address(a), uris.get(i, ""))
            for i, a in owners.items()
        }
        return cls(tokens=tokens)

    def set_token(self, token: AgentToken) -> None:
        before = self.tokens.get(token.agent_id)
        self.tokens[token.agent_id] = token
        names = (token.owner,) + ((before.owner,) if before else ())
        self._log.append(RegistryEvent("Transfer", len(self._log) + 1, token.agent_id, names))

    def remove(self, agent_id: int) -> None:
        before = self.tokens.pop(agent_id, None)
        names = (before.owner,) if before else ()
        self._log.append(RegistryEvent("Transfer", len(self._log) + 1, agent_id, names))

    async def connect(self) -> None:
        return None

    async def balance_of(self, address: str) -> int:
        a = address.lower()
        return sum(1 for t in self.tokens.values() if t.owner.lower() == a)

    async def token(self, agent_id: int) -> AgentToken | None:
        return self.tokens.get(agent_id)

    async def latest_block(self) -> int:
        return len(self._log)

    async def events(self, from_block: int, to_block: int) -> list[RegistryEvent]:
        return [e for e in self._log if from_block <= e.block <= to_block]

    async def find_agent_id(self, address: str) -> int | None:
        a = address.lower()
        for t in self.tokens.values():
            if t.owner.lower() == a or (t.wallet or "").lower() == a:
                return t.agent_id
        return None
