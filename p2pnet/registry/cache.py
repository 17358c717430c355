"""The registry cache of one node (sans-IO: every method takes ``now``).

It keeps the answers a registry gave (``balanceOf`` per address, owner/agentWallet/URI per
agentId), each fresh for ``ttl`` seconds, and forgets the entries a followed event names
(``Registered``, ``Transfer``, ``URIUpdated``, ``MetadataSet``). Expired entries stay as a
fallback while the registry cannot be asked ("decisions use the cache"). Bounded: the least
recently used entries go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from p2pnet.registry.backend import AgentToken, RegistryEvent

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class AgentStatus:
    """Whether ``address`` is a registered agent, and as which agentId (when known)."""

    address: str  # lowercase
    registered: bool
    agent_id: int | None = None
    uri: str = ""
    #: True when the answer comes from an expired cache entry (the registry was unreachable).
    stale: bool = False


class _Entries(Generic[K, V]):
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.items: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K) -> tuple[V, float] | None:
        hit = self.items.get(key)
        if hit is not None:
            self.items.move_to_end(key)
        return hit

    def put(self, key: K, value: V, now: float) -> None:
        self.items[key] = (value, now)
        self.items.move_to_end(key)
        while len(self.items) > self.max_entries:
            self.items.popitem(last=False)


class RegistryCache:
    def __init__(self, ttl: float = 300.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self._balances: _Entries[str, int] = _Entries(max_entries)
        self._tokens: _Entries[int, AgentToken | None] = _Entries(max_entries)

    def __len__(self) -> int:
        return len(self._balances.items) + len(self._tokens.items)

    def put_balance(self, address: str, balance: int, now: float) -> None:
        self._balances.put(address.lower(), balance, now)

    def put_token(self, agent_id: int, token: AgentToken | None, now: float) -> None:
        self._tokens.put(agent_id, token, now)

    def needs(self, address: str, agent_id: int | None, now: float) -> tuple[bool, bool]:
        """Which answers are missing or expired: ``(balance, token)``."""
        bal = self._balances.get(address.lower())
        need_balance = bal is None or now - bal[1] >= self.ttl
        need_token = False
        if agent_id is not None:
            tok = self._tokens.get(agent_id)
            need_token = tok is None or now - tok[1] >= self.ttl
        return need_balance, need_token

    def status(
        self, address: str, agent_id: int | None, now: float, *, allow_stale: bool = False
    ) -> AgentStatus | None:
        """The cached verdict; None when an answer it needs is missing (or expired, unless
        ``allow_stale``). Registered = ``balanceOf > 0`` or the agentWallet of ``agent_id``."""
        addr = address.lower()
        bal = self._balances.get(addr)
        tok = self._tokens.get(agent_id) if agent_id is not None else None
        stale = False
        if bal is None or (agent_id is not None and tok is None):
            return None
        if now - bal[1] >= self.ttl or (tok is not None and now - tok[1] >= self.ttl):
            if not allow_stale:
                return None
            stale = True
        balance = bal[0]
        token = tok[0] if tok is not None else None
        is_wallet = token is not None and (token.wallet or "").lower() == addr
        is_owner = token is not None and token.owner.lower() == addr
        registered = balance > 0 or is_wallet
        own = token if (is_wallet or is_owner) else None
        return AgentStatus(
            address=addr,
            registered=registered,
            agent_id=own.agent_id if own is not None else None,
            uri=own.uri if own is not None else "",
            stale=stale,
        )

    def apply(self, events: Iterable[RegistryEvent]) -> set[str]:
        """Forget what the events change; returns the (lowercase) addresses they name."""
        touched: set[str] = set()
        for event in events:
            self._tokens.items.pop(event.agent_id, None)
            for address in event.addresses:
                addr = address.lower()
                self._balances.items.pop(addr, None)
                touched.add(addr)
        return touched

    def clear(self) -> None:
        self._balances.items.clear()
        self._tokens.items.clear()
