"""The Kademlia routing table (sans-IO): k-buckets by XOR distance of SHA-256 keys.

Every peer ID and every DHT key is mapped into one 256-bit key space by SHA-256 of its bytes;
the distance of two keys is their XOR read as an integer. Bucket ``i`` holds up to ``k`` peers
whose key shares exactly ``i`` leading bits with ours (the spec's "k peers per common-prefix
length"), ordered from least to most recently seen.

A full bucket does not drop a live peer for a new one: :meth:`RoutingTable.add` parks the new
peer in the bucket's replacement cache and names the least recently seen peer for a liveness
check (one check per bucket at a time). The caller checks it (sends it a request) and reports
with :meth:`RoutingTable.liveness_result`: a live peer moves to the tail, a dead one is replaced
by the most recently seen candidate. Peers that fail requests are penalised
(:meth:`record_failure`) and leave after ``max_failures`` failures in a row; a peer that answers
garbage can be removed at once. :meth:`unanswered_since` names the peers that have not answered
a request for a while, for the periodic liveness check (the behaviour schedules it).

No I/O and no clock: callers pass ``now`` (any monotonic seconds).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import heapq
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from p2pnet.peer.peer_id import PeerID

KEY_BITS = 256


def kad_key(data: bytes) -> bytes:
    """The position of a peer ID (its bytes) or a DHT key in the key space: SHA-256."""
    return hashlib.sha256(data).digest()


def key_int(data: bytes) -> int:
    return int.from_bytes(data, "big")


@functools.lru_cache(maxsize=65536)
def peer_key_int(peer_id: bytes) -> int:
    """The position of a peer (its ID's bytes) as an integer: ``key_int(kad_key(peer_id))``.

    The same peers come back in table update after update and answer after answer, so the
    hash of this pure function is memoised (bounded)."""
    return int.from_bytes(hashlib.sha256(peer_id).digest(), "big")


def distance(a: bytes, b: bytes) -> int:
    """XOR distance of two 32-byte keys (already hashed)."""
    return key_int(a) ^ key_int(b)


def common_prefix_length(a: bytes, b: bytes) -> int:
    """Leading bits two 32-byte keys share (256 when equal)."""
    return KEY_BITS - distance(a, b).bit_length()


@dataclass
class Entry:
    peer: PeerID
    key: int  # kad key as an integer
    added_at: float
    last_seen: float
    failures: int = 0
    #: When the peer last answered one of our requests (or entered the table): what the
    #: periodic liveness check looks at. Identify alone does not refresh it: a peer that
    #: claims server mode must also answer kad requests to stay.
    answered_at: float = -math.inf

    def __post_init__(self) -> None:
        if self.answered_at == -math.inf:
            self.answered_at = self.added_at


class AddResult(enum.Enum):
    ADDED = "added"  # new peer, bucket had room
    UPDATED = "updated"  # already present: moved to the tail (most recently seen)
    FULL = "full"  # bucket full: the peer waits in the replacement cache
    REJECTED = "rejected"  # our own ID


@dataclass
class AddOutcome:
    result: AddResult
    #: When ``result`` is FULL: the least recently seen peer of the bucket, to check for
    #: liveness (None when a check of that bucket is already under way).
    check: PeerID | None = None


class RoutingTable:
    """k-buckets indexed by common-prefix length with our own key."""

    def __init__(self, local: PeerID, k: int = 20, *, max_failures: int = 3) -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        self.local = local
        self.local_key = kad_key(local.to_bytes())
        self._local_int = key_int(self.local_key)
        self.k = k
        self.max_failures = max_failures
        # Only non-empty buckets and replacement caches exist (cpl -> peers): a node of a
        # large network holds a dozen or two, not 256 of each (~70 KB per node).
        # Plain dicts (insertion order = least recently seen first): iterating an OrderedDict's
        # values looks every key up again, a Python-level PeerID hash per entry.
        self._buckets: dict[int, dict[PeerID, Entry]] = {}
        self._replacements: dict[int, OrderedDict[PeerID, float]] = {}
        self._checking: dict[int, PeerID] = {}
        self._cpl_of: dict[PeerID, int] = {}
        self._last_refresh: list[float] = [-math.inf] * KEY_BITS  # never refreshed

    # -- queries ----------------------------------------------------------------------------

    def cpl(self, peer: PeerID) -> int:
        """Common-prefix length of ``peer``'s key with ours: its bucket index."""
        return KEY_BITS - (self._local_int ^ peer_key_int(peer.to_bytes())).bit_length()

    def cpl_of_key(self, hashed_key: bytes) -> int:
        return KEY_BITS - (self._local_int ^ key_int(hashed_key)).bit_length()

    def __len__(self) -> int:
        return len(self._cpl_of)

    def __contains__(self, peer: object) -> bool:
        return peer in self._cpl_of

    def __iter__(self) -> Iterator[PeerID]:
        return iter(list(self._cpl_of))

    def peers(self) -> list[PeerID]:
        return list(self._cpl_of)

    def entry(self, peer: PeerID) -> Entry | None:
        cpl = self._cpl_of.get(peer)
        return None if cpl is None else self._buckets[cpl].get(peer)

    def _bucket(self, cpl: int) -> dict[PeerID, Entry]:
        bucket = self._buckets.get(cpl)
        if bucket is None:
            bucket = self._buckets[cpl] = {}
        return bucket

    def _replacement_cache(self, cpl: int) -> OrderedDict[PeerID, float]:
        cache = self._replacements.get(cpl)
        if cache is None:
            cache = self._replacements[cpl] = OrderedDict()
        return cache

    def _forget_replacement(self, cpl: int, peer: PeerID) -> None:
        cache = self._replacements.get(cpl)
        if cache is not None:
            cache.pop(peer, None)
            if not cache:
                del self._replacements[cpl]

    def bucket(self, cpl: int) -> list[PeerID]:
        """Peers of bucket ``cpl``, least recently seen first."""
        return list(self._buckets.get(cpl, ()))

    def bucket_sizes(self) -> dict[int, int]:
        """Non-empty buckets: common-prefix length -> number of peers."""
        return {i: len(self._buckets[i]) for i in sorted(self._buckets)}

    def replacements(self, cpl: int) -> list[PeerID]:
        return list(self._replacements.get(cpl, ()))

    def closest(
        self, hashed_key: bytes, count: int | None = None, *, exclude: Iterable[PeerID] = ()
    ) -> list[PeerID]:
        """Up to ``count`` (default k) peers closest to ``hashed_key``, nearest first."""
        n = self.k if count is None else count
        if n <= 0:
            return []
        target = key_int(hashed_key)
        # the excluded peers by their position (ints hash in C, PeerIDs in Python)
        skip = {peer_key_int(p.to_bytes()) for p in exclude}
        # Buckets come in tiers of distance to the target (c = its prefix length with us):
        # bucket c is nearest, then buckets c+1.. (all differ from the target at bit c), then
        # c-1, c-2, ..., 0 (each differs at its own, ever more significant bit). Only the tiers
        # needed to collect n peers are sorted.
        c = min(KEY_BITS - (self._local_int ^ target).bit_length(), KEY_BITS - 1)
        buckets = self._buckets
        cpls = sorted(buckets)  # the non-empty buckets
        tiers: list[list[dict[PeerID, Entry]]] = [[buckets[c]]] if c in buckets else []
        tiers.append([buckets[j] for j in cpls if j > c])
        tiers.extend([buckets[j]] for j in reversed(cpls) if j < c)
        out: list[PeerID] = []
        for tier in tiers:
            entries = [e for b in tier for e in b.values()]
            if not entries:
                continue
            need = n - len(out)
            # the excluded peers (usually one: the requester) are dropped from the few best
            # rather than tested for each entry
            best = heapq.nsmallest(need + len(skip), entries, key=lambda e: e.key ^ target)
            out.extend([e.peer for e in best if e.key not in skip][:need])
            if len(out) >= n:
                break
        return out

    # -- updates ----------------------------------------------------------------------------

    def add(self, peer: PeerID, now: float) -> AddOutcome:
        """Note that ``peer`` (a server-mode peer) is alive; see the module docstring."""
        if peer == self.local:
            return AddOutcome(AddResult.REJECTED)
        cpl = self._cpl_of.get(peer)
        if cpl is None:
            cpl = self.cpl(peer)
        bucket = self._bucket(cpl)
        entry = bucket.get(peer)
        if entry is not None:
            entry.last_seen = now
            entry.failures = 0
            bucket[peer] = bucket.pop(peer)  # to the tail: most recently seen
            return AddOutcome(AddResult.UPDATED)
        if len(bucket) < self.k:
            self._insert(peer, cpl, now)
            return AddOutcome(AddResult.ADDED)
        repl = self._replacement_cache(cpl)
        repl[peer] = now
        repl.move_to_end(peer)
        while len(repl) > self.k:
            repl.popitem(last=False)
        if cpl in self._checking:
            return AddOutcome(AddResult.FULL)
        oldest = next(iter(bucket))
        self._checking[cpl] = oldest
        return AddOutcome(AddResult.FULL, check=oldest)

    def _insert(self, peer: PeerID, cpl: int, now: float) -> None:
        self._bucket(cpl)[peer] = Entry(
            peer, peer_key_int(peer.to_bytes()), added_at=now, last_seen=now
        )
        self._cpl_of[peer] = cpl
        self._forget_replacement(cpl, peer)

    def liveness_result(self, peer: PeerID, alive: bool, now: float) -> PeerID | None:
        """Report the outcome of a liveness check named by :meth:`add`.

        Returns the replacement that took ``peer``'s place when it was dead, else None.
        """
        cpl = self.cpl(peer)
        if self._checking.get(cpl) == peer:
            del self._checking[cpl]
        if peer not in self._cpl_of:
            return self._promote(cpl, now)
        if alive:
            self.mark_seen(peer, now)
            return None
        return self.remove(peer, now)

    def mark_seen(self, peer: PeerID, now: float) -> bool:
        """A peer in the table answered: reset its failures, move it to the tail."""
        cpl = self._cpl_of.get(peer)
        if cpl is None:
            return False
        bucket = self._buckets[cpl]
        entry = bucket[peer]
        entry.last_seen = entry.answered_at = now
        entry.failures = 0
        bucket[peer] = bucket.pop(peer)  # to the tail: most recently seen
        return True

    def unanswered_since(
        self, before: float, count: int, skip: Iterable[PeerID] = ()
    ) -> list[PeerID]:
        """Up to ``count`` peers that have not answered since ``before``, longest silent first
        (not those in ``skip``)."""
        excluded = set(skip)
        silent = [
            e
            for b in self._buckets.values()
            for e in b.values()
            if e.answered_at < before and e.peer not in excluded
        ]
        return [e.peer for e in heapq.nsmallest(count, silent, key=lambda e: e.answered_at)]

    def record_failure(self, peer: PeerID, now: float) -> bool:
        """A request to ``peer`` failed; returns True if it was removed as a result."""
        self._forget_replacement(self.cpl(peer), peer)
        entry = self.entry(peer)
        if entry is None:
            return False
        entry.failures += 1
        if entry.failures >= self.max_failures:
            self.remove(peer, now)
            return True
        return False

    def remove(self, peer: PeerID, now: float = 0.0) -> PeerID | None:
        """Drop ``peer``; the newest replacement candidate of its bucket takes its place
        (returned)."""
        cpl = self._cpl_of.pop(peer, None)
        if cpl is None:
            self._forget_replacement(self.cpl(peer), peer)
            return None
        bucket = self._buckets[cpl]
        del bucket[peer]
        if not bucket:
            del self._buckets[cpl]
        if self._checking.get(cpl) == peer:
            del self._checking[cpl]
        return self._promote(cpl, now)

    def _promote(self, cpl: int, now: float) -> PeerID | None:
        repl = self._replacements.get(cpl)
        if not repl or len(self._buckets.get(cpl, ())) >= self.k:
            return None
        peer, seen = repl.popitem(last=True)
        if not repl:
            del self._replacements[cpl]
        self._insert(peer, cpl, max(now, seen))
        return peer

    # -- refresh ----------------------------------------------------------------------------

    def mark_refreshed(self, cpl: int, now: float) -> None:
        """A lookup for a key in bucket ``cpl`` ran: that bucket counts as refreshed."""
        if 0 <= cpl < KEY_BITS:
            self._last_refresh[cpl] = now

    def last_refresh(self, cpl: int) -> float:
        """When bucket ``cpl`` was last refreshed (-inf: never)."""
        return self._last_refresh[cpl]

    def mark_key_refreshed(self, hashed_key: bytes, now: float) -> None:
        self.mark_refreshed(min(self.cpl_of_key(hashed_key), KEY_BITS - 1), now)

    def buckets_to_refresh(self, now: float, interval: float, max_cpl: int = 15) -> list[int]:
        """Buckets up to the deepest non-empty one (at most ``max_cpl``) not refreshed for
        ``interval`` seconds."""
        sizes = self.bucket_sizes()
        if not sizes:
            return []
        deepest = min(max(sizes), max_cpl)
        return [c for c in range(deepest + 1) if now - self._last_refresh[c] >= interval]

    def random_key_for_cpl(self, cpl: int, randbytes: Callable[[int], bytes] = os.urandom) -> bytes:
        """A random peer-ID-shaped key (sha2-256 multihash) whose kad key falls in bucket
        ``cpl``. Found by trial: about 2**(cpl+1) hashes, so keep ``cpl`` small (<= 16)."""
        if not 0 <= cpl < KEY_BITS:
            raise ValueError(f"cpl must be in 0..{KEY_BITS - 1}")
        if cpl > 24:
            raise ValueError("refreshing buckets deeper than 24 bits is too expensive")
        while True:
            candidate = b"\x12\x20" + randbytes(32)
            if self.cpl_of_key(kad_key(candidate)) == cpl:
                return candidate
