"""Per-peer quotas of a DHT server's record and provider stores (sans-IO).

Without them one peer filled a 65,536-record store with 70,000 PUT_VALUEs in seconds and every
legitimate record was refused for a day and a half. :class:`StoreQuota` remembers which peer
stored which key and decides what a new entry evicts:

* a peer at its quota (``max_per_peer``) replaces its own oldest entry: a peer can only push out
  what it stored itself;
* when the store is full, the entry of the peer holding the most is evicted, but only for a peer
  holding fewer than that one: the largest contributor is refused instead (``QuotaExceeded``).

So a flood from one peer, or from a few, never evicts the records of peers that store little.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from p2pnet.kad.errors import KadError
from p2pnet.peer.peer_id import PeerID


class QuotaExceeded(KadError):
    """The peer may not store another entry now."""


class StoreQuota:
    """Which peer owns which entry of one store; what a new entry must evict."""

    def __init__(self, max_per_peer: int) -> None:
        if max_per_peer < 1:
            raise ValueError("max_per_peer must be positive")
        self.max_per_peer = max_per_peer
        self._by_peer: dict[PeerID, OrderedDict[Hashable, None]] = {}
        self._owner: dict[Hashable, PeerID] = {}

    def count(self, peer: PeerID) -> int:
        owned = self._by_peer.get(peer)
        return len(owned) if owned is not None else 0

    def admit(
        self, peer: PeerID, entry: Hashable, store_size: int, store_max: int
    ) -> list[Hashable]:
        """Entries to remove so that ``peer`` may store ``entry``; raises QuotaExceeded.

        Call :meth:`stored` once it is stored, :meth:`removed` for every entry removed.
        """
        if entry in self._owner:
            return []  # a replacement takes no new room
        owned = self._by_peer.get(peer)
        if owned is not None and len(owned) >= self.max_per_peer:
            return [next(iter(owned))]
        if store_size < store_max:
            return []
        mine = self.count(peer)
        biggest = max(self._by_peer, key=lambda p: len(self._by_peer[p]), default=None)
        if biggest is None or biggest == peer or self.count(biggest) <= mine + 1:
            raise QuotaExceeded(f"store full ({store_max}); {peer} holds {mine} of it")
        return [next(iter(self._by_peer[biggest]))]

    def stored(self, peer: PeerID, entry: Hashable) -> None:
        old = self._owner.get(entry)
        if old is not None and old != peer:
            self.removed(entry)
        self._owner[entry] = peer
        owned = self._by_peer.setdefault(peer, OrderedDict())
        owned[entry] = None
        owned.move_to_end(entry)

    def removed(self, entry: Hashable) -> None:
        peer = self._owner.pop(entry, None)
        if peer is None:
            return
        owned = self._by_peer.get(peer)
        if owned is not None:
            owned.pop(entry, None)
            if not owned:
                del self._by_peer[peer]
