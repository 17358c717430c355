"""A bounded map whose entries also expire: what a node keeps about peers it only hears from.

Entries are ordered by when they were last written, so both bounds are cheap: the least recently
written entry goes first when the map is full, and expired entries are always at the front.
Time comes from the node's clock, so simulations on a virtual clock expire entries too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

from p2pnet.clock import Clock

K = TypeVar("K")
V = TypeVar("V")


class ExpiringCache(Generic[K, V]):
    """At most ``max_entries`` entries, each forgotten ``ttl`` seconds after its last write."""

    def __init__(self, max_entries: int, ttl: float, clock: Clock) -> None:
        if max_entries <= 0 or ttl <= 0:
            raise ValueError("max_entries and ttl must be positive")
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (value, self._clock.monotonic() + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        self._expire()

    def get(self, key: K, default: V | None = None) -> V | None:
        self._expire()
        entry = self._entries.get(key)
        return default if entry is None else entry[0]

    def pop(self, key: K, default: V | None = None) -> V | None:
        entry = self._entries.pop(key, None)
        return default if entry is None else entry[0]

    def __getitem__(self, key: K) -> V:
        self._expire()
        return self._entries[key][0]

    def __contains__(self, key: object) -> bool:
        self._expire()
        return key in self._entries

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        self._expire()
        return iter(list(self._entries))

    def items(self) -> list[tuple[K, V]]:
        self._expire()
        return [(key, value) for key, (value, _) in self._entries.items()]

    def values(self) -> list[V]:
        self._expire()
        return [value for value, _ in self._entries.values()]

    def _expire(self) -> None:
        now = self._clock.monotonic()
        entries = self._entries
        while entries:
            key, (_, expires) = next(iter(entries.items()))
            if expires > now:
                return
            del entries[key]
