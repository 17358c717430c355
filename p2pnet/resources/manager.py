"""The resource manager: scopes that account what every peer makes us hold, and refuse the rest.

Scopes form a tree like go-libp2p's resource manager::

    system
      transient            connections in their upgrade, streams still negotiating
      ip:<address>         connections from one address (before the peer is known)
      peer:<id>            everything of one peer
      protocol:<id>        inbound streams of one service (and per peer)
        connection         one connection: its streams and buffered bytes
          stream           one stream: its buffered bytes

A reservation (a connection, a stream, bytes of memory) is checked against every scope on its
way up and taken from all of them, or from none: then :class:`~p2pnet.errors.ResourceLimitExceeded`
names the scope that refused it, and the refusal is counted (``refused``). The caller resets the
stream or closes the connection. It is sans-IO: the callers pass ``now`` for the rate limits.

Connections in their upgrade are the one exception to "refuse the newcomer": when the transient
scope (or the new connection's address's share of it) is full, the oldest inbound connection
still in its upgrade of the address holding the most is evicted to make room (its owner's
``on_evict`` aborts it). Otherwise a few addresses that stall their handshakes would hold every
slot until their upgrade timeouts and lock everyone else out; this way a stalled handshake only
delays itself, as an honest handshake takes milliseconds and is the newest of its address.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable

from p2pnet.errors import ResourceLimitExceeded
from p2pnet.peer.peer_id import PeerID
from p2pnet.resources.limits import ResourceLimits
from p2pnet.stream import Direction

log = logging.getLogger("p2pnet.resources")

CONNS_INBOUND = "conns_inbound"
CONNS_OUTBOUND = "conns_outbound"
CONNS = "conns"
STREAMS_INBOUND = "streams_inbound"
STREAMS_OUTBOUND = "streams_outbound"
STREAMS = "streams"
MEMORY = "memory"
FDS = "fds"
CONNS_TRANSIENT = "conns_transient"

_UNLIMITED = 1 << 62


class Scope:
    """Usage and limits of one node of the scope tree."""

    __slots__ = ("_name", "_of", "forget", "kind", "limits", "usage")

    def __init__(
        self, name: str, limits: dict[str, int], kind: str | None = None, of: object = None
    ) -> None:
        # ``of``: the name is ``name`` + ``str(of)``, made when first asked for (a peer scope
        # per connected peer would otherwise encode its peer ID in base58 every time)
        self._name = name
        self._of = of
        #: What the refusal counters call it (``peer``, ``ip``, ``relay_peer``...).
        self.kind = kind or _kind_of(name)
        self.limits = limits
        self.usage: dict[str, int] = {}
        #: Called once the scope holds nothing (peer, address and protocol scopes exist only
        #: while they hold something).
        self.forget: Callable[[], object] | None = None

    @property
    def name(self) -> str:
        if self._of is not None:
            self._name += str(self._of)
            self._of = None
        return self._name

    def used(self, resource: str) -> int:
        return self.usage.get(resource, 0)

    def limit(self, resource: str) -> int:
        return self.limits.get(resource, _UNLIMITED)

    @property
    def idle(self) -> bool:
        return not any(self.usage.values())

    def __repr__(self) -> str:
        return f"<Scope {self.name} {self.usage}>"


def _kind_of(name: str) -> str:
    if "@" in name:
        return "protocol_peer"
    return name.split(":", 1)[0]


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; :meth:`take` says whether one was left."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> bool:
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def full(self, now: float) -> bool:
        return self.tokens + max(0.0, now - self.updated) * self.rate >= self.burst


class ResourceManager:
    """Every scope of one node; hands out :class:`ConnectionScope` and :class:`StreamScope`."""

    def __init__(self, limits: ResourceLimits | None = None) -> None:
        self.limits = limits or ResourceLimits()
        lim = self.limits
        self.system = Scope(
            "system",
            {
                CONNS_INBOUND: lim.system_conns_inbound,
                CONNS_OUTBOUND: lim.system_conns_outbound,
                STREAMS_INBOUND: lim.system_streams_inbound,
                STREAMS_OUTBOUND: lim.system_streams_outbound,
                MEMORY: lim.system_memory,
                FDS: lim.system_fds,
            },
        )
        self.transient = Scope(
            "transient",
            {
                CONNS: lim.transient_conns,
                STREAMS: lim.transient_streams,
                MEMORY: lim.transient_memory,
            },
        )
        # the limits of every connection scope and of every peer scope: one dict each, shared
        # (read only), rather than one per connection and per peer
        self._conn_limits = {
            STREAMS_INBOUND: lim.conn_streams_inbound,
            STREAMS_OUTBOUND: lim.conn_streams_outbound,
            MEMORY: lim.conn_memory,
        }
        self._peer_limits = {
            CONNS: lim.peer_conns,
            STREAMS_INBOUND: lim.peer_streams_inbound,
            STREAMS_OUTBOUND: lim.peer_streams_outbound,
            MEMORY: lim.peer_memory,
        }
        self._peers: dict[PeerID, Scope] = {}
        self._ips: dict[str, Scope] = {}
        self._ip_rates: dict[str, TokenBucket] = {}
        self._banned: dict[str, float] = {}
        self._protocols: dict[str, Scope] = {}
        self._protocol_peers: dict[tuple[str, PeerID], Scope] = {}
        #: Service scopes (``relay``), by name; their owners register them here for :meth:`stat`.
        self.services: dict[str, Scope] = {}
        #: Refusals by ``"<scope kind>/<resource>"`` (``peer/memory``, ``ip/conns``...), and
        #: evictions of connections in their upgrade (``transient/conns_evicted``,
        #: ``ip/conns_transient_evicted``).
        self.refused: Counter[str] = Counter()
        #: Inbound connections in their upgrade that may be evicted, by remote address, oldest
        #: first (dicts keep insertion order).
        self._upgrading: dict[str | None, dict[ConnectionScope, None]] = {}

    # -- scopes ------------------------------------------------------------------------------

    def peer_scope(self, peer: PeerID) -> Scope:
        scope = self._peers.get(peer)
        if scope is None:
            scope = self._peers[peer] = Scope("peer:", self._peer_limits, of=peer)
            scope.forget = lambda: self._peers.pop(peer, None)
        return scope

    def _ip_scope(self, ip: str) -> Scope:
        scope = self._ips.get(ip)
        if scope is None:
            scope = self._ips[ip] = Scope(
                f"ip:{ip}",
                {
                    CONNS: self.limits.conns_per_ip,
                    CONNS_TRANSIENT: self.limits.transient_conns_per_ip,
                },
            )
            scope.forget = lambda: self._ips.pop(ip, None)
        return scope

    def _protocol_scopes(self, protocol: str, peer: PeerID | None) -> list[Scope]:
        # (the limits are looked up only for a scope being made: most streams find theirs)
        scope = self._protocols.get(protocol)
        if scope is None:
            scope = self._protocols[protocol] = Scope(
                f"protocol:{protocol}",
                {STREAMS_INBOUND: self.limits.protocol(protocol).streams_inbound},
            )
            scope.forget = lambda: self._protocols.pop(protocol, None)
        if peer is None:
            return [scope]
        key = (protocol, peer)
        per_peer = self._protocol_peers.get(key)
        if per_peer is None:
            per_peer = self._protocol_peers[key] = Scope(
                f"protocol:{protocol}@peer",
                {STREAMS_INBOUND: self.limits.protocol(protocol).streams_inbound_per_peer},
            )
            per_peer.forget = lambda: self._protocol_peers.pop(key, None)
        return [per_peer, scope]

    def peer_usage(self, peer: PeerID) -> dict[str, int]:
        """What ``peer`` holds now (empty if nothing)."""
        scope = self._peers.get(peer)
        return dict(scope.usage) if scope is not None else {}

    def stat(self) -> dict[str, dict[str, int]]:
        """Usage of the system and transient scopes and the number of live scopes."""
        return {
            "system": dict(self.system.usage),
            "transient": dict(self.transient.usage),
            **{name: dict(scope.usage) for name, scope in self.services.items()},
            "evicted": {
                key: count for key, count in self.refused.items() if key.endswith("_evicted")
            },
            "scopes": {
                "peers": len(self._peers),
                "ips": len(self._ips),
                "protocols": len(self._protocols),
            },
        }

    # -- reservations -----------------------------------------------------------------------

    def reserve(self, scopes: Iterable[Scope], resource: str, amount: int = 1) -> None:
        """Take ``amount`` of ``resource`` from every scope, or from none (and raise)."""
        # hot: every chunk a stream receives is reserved here, and released when read
        chain = scopes if type(scopes) is list else list(scopes)
        for scope in chain:
            if scope.usage.get(resource, 0) + amount > scope.limits.get(resource, _UNLIMITED):
                for created in chain:  # a scope made for this reservation must not linger
                    if created.idle and created.forget is not None:
                        created.forget()
                self.refused[f"{scope.kind}/{resource}"] += 1
                raise ResourceLimitExceeded(
                    scope.name,
                    resource,
                    f"{scope.name}: {resource} limit {scope.limit(resource)} reached",
                )
        for scope in chain:
            usage = scope.usage
            usage[resource] = usage.get(resource, 0) + amount

    def reserve_all(self, steps: list[tuple[list[Scope], str]]) -> None:
        """Several reservations of one each, all or none."""
        done: list[tuple[list[Scope], str]] = []
        try:
            for scopes, resource in steps:
                self.reserve(scopes, resource)
                done.append((scopes, resource))
        except ResourceLimitExceeded:
            for scopes, resource in done:
                self.release(scopes, resource)
            for scopes, _ in steps:
                for scope in scopes:
                    if scope.idle and scope.forget is not None:
                        scope.forget()
            raise

    def release(self, scopes: Iterable[Scope], resource: str, amount: int = 1) -> None:
        for scope in scopes:
            usage = scope.usage
            left = usage.get(resource, 0) - amount
            if left > 0:
                usage[resource] = left
                continue
            if left < 0:  # pragma: no cover - a bookkeeping bug, never a peer's doing
                log.error("resource manager: %s %s below zero", scope.name, resource)
            usage.pop(resource, None)
            if scope.forget is not None and not usage:
                scope.forget()

    def ban_ip(self, ip: str, now: float) -> None:
        """Refuse new connections from ``ip`` for ``flood_ban`` seconds (after a flood)."""
        if len(self._banned) >= 4096:
            for key in [k for k, until in self._banned.items() if until <= now]:
                del self._banned[key]
            if len(self._banned) >= 4096:
                return  # bounded; the other limits still hold
        self._banned[ip] = now + self.limits.flood_ban
        log.debug(
            "refusing connections from %s for %.0f s: stream flood", ip, self.limits.flood_ban
        )

    def allow_connection_from(self, ip: str, now: float) -> bool:
        """The per-IP ban and rate limit of new inbound connections (a refusal is counted)."""
        until = self._banned.get(ip)
        if until is not None:
            if now < until:
                self.refused["ip/banned"] += 1
                return False
            del self._banned[ip]
        bucket = self._ip_rates.get(ip)
        if bucket is None:
            if len(self._ip_rates) >= 4096:  # bounded: drop the buckets that refilled
                for key in [k for k, b in self._ip_rates.items() if b.full(now)]:
                    del self._ip_rates[key]
            bucket = self._ip_rates[ip] = TokenBucket(
                self.limits.conn_rate_per_ip, self.limits.conn_burst_per_ip, now
            )
        if bucket.take(now):
            return True
        self.refused["ip/conn_rate"] += 1
        return False

    def open_connection(
        self,
        direction: Direction,
        ip: str | None,
        now: float,
        *,
        on_evict: Callable[[], object] | None = None,
    ) -> ConnectionScope:
        """A scope for a new connection (transient until :meth:`ConnectionScope.set_peer`).

        An inbound connection given ``on_evict`` may be evicted while in its upgrade to make
        room for a newer one (``on_evict`` is called then, after its scope gave everything
        back), and makes room itself that way when the transient limits are reached."""
        if direction is Direction.INBOUND:
            self._make_room_for_inbound(ip, now)
        return ConnectionScope(self, direction, ip, now, on_evict=on_evict)

    # -- eviction of stalled upgrades ---------------------------------------------------------

    def _make_room_for_inbound(self, ip: str | None, now: float) -> None:
        """Evict connections in their upgrade if the transient limits are all that stands in
        the way of a new inbound connection from ``ip``."""
        system, lim = self.system, self.limits
        ip_scope = self._ips.get(ip) if ip is not None else None
        if (
            system.used(CONNS_INBOUND) >= system.limit(CONNS_INBOUND)
            or system.used(FDS) >= system.limit(FDS)
            or (ip_scope is not None and ip_scope.used(CONNS) >= ip_scope.limit(CONNS))
        ):
            return  # refused whatever we evict: evict nothing
        if ip_scope is not None and ip_scope.used(CONNS_TRANSIENT) >= lim.transient_conns_per_ip:
            # the address's own share is full: its own oldest handshake makes room
            own = self._upgrading.get(ip)
            if not own:
                return
            self._evict(next(iter(own)), f"{ip_scope.name} {CONNS_TRANSIENT}", now)
            self.refused[f"ip/{CONNS_TRANSIENT}_evicted"] += 1
        if self.transient.used(CONNS) >= self.transient.limit(CONNS):
            victim = self._eviction_candidate(ip)
            if victim is None:
                return  # only outbound dials or non-evictable connections: refuse
            self._evict(victim, f"transient {CONNS}", now)
            self.refused[f"transient/{CONNS}_evicted"] += 1

    def _eviction_candidate(self, ip: str | None) -> ConnectionScope | None:
        """The oldest evictable connection of the address holding the most in their upgrade,
        counting the newcomer from ``ip`` (so an address never grows past the others by
        evicting them: on a tie it evicts its own). Among addresses holding as many, the one
        whose oldest connection is oldest."""
        other: ConnectionScope | None = None
        other_count = 0
        for address, conns in self._upgrading.items():
            if address == ip or not conns:
                continue
            count = len(conns)
            oldest = next(iter(conns))
            if count > other_count or (
                count == other_count and other is not None and oldest.opened < other.opened
            ):
                other, other_count = oldest, count
        own = self._upgrading.get(ip)
        if own and len(own) + 1 >= other_count:
            return next(iter(own))
        return other

    def _evict(self, scope: ConnectionScope, full: str, now: float) -> None:
        log.debug(
            "evicting the inbound connection from %s in its upgrade for %.1f s: %s full",
            scope.ip,
            now - scope.opened,
            full,
        )
        scope.evicted = True
        on_evict = scope.on_evict
        scope.done()
        if on_evict is not None:
            on_evict()

    def _track_upgrade(self, scope: ConnectionScope) -> None:
        self._upgrading.setdefault(scope.ip, {})[scope] = None

    def _untrack_upgrade(self, scope: ConnectionScope) -> None:
        conns = self._upgrading.get(scope.ip)
        if conns is not None:
            conns.pop(scope, None)
            if not conns:
                del self._upgrading[scope.ip]


class ConnectionScope:
    """One connection: in the transient scope during its upgrade, then in its peer's."""

    __slots__ = (
        "_chain",
        "_conns_key",
        "_done",
        "_flooding",
        "_ip_scope",
        "_peer_scope",
        "_refusals",
        "_stream_rate",
        "_transient",
        "direction",
        "evicted",
        "ip",
        "manager",
        "on_evict",
        "opened",
        "peer",
        "scope",
    )

    def __init__(
        self,
        manager: ResourceManager,
        direction: Direction,
        ip: str | None,
        now: float,
        *,
        on_evict: Callable[[], object] | None = None,
    ) -> None:
        self.manager = manager
        self.direction = direction
        #: When the connection was opened (the oldest in-upgrade connection is evicted first).
        self.opened = now
        #: Called when the manager evicts this connection from its upgrade (inbound only).
        self.on_evict = on_evict if direction is Direction.INBOUND else None
        #: The manager evicted it to make room for a newer connection.
        self.evicted = False
        lim = manager.limits
        self.scope = Scope("conn", manager._conn_limits)
        self.peer: PeerID | None = None
        self._peer_scope: Scope | None = None
        self.ip = ip
        self._ip_scope = manager._ip_scope(ip) if ip is not None else None
        self._stream_rate = TokenBucket(lim.stream_rate_per_conn, lim.stream_burst_per_conn, now)
        # Refused inbound streams draw from their own bucket: a remote that keeps being refused
        # faster than the open rate empties it, and its connection is closed (``flooding``).
        self._refusals = TokenBucket(lim.stream_rate_per_conn, lim.stream_flood_close, now)
        self._flooding = False
        self._done = False
        system = manager.system
        conns = CONNS_INBOUND if direction is Direction.INBOUND else CONNS_OUTBOUND
        self._conns_key = conns
        steps: list[tuple[list[Scope], str]] = [([manager.transient], CONNS)]
        if self._ip_scope is not None:
            steps.append(([self._ip_scope], CONNS))
            steps.append(([self._ip_scope], CONNS_TRANSIENT))
        steps += [([system], conns), ([system], FDS)]
        manager.reserve_all(steps)
        self._transient = True
        self._update_chain()
        if self.on_evict is not None:
            manager._track_upgrade(self)

    def _leave_transient(self) -> None:
        manager = self.manager
        if self.on_evict is not None:
            manager._untrack_upgrade(self)
        manager.release([manager.transient], CONNS)
        if self._ip_scope is not None:
            manager.release([self._ip_scope], CONNS_TRANSIENT)
        self._transient = False

    def _upper(self) -> list[Scope]:
        """The scopes above this connection that its streams and memory count against."""
        manager = self.manager
        owner = manager.transient if self._peer_scope is None else self._peer_scope
        return [owner, manager.system]

    def _update_chain(self) -> None:
        #: This connection's scope and those above it (what its memory counts against).
        self._chain = [self.scope, *self._upper()]

    def set_peer(self, peer: PeerID) -> None:
        """The upgrade authenticated ``peer``: leave the transient scope for the peer's."""
        manager = self.manager
        if self._done:
            raise ResourceLimitExceeded("conn", CONNS, "connection scope is closed")
        scope = manager.peer_scope(peer)
        manager.reserve([scope], CONNS)
        # what the connection holds already moves from the transient scope to the peer's
        held = list(self.scope.usage.items())
        try:
            for resource, amount in held:
                manager.reserve([scope], resource, amount)
        except ResourceLimitExceeded:
            manager.release([scope], CONNS)
            raise
        for resource, amount in held:
            manager.release([manager.transient], resource, amount)
        self.peer = peer
        self._peer_scope = scope
        self._update_chain()
        if self._transient:
            self._leave_transient()

    def open_stream(self, direction: Direction, now: float) -> StreamScope:
        """A scope for a new stream (raises when a limit or the open rate refuses it)."""
        manager = self.manager
        if self._done:
            raise ResourceLimitExceeded("conn", STREAMS, "connection scope is closed")
        if direction is Direction.INBOUND and not self._stream_rate.take(now):
            manager.refused["conn/stream_rate"] += 1
            self._refused(now)
            raise ResourceLimitExceeded("conn", "stream_rate", "inbound stream rate exceeded")
        resource = STREAMS_INBOUND if direction is Direction.INBOUND else STREAMS_OUTBOUND
        try:
            manager.reserve(self._chain, resource)
        except ResourceLimitExceeded:
            if direction is Direction.INBOUND:
                self._refused(now)
            raise
        try:
            manager.reserve([manager.transient], STREAMS)
        except ResourceLimitExceeded:
            manager.release(self._chain, resource)
            if direction is Direction.INBOUND:
                self._refused(now)
            raise
        return StreamScope(self, direction, resource)

    def _refused(self, now: float) -> None:
        if not self._refusals.take(now) and not self._flooding:
            self._flooding = True
            if self.ip is not None:
                self.manager.ban_ip(self.ip, now)

    @property
    def flooding(self) -> bool:
        """The remote kept opening streams long after being refused: close the connection."""
        return self._flooding

    def reserve_memory(self, amount: int) -> None:
        self.manager.reserve(self._chain, MEMORY, amount)

    def release_memory(self, amount: int) -> None:
        self.manager.release(self._chain, MEMORY, amount)

    def done(self) -> None:
        """The connection closed: give back everything it still holds. Idempotent."""
        if self._done:
            return
        self._done = True
        manager = self.manager
        upper = self._upper()
        for resource, amount in list(self.scope.usage.items()):
            manager.release([self.scope, *upper], resource, amount)
        if self._transient:
            self._leave_transient()
        else:
            assert self._peer_scope is not None
            manager.release([self._peer_scope], CONNS)
        if self._ip_scope is not None:
            manager.release([self._ip_scope], CONNS)
        manager.release([manager.system], self._conns_key)
        manager.release([manager.system], FDS)


