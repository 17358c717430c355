"""The iterative lookup of the kad-dht spec as a sans-IO state machine.

A :class:`Lookup` knows the peers it has heard of, ordered by XOR distance to the target, and
the state of each (heard, waiting for an answer, answered, failed). The driver asks
:meth:`Lookup.next_requests` which peers to query (never more than ``alpha`` in flight), sends
the requests, and reports every answer (:meth:`on_response`, with the closer peers it named) or
failure (:meth:`on_failure`: timeout, refused stream, garbage). The lookup is finished when each
of the ``k`` closest peers not known to have failed has answered; a driver may also
:meth:`stop` it early (find_peer found its target, get_value reached its quorum).

It terminates: each peer is queried at most once, failed peers are skipped, and the set of
peers can only grow by what answers bring (bounded by the driver's per-answer limit).

Hop counting: peers we start from are at hop 0 (known locally); a peer first named in the
answer of a peer queried at hop ``h`` is learned at hop ``h``, and querying it is hop ``h + 1``.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from p2pnet.kad.routing_table import kad_key, key_int, peer_key_int
from p2pnet.peer.peer_id import PeerID


class PeerState(enum.Enum):
    HEARD = "heard"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class _Peer:
    peer: PeerID
    distance: int
    learned_hop: int  # hop of the answer that named it (0: known before the lookup)
    state: PeerState = PeerState.HEARD


@dataclass
class LookupStats:
    """What one lookup cost; filled by the state machine and its driver."""

    kind: str = ""
    #: Requests sent.
    messages: int = 0
    responses: int = 0
    failures: int = 0
    #: Requests in sequence to the result (see the module docstring), 0 when known locally.
    hops: int = 0
    #: Peers heard of in total.
    peers_seen: int = 0
    duration: float = 0.0
    found: bool = False
    #: Peers that failed during the lookup (timeouts, refusals, garbage).
    failed_peers: list[PeerID] = field(default_factory=list)


class Lookup:
    """State of one iterative lookup for ``key`` (the raw DHT key, hashed here)."""

    def __init__(
        self,
        key: bytes,
        seeds: Iterable[PeerID],
        *,
        local: PeerID,
        k: int = 20,
        alpha: int = 10,
        kind: str = "",
    ) -> None:
        if k < 1 or alpha < 1:
            raise ValueError("k and alpha must be at least 1")
        self.key = key
        self.target = kad_key(key)
        self._target_int = key_int(self.target)
        self.local = local
        self.k = k
        self.alpha = alpha
        self._peers: dict[PeerID, _Peer] = {}
        self._order: list[tuple[int, bytes]] = []  # (distance, peer bytes), sorted
        self._by_bytes: dict[bytes, _Peer] = {}
        self._in_flight = 0
        self._stopped = False
        self.stats = LookupStats(kind=kind)
        self._add(seeds, learned_hop=0)

    # -- peers ------------------------------------------------------------------------------

    def _add(self, peers: Iterable[PeerID], learned_hop: int) -> list[PeerID]:
        new: list[PeerID] = []
        for peer in peers:
            if peer == self.local or peer in self._peers:
                continue
            raw = peer.to_bytes()
            dist = peer_key_int(raw) ^ self._target_int
            entry = _Peer(peer, dist, learned_hop)
            self._peers[peer] = entry
            self._by_bytes[raw] = entry
            bisect.insort(self._order, (dist, raw))
            new.append(peer)
        self.stats.peers_seen = len(self._peers)
        return new

    def state(self, peer: PeerID) -> PeerState | None:
        entry = self._peers.get(peer)
        return None if entry is None else entry.state

    def learned_hop(self, peer: PeerID) -> int | None:
        """Hop of the answer that first named ``peer`` (0: known before the lookup)."""
        entry = self._peers.get(peer)
        return None if entry is None else entry.learned_hop

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _closest_alive(self) -> list[_Peer]:
        """The k closest peers not known to have failed, nearest first."""
        out: list[_Peer] = []
        for _, raw in self._order:
            entry = self._by_bytes[raw]
            if entry.state is PeerState.FAILED:
                continue
            out.append(entry)
            if len(out) >= self.k:
                break
        return out

    # -- driving ----------------------------------------------------------------------------

    def next_requests(self) -> list[PeerID]:
        """Peers to query now (marked as waiting); empty when none is due or the lookup is over."""
        if self._stopped:
            return []
        closest = self._closest_alive()
        if all(e.state is PeerState.SUCCEEDED for e in closest):
            return []  # finished
        out: list[PeerID] = []
        for entry in closest:
            if self._in_flight >= self.alpha:
                break
            if entry.state is PeerState.HEARD:
                entry.state = PeerState.WAITING
                self._in_flight += 1
                self.stats.messages += 1
                out.append(entry.peer)
        return out

    def on_response(self, peer: PeerID, closer: Iterable[PeerID]) -> list[PeerID]:
        """``peer`` answered, naming ``closer``; returns the peers new to this lookup."""
        entry = self._peers.get(peer)
        if entry is None or entry.state is not PeerState.WAITING:
            return []
        entry.state = PeerState.SUCCEEDED
        self._in_flight -= 1
        self.stats.responses += 1
        return self._add(closer, learned_hop=entry.learned_hop + 1)

    def on_failure(self, peer: PeerID) -> None:
        """The request to ``peer`` failed (timeout, refusal, garbage): drop it from the lookup."""
        entry = self._peers.get(peer)
        if entry is None or entry.state is not PeerState.WAITING:
            return
        entry.state = PeerState.FAILED
        self._in_flight -= 1
        self.stats.failures += 1
        self.stats.failed_peers.append(peer)

    def stop(self) -> None:
        """End the lookup early (the driver found what it wanted)."""
        self._stopped = True

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def finished(self) -> bool:
        """True once stopped, or when every one of the k closest live peers has answered
        (equivalently: none of them is still to be asked or awaited)."""
        if self._stopped:
            return True
        return all(e.state is PeerState.SUCCEEDED for e in self._closest_alive())

    # -- results ----------------------------------------------------------------------------

    def closest(self, count: int | None = None) -> list[PeerID]:
        """The closest peers that answered, nearest first (at most ``count``, default k)."""
        n = self.k if count is None else count
        out: list[PeerID] = []
        for _, raw in self._order:
            entry = self._by_bytes[raw]
            if entry.state is PeerState.SUCCEEDED:
                out.append(entry.peer)
                if len(out) >= n:
                    break
        return out

    def depth(self) -> int:
        """Hops to reach the result: the deepest query among the closest peers that answered."""
        best = self.closest()
        if not best:
            return 0
        return max(self._peers[p].learned_hop + 1 for p in best)
