"""The message cache (history windows for IWANT and IHAVE) and the seen-message time cache."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from p2pnet.peer.peer_id import PeerID

K = TypeVar("K", bound=Hashable)


class _Entry:
    __slots__ = ("counts", "data", "topic")

    def __init__(self, topic: str, data: bytes) -> None:
        self.topic = topic
        self.data = data
        self.counts: dict[PeerID, int] = {}


class MessageCache:
    """Full messages of the last ``history`` heartbeats; IDs of the last ``gossip`` are gossiped.

    ``shift()`` runs once per heartbeat: the oldest window is dropped with its messages.
    Messages are kept encoded (the protobuf ``Message`` bytes), ready to forward.
    """

    def __init__(self, gossip: int, history: int) -> None:
        if not 1 <= gossip <= history:
            raise ValueError(f"need 1 <= gossip <= history (got {gossip}, {history})")
        self.gossip = gossip
        self.history = history
        self._msgs: dict[bytes, _Entry] = {}
        #: the bytes of each cached message -> its ID: a duplicate arrives as the same bytes (it
        #: is forwarded unchanged), so the router can tell it without decoding it again
        self._ids: dict[bytes, tuple[bytes, str]] = {}
        #: ``lookup_bytes(data)``: the ID and topic of the cached message encoded as exactly
        #: ``data``, or None (the dict's own ``get``: no Python call per message received)
        self.lookup_bytes: Callable[[bytes], tuple[bytes, str] | None] = self._ids.get
        self._windows: deque[list[tuple[bytes, str]]] = deque([] for _ in range(history))

    def __len__(self) -> int:
        return len(self._msgs)

    def __contains__(self, msg_id: bytes) -> bool:
        return msg_id in self._msgs

    def put(self, msg_id: bytes, topic: str, data: bytes) -> None:
        if msg_id in self._msgs:
            return
        self._msgs[msg_id] = _Entry(topic, data)
        self._ids.setdefault(data, (msg_id, topic))
        self._windows[0].append((msg_id, topic))

    def get(self, msg_id: bytes) -> bytes | None:
        entry = self._msgs.get(msg_id)
        return None if entry is None else entry.data

    def topic_of(self, msg_id: bytes) -> str | None:
        entry = self._msgs.get(msg_id)
        return None if entry is None else entry.topic

    def get_for_peer(self, msg_id: bytes, peer: PeerID) -> tuple[bytes, str, int] | None:
        """The message, its topic and how often ``peer`` has now asked for it (counted)."""
        entry = self._msgs.get(msg_id)
        if entry is None:
            return None
        count = entry.counts.get(peer, 0) + 1
        entry.counts[peer] = count
        return entry.data, entry.topic, count

    def gossip_ids(self, topic: str) -> list[bytes]:
        """IDs of the messages in ``topic`` from the last ``gossip`` windows."""
        out: list[bytes] = []
        for i in range(self.gossip):
            out.extend(mid for mid, t in self._windows[i] if t == topic)
        return out

    def gossip_topics(self) -> set[str]:
        return {t for i in range(self.gossip) for _, t in self._windows[i]}

    def shift(self) -> None:
        for mid, _ in self._windows.pop():
            entry = self._msgs.pop(mid, None)
            if entry is not None:
                known = self._ids.get(entry.data)
                if known is not None and known[0] == mid:
                    del self._ids[entry.data]
        self._windows.appendleft([])


class TimeCache(Generic[K]):
    """Keys remembered for ``ttl`` seconds (insertion order = expiry order)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._items: OrderedDict[K, float] = OrderedDict()
        #: a live read-only view of the keys: ``key in cache.keys`` without a Python call
        self.keys = self._items.keys()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def add(self, key: K, now: float) -> bool:
        """Remember ``key``; False if it was already there (its expiry is not extended)."""
        if key in self._items:
            return False
        self._items[key] = now + self.ttl
        return True

    def expire(self, now: float) -> int:
        """Forget the keys whose time is up; returns how many."""
        n = 0
        items = self._items
        while items:
            key, expiry = next(iter(items.items()))
            if expiry > now:
                break
            del items[key]
            n += 1
        return n
