"""The connection manager: which connections to close when there are too many (sans-IO).

Once the host holds more than ``high_water`` connected peers, it closes the connections of the
least useful peers until ``low_water`` remain. How useful a peer is, is the sum of its *tags*
(set by services: ``bootstrap``, ``pubsub-mesh``, ``dht-table``...), plus a bonus for recent use.
Protected peers (a tag with ``protect=True``, e.g. bootstrap) and peers connected for less than
``grace_period`` are never trimmed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from p2pnet.peer.peer_id import PeerID

#: A service's opinion of a peer: a value added to its usefulness (0 if the peer means nothing).
PeerValue = Callable[[PeerID], int]


@dataclass
class ConnManagerConfig:
    #: Connected peers kept after a trim, and the count above which a trim starts.
    low_water: int = 160
    high_water: int = 192
    #: A newly connected peer is not trimmed for this many seconds.
    grace_period: float = 20.0
    #: Value of a peer that opened or was sent a stream within ``recent_use`` seconds.
    recent_use_value: int = 10
    recent_use: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.low_water <= self.high_water:
            raise ValueError("connection manager: need 0 < low_water <= high_water")


class ConnManager:
    """Tags, protection and the trim decision; the host closes what :meth:`to_trim` names."""

    def __init__(self, config: ConnManagerConfig | None = None) -> None:
        self.config = config or ConnManagerConfig()
        self._tags: dict[PeerID, dict[str, int]] = {}
        self._protected: dict[PeerID, set[str]] = {}
        self._last_used: dict[PeerID, float] = {}
        self._values: dict[str, PeerValue] = {}
        #: Peers disconnected by trims so far.
        self.trimmed = 0
        # After a trim that could not get down to the low watermark (the rest are protected or
        # in their grace period): no trim can do more before this time, unless a protection
        # is lifted. Spares a scan of every peer on each new connection meanwhile.
        self._quiet_until = -math.inf

    # -- what services say about peers -------------------------------------------------------

    def tag(self, peer: PeerID, name: str, value: int, *, protect: bool = False) -> None:
        self._tags.setdefault(peer, {})[name] = value
        if protect:
            self._protected.setdefault(peer, set()).add(name)

    def untag(self, peer: PeerID, name: str) -> None:
        tags = self._tags.get(peer)
        if tags is not None:
            tags.pop(name, None)
            if not tags:
                del self._tags[peer]
        protected = self._protected.get(peer)
        if protected is not None:
            protected.discard(name)
            if not protected:
                del self._protected[peer]
                self._quiet_until = -math.inf  # a trim may find one more candidate now

    def add_value(self, name: str, value: PeerValue) -> None:
        """A service's live opinion (e.g. mesh membership), asked only when trimming."""
        self._values[name] = value

    def used(self, peer: PeerID, now: float) -> None:
        self._last_used[peer] = now

    def forget(self, peer: PeerID) -> None:
        """The peer disconnected: its tags given by value functions stay with the services."""
        self._last_used.pop(peer, None)

    def is_protected(self, peer: PeerID) -> bool:
        return peer in self._protected

    def value(self, peer: PeerID, now: float) -> int:
        total = sum(self._tags.get(peer, {}).values())
        for fn in self._values.values():
            total += fn(peer)
        last = self._last_used.get(peer)
        if last is not None and now - last < self.config.recent_use:
            total += self.config.recent_use_value
        return total

    # -- the decision ----------------------------------------------------------------------------

    def to_trim(self, peers: Iterable[tuple[PeerID, float]], now: float) -> list[PeerID]:
        """Which of the connected ``(peer, connected_since)`` to disconnect, least useful first."""
        connected = list(peers)
        cfg = self.config
        if len(connected) <= cfg.high_water:
            return []
        excess = len(connected) - cfg.low_water
        candidates = []
        grace_ends = math.inf
        for p, since in connected:
            if self.is_protected(p):
                continue
            if now - since >= cfg.grace_period:
                candidates.append((self.value(p, now), since, p))
            else:
                grace_ends = min(grace_ends, since + cfg.grace_period)
        candidates.sort(key=lambda c: (c[0], -c[1]))  # least valuable, then newest, first
        if len(candidates) < excess:
            self._quiet_until = grace_ends
        return [p for _, _, p in candidates[:excess]]

    def trim_may_help(self, now: float) -> bool:
        """Whether a trim now could disconnect someone the last one could not: False until
        the first grace period it waited for ends (or a protection is lifted)."""
        return now >= self._quiet_until
