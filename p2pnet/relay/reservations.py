"""What a relay accepts (sans-IO): reservations, circuits and the limits of each.

The relay service asks :class:`RelayTable` and does what it says; ``now`` is the node's wall
clock (reservation expiry is a UNIX time on the wire). The counts live in the resource
manager's ``relay`` scope (:class:`~p2pnet.resources.relay.RelayScopes`); the limits are
``ResourceLimits.relay`` (:class:`~p2pnet.resources.limits.RelayLimits`), with the node's other
limits (docs/limits.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pnet.errors import ResourceLimitExceeded
from p2pnet.peer.peer_id import PeerID
from p2pnet.relay.messages import Limit, RelayStatus
from p2pnet.resources.limits import RelayLimits, ResourceLimits
from p2pnet.resources.manager import ResourceManager
from p2pnet.resources.relay import CircuitScope, RelayScopes

__all__ = ["RelayLimits", "RelayTable"]


@dataclass
class _Reservation:
    expire: float
    ip: str


class RelayTable:
    """Reservations (with their expiry) and circuits of one relay.

    Without a ``manager`` (a table on its own, in tests) it accounts in a resource manager of
    its own with the default limits and ``limits``.
    """

    def __init__(
        self, limits: RelayLimits | None = None, manager: ResourceManager | None = None
    ) -> None:
        if manager is None:
            manager = ResourceManager(ResourceLimits(relay=limits or RelayLimits()))
        self.scopes = RelayScopes(manager, limits)
        self.limits = self.scopes.limits
        self._reservations: dict[PeerID, _Reservation] = {}

    @property
    def limit(self) -> Limit:
        """The limit of each circuit, as the relay announces it on the wire."""
        return Limit(self.limits.duration, self.limits.data)

    def reserve(self, peer: PeerID, ip: str, now: float) -> tuple[RelayStatus, int]:
        """A reservation request from ``peer`` connected from ``ip``: the answer and, when OK,
        the expiry (UNIX seconds). A renewal of a live reservation is granted unless it comes
        from another address that is at its limit."""
        self.expire(now)
        held = self._reservations.get(peer)
        try:
            if held is None:
                self.scopes.reserve(peer, ip)
            else:
                self.scopes.move_reservation(peer, held.ip, ip)
        except ResourceLimitExceeded:
            return RelayStatus.RESERVATION_REFUSED, 0
        expire = int(now) + self.limits.reservation_ttl
        self._reservations[peer] = _Reservation(expire, ip)
        return RelayStatus.OK, expire

    def has_reservation(self, peer: PeerID, now: float) -> bool:
        r = self._reservations.get(peer)
        return r is not None and r.expire > now

    def drop(self, peer: PeerID) -> None:
        """``peer`` disconnected from the relay: its reservation ends (spec)."""
        held = self._reservations.pop(peer, None)
        if held is not None:
            self.scopes.release_reservation(peer, held.ip)

    def clear(self) -> None:
        """The relay stops: every reservation ends."""
        for peer in list(self._reservations):
            self.drop(peer)

    def expire(self, now: float) -> None:
        for peer in [p for p, r in self._reservations.items() if r.expire <= now]:
            self.drop(peer)

    @property
    def reservations(self) -> int:
        return len(self._reservations)

    @property
    def circuits(self) -> int:
        return self.scopes.circuits

    def open_circuit(
        self, src: PeerID, dst: PeerID, now: float
    ) -> tuple[RelayStatus, CircuitScope | None]:
        """May ``src`` connect to ``dst`` through us? OK comes with the circuit's scope, which
        holds its counts and buffers until its ``done()``."""
        if not self.has_reservation(dst, now):
            return RelayStatus.NO_RESERVATION, None
        try:
            return RelayStatus.OK, self.scopes.open_circuit(src, dst)
        except ResourceLimitExceeded:
            return RelayStatus.RESOURCE_LIMIT_EXCEEDED, None
