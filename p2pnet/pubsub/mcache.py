"""The message cache (history windows for IWANT and IHAVE) and the seen-message time cache."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from p2pnet.peer.peer_id import PeerID

K = TypeVar("K", bound=Hashable)


class MessageCache:
    """Full messages of the last ``history`` heartbeats; IDs of the last ``gossip`` are gossiped.

    ``shift()`` runs once per heartbeat: the oldest window is dropped with its messages.
    Messages are kept encoded (the protobuf ``Message`` bytes), ready to forward. Every node
    caches every message it relays, so the maps hold plain values only (bytes, str): no
    container per message for the cyclic garbage collector to track.
    """

    def __init__(self, gossip: int, history: int) -> None:
        if not 1 <= gossip <= history:
            raise ValueError(f"need 1 <= gossip <= history (got {gossip}, {history})")
        self.gossip = gossip
        self.history = history
        self._msgs: dict[bytes, bytes] = {}
        self._topics: dict[bytes, str] = {}
        #: the bytes of each cached message -> its ID: a duplicate arrives as the same bytes
        #: (it is forwarded unchanged), so the router can tell it without decoding it again
        self._ids: dict[bytes, bytes] = {}
        #: ``lookup_bytes(data)``: the ID of the cached message encoded as exactly ``data``, or
        #: None (the dict's own ``get``: no Python call per message received)
        self.lookup_bytes: Callable[[bytes], bytes | None] = self._ids.get
        #: ``topic_of(msg_id)`` for a cached message (the dict's ``__getitem__``)
        self.cached_topic: Callable[[bytes], str] = self._topics.__getitem__
        #: ``msg_id in mcache.holds``: whether a message is cached (a C-level test)
        self.holds = self._msgs.keys()
        self._windows: deque[list[bytes]] = deque([] for _ in range(history))
        #: how often each peer asked for a message (IWANT), for the messages asked for
        self._asked: dict[bytes, dict[PeerID, int]] = {}

    def __len__(self) -> int:
        return len(self._msgs)

    def __contains__(self, msg_id: bytes) -> bool:
        return msg_id in self._msgs

    def put(self, msg_id: bytes, topic: str, data: bytes) -> None:
        msgs = self._msgs
        if msg_id in msgs:
            return
        msgs[msg_id] = data
        self._topics[msg_id] = topic
        self._ids.setdefault(data, msg_id)
        self._windows[0].append(msg_id)

    def put_new(self, msg_ids: list[bytes], topic: str, datas: list[bytes]) -> None:
        """:meth:`put` for each message in turn, none of them cached yet, all in ``topic``."""
        self._msgs.update(zip(msg_ids, datas, strict=True))
        self._topics.update(dict.fromkeys(msg_ids, topic))
        # (put's setdefault: the same bytes are the same message, so they have the same ID)
        self._ids.update(zip(datas, msg_ids, strict=True))
        self._windows[0].extend(msg_ids)

    def get(self, msg_id: bytes) -> bytes | None:
        return self._msgs.get(msg_id)

    def topic_of(self, msg_id: bytes) -> str | None:
        return self._topics.get(msg_id)

    def get_for_peer(self, msg_id: bytes, peer: PeerID) -> tuple[bytes, str, int] | None:
        """The message, its topic and how often ``peer`` has now asked for it (counted)."""
        data = self._msgs.get(msg_id)
        if data is None:
            return None
        counts = self._asked.setdefault(msg_id, {})
        count = counts.get(peer, 0) + 1
        counts[peer] = count
        return data, self._topics[msg_id], count

    def gossip_ids(self, topic: str) -> list[bytes]:
        """IDs of the messages in ``topic`` from the last ``gossip`` windows."""
        topics = self._topics
        out: list[bytes] = []
        for i in range(self.gossip):
            out.extend(mid for mid in self._windows[i] if topics[mid] == topic)
        return out

    def gossip_topics(self) -> set[str]:
        topics = self._topics
        return {topics[mid] for i in range(self.gossip) for mid in self._windows[i]}

    def shift(self) -> None:
        msgs, topics, ids, asked = self._msgs, self._topics, self._ids, self._asked
        for mid in self._windows.pop():
            data = msgs.pop(mid)
            del topics[mid]
            if ids.get(data) == mid:
                del ids[data]
            if asked:
                asked.pop(mid, None)
        self._windows.appendleft([])


class TimeCache(Generic[K]):
    """Keys remembered for ``ttl`` seconds.

    A plain dict (key -> expiry) and, in insertion order (which is expiry order), the keys in
    one flat queue with their expiries as runs in two more (an expiry, how many keys share it):
    a dict's insertion is cheaper than an ``OrderedDict``'s (no node per key), keys added at the
    same time (one read's new messages) share one run, and a key costs no container of its own
    (every relayed message is remembered for ``ttl``: a tuple or list per insertion would be
    objects for the cyclic garbage collector to go through for that long).
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._items: dict[K, float] = {}
        self._keys: deque[K] = deque()
        self._expiries: deque[float] = deque()
        self._counts: deque[int] = deque()
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
        self.insert(key, now + self.ttl)
        return True

    def insert(self, key: K, expiry: float) -> None:
        """Remember ``key``, known to be absent (``key not in keys`` just tested), until
        ``expiry``: :meth:`add` for the router's per-message path."""
        self._items[key] = expiry
        self._keys.append(key)
        self._extend_run(expiry, 1)

    def insert_new(self, keys: list[K], expiry: float) -> None:
        """:meth:`insert` for each of ``keys`` (distinct, none of them here), in order."""
        self._items.update(dict.fromkeys(keys, expiry))
        self._keys.extend(keys)
        self._extend_run(expiry, len(keys))

    def _extend_run(self, expiry: float, count: int) -> None:
        expiries = self._expiries
        if expiries and expiries[-1] == expiry:
            self._counts[-1] += count
        else:
            expiries.append(expiry)
            self._counts.append(count)

    def expire(self, now: float) -> int:
        """Forget the keys whose time is up (runs in insertion order, up to the first one not
        due); returns how many."""
        n = 0
        items, keys, expiries, counts = self._items, self._keys, self._expiries, self._counts
        while expiries and expiries[0] <= now:
            expiries.popleft()
            count = counts.popleft()
            for _ in range(count):
                del items[keys.popleft()]
            n += count
        return n
