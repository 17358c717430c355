"""The peers a kad server names in its answers, encoded once and reused while unchanged.

A server names the same few peers (its table's closest to the keys it is asked about) in
answer after answer; encoding each entry costs more than the rest of the answer. An entry is
made again only when what it says changes: the peer's addresses or whether we are connected
to it. The cache is bounded (answers may name peers outside the routing table: a known
target, providers): past ``max_size`` peers the oldest entry goes.
"""

from __future__ import annotations

from p2pnet.kad.messages import encode_peer
from p2pnet.peer.peer_id import PeerID

__all__ = ["PeerEntries"]


class PeerEntries:
    """Length-prefixed ``Peer`` messages (:func:`~p2pnet.kad.messages.encode_peer`) by peer,
    valid for the addresses and connection type they were made from."""

    __slots__ = ("_entries", "max_addrs", "max_size")

    def __init__(self, max_addrs: int, max_size: int = 1024) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_addrs = max_addrs
        self.max_size = max_size
        self._entries: dict[PeerID, tuple[tuple[bytes, ...], int, bytes]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def encoded(self, peer: PeerID, addrs: tuple[bytes, ...], connection: int) -> bytes:
        """``peer`` with (the first ``max_addrs`` of) ``addrs`` and ``connection``."""
        entries = self._entries
        hit = entries.get(peer)
        if hit is not None and hit[1] == connection and hit[0] == addrs:
            return hit[2]
        entry = encode_peer(peer.to_bytes(), addrs[: self.max_addrs], connection)
        if hit is None and len(entries) >= self.max_size:
            del entries[next(iter(entries))]  # the oldest
        entries[peer] = (addrs, connection, entry)
        return entry
