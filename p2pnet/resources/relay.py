"""The ``relay`` service scope: what serving as a circuit relay makes a node hold (sans-IO).

Like go-libp2p's ``libp2p.relay/v2`` service scope. Reservations count in the relay scope, in
the reserving peer's relay scope (one each) and in its IP address's relay scope; circuits count
in the relay scope and in the relay scopes of both ends; the bytes a circuit holds while copying
(:attr:`~p2pnet.resources.limits.RelayLimits.buffer` per direction) are memory of the relay
scope, of the peer scope of the end they came from, and of the system. A refusal raises
:class:`~p2pnet.errors.ResourceLimitExceeded` and is counted in the manager's ``refused``
(``relay/reservations``, ``relay_ip/reservations``, ``relay_peer/circuits``, ``peer/memory``...);
the relay answers it with the spec's status (``RESERVATION_REFUSED``,
``RESOURCE_LIMIT_EXCEEDED``).
"""

from __future__ import annotations

from p2pnet.errors import ResourceLimitExceeded
from p2pnet.peer.peer_id import PeerID
from p2pnet.resources.limits import RelayLimits
from p2pnet.resources.manager import MEMORY, ResourceManager, Scope

RESERVATIONS = "reservations"
CIRCUITS = "circuits"


class RelayScopes:
    """The relay scope of one node's :class:`ResourceManager`, and its per-peer and per-IP
    children (which exist only while they hold something)."""

    def __init__(self, manager: ResourceManager, limits: RelayLimits | None = None) -> None:
        self.manager = manager
        self.limits = limits or manager.limits.relay
        lim = self.limits
        self.scope = Scope(
            "relay",
            {
                RESERVATIONS: lim.max_reservations,
                CIRCUITS: lim.max_circuits,
                MEMORY: lim.max_circuits * 2 * lim.buffer,
            },
        )
        self._peers: dict[PeerID, Scope] = {}
        self._ips: dict[str, Scope] = {}
        manager.services["relay"] = self.scope

    def _peer(self, peer: PeerID) -> Scope:
        scope = self._peers.get(peer)
        if scope is None:
            scope = self._peers[peer] = Scope(
                f"relay@peer:{peer}",
                {RESERVATIONS: 1, CIRCUITS: self.limits.max_circuits_per_peer},
                kind="relay_peer",
            )
            scope.forget = lambda: self._peers.pop(peer, None)
        return scope

    def _ip(self, ip: str) -> Scope:
        scope = self._ips.get(ip)
        if scope is None:
            scope = self._ips[ip] = Scope(
                f"relay@ip:{ip}",
                {RESERVATIONS: self.limits.max_reservations_per_ip},
                kind="relay_ip",
            )
            scope.forget = lambda: self._ips.pop(ip, None)
        return scope

    # -- reservations ------------------------------------------------------------------------

    def reserve(self, peer: PeerID, ip: str) -> None:
        """Count a new reservation of ``peer`` (connected from ``ip``), or raise."""
        self.manager.reserve([self._peer(peer), self._ip(ip), self.scope], RESERVATIONS)

    def move_reservation(self, peer: PeerID, old_ip: str, new_ip: str) -> None:
        """A renewal from another address: count it against the new address, or raise."""
        if old_ip == new_ip:
            return
        self.manager.reserve([self._ip(new_ip)], RESERVATIONS)
        self.manager.release([self._ip(old_ip)], RESERVATIONS)

    def release_reservation(self, peer: PeerID, ip: str) -> None:
        self.manager.release([self._peer(peer), self._ip(ip), self.scope], RESERVATIONS)

    # -- circuits ----------------------------------------------------------------------------

    def open_circuit(self, src: PeerID, dst: PeerID) -> CircuitScope:
        """Count a circuit from ``src`` to ``dst`` and reserve its copy buffers, or raise."""
        return CircuitScope(self, src, dst)

    @property
    def reservations(self) -> int:
        return self.scope.used(RESERVATIONS)

    @property
    def circuits(self) -> int:
        return self.scope.used(CIRCUITS)

    @property
    def memory(self) -> int:
        return self.scope.used(MEMORY)

    def stat(self) -> dict[str, int]:
        return {
            RESERVATIONS: self.reservations,
            CIRCUITS: self.circuits,
            MEMORY: self.memory,
            "peers": len(self._peers),
            "ips": len(self._ips),
        }


class CircuitScope:
    """One relayed connection: its place in the circuit counts and its two copy buffers."""

    def __init__(self, relay: RelayScopes, src: PeerID, dst: PeerID) -> None:
        self.relay = relay
        manager = relay.manager
        self._counted = [relay._peer(src), relay._peer(dst), relay.scope]
        buffer = relay.limits.buffer
        # each direction's bytes are held on behalf of the end that sent them
        self._memory = [
            [relay.scope, manager.peer_scope(src), manager.system],
            [relay.scope, manager.peer_scope(dst), manager.system],
        ]
        manager.reserve(self._counted, CIRCUITS)
        held: list[list[Scope]] = []
        try:
            for scopes in self._memory:
                manager.reserve(scopes, MEMORY, buffer)
                held.append(scopes)
        except ResourceLimitExceeded:
            for scopes in held:
                manager.release(scopes, MEMORY, buffer)
            manager.release(self._counted, CIRCUITS)
            for scopes in self._memory:  # a peer scope made for this must not linger
                for scope in scopes:
                    if scope.idle and scope.forget is not None:
                        scope.forget()
            raise
        self._done = False

    def done(self) -> None:
        """The circuit ended: give back its count and its buffers. Idempotent."""
        if self._done:
            return
        self._done = True
        manager = self.relay.manager
        for scopes in self._memory:
            manager.release(scopes, MEMORY, self.relay.limits.buffer)
        manager.release(self._counted, CIRCUITS)
