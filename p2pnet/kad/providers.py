"""Provider records: which peers can serve the content under a key (ADD_PROVIDER/GET_PROVIDERS).

The store is a small synchronous interface (:class:`ProviderStore`) with a bounded in-memory
default; provider *addresses* live in the host's peer store with their own, shorter TTL.
No clock is read here: callers pass the (wall-clock) time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict

from p2pnet.kad.records import StoreFull
from p2pnet.peer.peer_id import PeerID


class ProviderStore(ABC):
    """Where a DHT server keeps provider records."""

    @abstractmethod
    def add_provider(self, key: bytes, peer: PeerID, expires: float, *, now: float) -> None:
        """Record (or renew) ``peer`` as a provider of ``key`` until ``expires`` (unix time;
        ``now`` is the current one). Raises :class:`StoreFull` when a new key does not fit."""

    @abstractmethod
    def get_providers(self, key: bytes, now: float) -> list[PeerID]:
        """Unexpired providers of ``key``, most recently added first."""

    @abstractmethod
    def remove_provider(self, key: bytes, peer: PeerID) -> None: ...

    @abstractmethod
    def gc(self, now: float) -> int:
        """Drop expired records; returns how many."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of keys with providers."""


class InMemoryProviderStore(ProviderStore):
    """At most ``max_keys`` keys (new keys beyond it are refused after dropping expired ones)
    and ``max_per_key`` providers per key (a new provider evicts the one expiring first)."""

    def __init__(self, max_keys: int = 65536, max_per_key: int = 64) -> None:
        self.max_keys = max_keys
        self.max_per_key = max_per_key
        self._providers: dict[bytes, OrderedDict[PeerID, float]] = {}

    def add_provider(self, key: bytes, peer: PeerID, expires: float, *, now: float) -> None:
        entries = self._providers.get(key)
        if entries is None:
            if len(self._providers) >= self.max_keys:
                self.gc(now)
            if len(self._providers) >= self.max_keys:
                raise StoreFull(f"provider store is full ({self.max_keys} keys)")
            entries = self._providers[key] = OrderedDict()
        if peer not in entries and len(entries) >= self.max_per_key:
            soonest = min(entries, key=lambda p: entries[p])
            del entries[soonest]
        entries[peer] = expires
        entries.move_to_end(peer)

    def get_providers(self, key: bytes, now: float) -> list[PeerID]:
        entries = self._providers.get(key)
        if not entries:
            return []
        expired = [p for p, exp in entries.items() if exp <= now]
        for p in expired:
            del entries[p]
        if not entries:
            del self._providers[key]
            return []
        return list(reversed(entries))

    def remove_provider(self, key: bytes, peer: PeerID) -> None:
        entries = self._providers.get(key)
        if entries is not None:
            entries.pop(peer, None)
            if not entries:
                del self._providers[key]

    def gc(self, now: float) -> int:
        dropped = 0
        for key in list(self._providers):
            entries = self._providers[key]
            for p in [p for p, exp in entries.items() if exp <= now]:
                del entries[p]
                dropped += 1
            if not entries:
                del self._providers[key]
        return dropped

    def __len__(self) -> int:
        return len(self._providers)

    def count(self, key: bytes) -> int:
        return len(self._providers.get(key, ()))