class StreamScope:
    """One stream: counted in its connection, its peer and, once negotiated, its protocol."""

    __slots__ = (
        "_done",
        "_protocol_scopes",
        "_resource",
        "_transient",
        "conn",
        "direction",
        "memory",
        "protocol",
    )

    def __init__(self, conn: ConnectionScope, direction: Direction, resource: str) -> None:
        self.conn = conn
        self.direction = direction
        self._resource = resource
        self.memory = 0
        self.protocol: str | None = None
        self._protocol_scopes: list[Scope] = []
        self._transient = True
        self._done = False

    def set_protocol(self, protocol: str) -> None:
        """Negotiated: count the stream against ``protocol`` (inbound streams only)."""
        manager = self.conn.manager
        if self._done:
            raise ResourceLimitExceeded("stream", STREAMS, "stream scope is closed")
        if self.direction is Direction.INBOUND:
            scopes = manager._protocol_scopes(protocol, self.conn.peer)
            manager.reserve(scopes, STREAMS_INBOUND)
            self._protocol_scopes = scopes
        self.protocol = protocol
        if self._transient:
            manager.release([manager.transient], STREAMS)
            self._transient = False

    def reserve_memory(self, amount: int) -> None:
        """Hold ``amount`` more bytes for this stream (raises if a scope refuses)."""
        if amount <= 0:
            return
        limit = self.conn.manager.limits.stream_memory
        if self._done:
            raise ResourceLimitExceeded("stream", MEMORY, "stream scope is closed")
        if self.memory + amount > limit:
            self.conn.manager.refused["stream/memory"] += 1
            raise ResourceLimitExceeded("stream", MEMORY, f"stream memory limit {limit} reached")
        self.conn.reserve_memory(amount)
        self.memory += amount

    def release_memory(self, amount: int) -> None:
        amount = min(amount, self.memory)
        if amount <= 0:
            return
        self.memory -= amount
        if not self.conn._done:  # a closed connection gave back its memory already
            self.conn.release_memory(amount)

    def done(self) -> None:
        """The stream is gone: give back its slot and its memory. Idempotent."""
        if self._done:
            return
        self._done = True
        conn = self.conn
        manager = conn.manager
        self.release_memory(self.memory)
        if not conn._done:
            manager.release(conn._chain, self._resource)
        if self._transient:
            manager.release([manager.transient], STREAMS)
        if self._protocol_scopes:
            manager.release(self._protocol_scopes, STREAMS_INBOUND)


def stream_scope_of(stream: object) -> StreamScope | None:
    """The :class:`StreamScope` a stream carries, if its muxer accounts for it."""
    scope = getattr(stream, "scope", None)
    return scope if isinstance(scope, StreamScope) else None
