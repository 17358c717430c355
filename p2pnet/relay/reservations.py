"""What a relay accepts (sans-IO): reservations, circuits and the limits of each.

The relay service asks :class:`RelayTable` and does what it says; ``now`` is the node's wall
clock (reservation expiry is a UNIX time on the wire). The numbers are go-libp2p's and
js-libp2p's defaults except the data limit, raised so agent traffic (identify, DHT, a few direct
messages) fits in one relayed connection.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from p2pnet.peer.peer_id import PeerID
from p2pnet.relay.messages import Limit, RelayStatus


@dataclass
class RelayLimits:
    #: Seconds a reservation lasts (the client refreshes it before it ends).
    reservation_ttl: int = 3600
    #: Reservations held at once, in total and per IP address of the reserving peers.
    max_reservations: int = 128
    max_reservations_per_ip: int = 8
    #: Relayed connections at once: in total, and per peer (as source or destination).
    max_circuits: int = 256
    max_circuits_per_peer: int = 16
    #: Each relayed connection: seconds, and bytes in each direction (0: no limit).
    duration: int = 120
    data: int = 1 << 20

    @property
    def limit(self) -> Limit:
        return Limit(self.duration, self.data)


@dataclass
class _Reservation:
    expire: float
    ip: str


class RelayTable:
    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.limits = limits or RelayLimits()
        self._reservations: dict[PeerID, _Reservation] = {}
        self._circuits: Counter[PeerID] = Counter()
        self.circuits = 0

    def reserve(self, peer: PeerID, ip: str, now: float) -> tuple[RelayStatus, int]:
        """A reservation request from ``peer`` connected from ``ip``: the answer and, when OK,
        the expiry (UNIX seconds). A renewal of a live reservation is always granted."""
        self.expire(now)
        lim = self.limits
        if peer not in self._reservations:
            if len(self._reservations) >= lim.max_reservations:
                return RelayStatus.RESERVATION_REFUSED, 0
            same_ip = sum(1 for r in self._reservations.values() if r.ip == ip)
            if same_ip >= lim.max_reservations_per_ip:
                return RelayStatus.RESERVATION_REFUSED, 0
        expire = int(now) + lim.reservation_ttl
        self._reservations[peer] = _Reservation(expire, ip)
        return RelayStatus.OK, expire

    def has_reservation(self, peer: PeerID, now: float) -> bool:
        r = self._reservations.get(peer)
        return r is not None and r.expire > now

    def drop(self, peer: PeerID) -> None:
        """``peer`` disconnected from the relay: its reservation ends (spec)."""
        self._reservations.pop(peer, None)

    def expire(self, now: float) -> None:
        for peer in [p for p, r in self._reservations.items() if r.expire <= now]:
            del self._reservations[peer]

    @property
    def reservations(self) -> int:
        return len(self._reservations)

    def open_circuit(self, src: PeerID, dst: PeerID, now: float) -> RelayStatus:
        """May ``src`` connect to ``dst`` through us? OK counts the circuit until
        :meth:`close_circuit`."""
        if not self.has_reservation(dst, now):
            return RelayStatus.NO_RESERVATION
        lim = self.limits
        if (
            self.circuits >= lim.max_circuits
            or self._circuits[src] >= lim.max_circuits_per_peer
            or self._circuits[dst] >= lim.max_circuits_per_peer
        ):
            return RelayStatus.RESOURCE_LIMIT_EXCEEDED
        self.circuits += 1
        self._circuits[src] += 1
        self._circuits[dst] += 1
        return RelayStatus.OK

    def close_circuit(self, src: PeerID, dst: PeerID) -> None:
        self.circuits -= 1
        for peer in (src, dst):
            self._circuits[peer] -= 1
            if self._circuits[peer] <= 0:
                del self._circuits[peer]
