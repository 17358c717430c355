"""The host: listeners, dialer, connection table and protocol handlers.

Transports (TCP by default, or an in-process memory network), security protocols (Noise by
default) and stream muxers (yamux by default) are pluggable; everything above them sees
:class:`~p2pnet.host.connection.Connection` and :class:`~p2pnet.stream.Stream`.

It owns every connection and every background task it starts; ``close()`` ends them all.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from multiaddr import Multiaddr

from p2pnet.clock import SYSTEM_CLOCK, Clock
from p2pnet.crypto.keys import KeyPair
from p2pnet.deadlines import DeadlineQueue
from p2pnet.errors import DialError, P2PError, ResourceLimitExceeded
from p2pnet.host.addresses import AddressBook, IPAddress, ip_of, is_relayed, is_unspecified
from p2pnet.host.bus import ConnectionEnded, ConnectionOpened, ProtocolsChanged, ServiceBus
from p2pnet.host.config import HostConfig
from p2pnet.host.connection import Connection, Direction
from p2pnet.host.dial_ranker import rank_addresses
from p2pnet.host.dialer import DialFailed, dial_first
from p2pnet.host.inbound import Drain, InboundNegotiation
from p2pnet.host.interfaces import interface_ips
from p2pnet.host.upgrader import Upgraded, upgrade
from p2pnet.io import ReadWriter
from p2pnet.mux.yamux_connection import YamuxMuxer
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.peerstore import CONNECTED_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL, PeerStore
from p2pnet.resources.connmgr import ConnManager
from p2pnet.resources.manager import ConnectionScope, ResourceManager, stream_scope_of
from p2pnet.security.base import SecurityTransport
from p2pnet.security.noise_connection import NoiseSecurity
from p2pnet.stream import Stream, StreamAcceptor, StreamMuxer
from p2pnet.tasks import TaskOwner
from p2pnet.transport.addr import split_peer_id
from p2pnet.transport.base import Listener, RawConnection, Transport
from p2pnet.transport.tcp import TcpConnection, TcpListener, TcpTransport

log = logging.getLogger("p2pnet.host")

#: Seconds the interface addresses read from the OS are reused.
INTERFACES_TTL = 30.0

StreamHandler = Callable[[Stream], Awaitable[None]]
ConnectionListener = Callable[[Connection], None]


class Host:
    """A libp2p host (TCP + Noise + yamux unless other transports, security or muxers are given).

    ``async with Host(key) as host:`` starts the listeners; leaving the block closes everything.
    """

    def __init__(
        self,
        key: KeyPair,
        config: HostConfig | None = None,
        *,
        peerstore: PeerStore | None = None,
        transports: Sequence[Transport] | None = None,
        security: Sequence[SecurityTransport] | None = None,
        muxers: Sequence[StreamMuxer] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        resources: ResourceManager | None = None,
    ) -> None:
        self.key = key
        self.clock = clock
        self.peer_id = PeerID.from_public_key(key.public_key)
        self.config = config or HostConfig()
        self.peerstore = peerstore or PeerStore(clock=clock.monotonic)
        self.peerstore.add_pubkey(self.peer_id, key.public_key)
        self.transports: list[Transport] = list(transports or [TcpTransport()])
        self.security: list[SecurityTransport] = list(security or [NoiseSecurity()])
        self.muxers: list[StreamMuxer] = list(muxers or [YamuxMuxer(self.config.yamux)])
        #: Accounts connections, streams and buffered bytes per peer (docs/limits.md).
        self.resources = resources or ResourceManager(self.config.resources)
        #: Decides which peers to disconnect above the high watermark (tags, protection).
        self.connmgr = ConnManager(self.config.connmgr)
        self._trimming = False
        self._handlers: dict[str, StreamHandler] = {}
        self._acceptors: dict[str, StreamAcceptor] = {}
        #: What inbound negotiations accept: the keys of both (ordered: an ``ls`` answer).
        self._supported: dict[str, None] = {}
        self._keeps_stream: set[str] = set()
        # one timer each for every inbound stream's negotiation and drain deadlines
        self._negotiations = DeadlineQueue(self.config.negotiate_timeout)
        self._drains = DeadlineQueue(self.config.drain_timeout)
        #: and the upgrade of every connection
        self._upgrades = DeadlineQueue(self.config.upgrade_timeout)
        self._conns: dict[PeerID, list[Connection]] = {}
        #: Connections in ``_conns`` (open or closing).
        self._registered = 0
        self._pending_dials: dict[PeerID, asyncio.Future[Connection]] = {}
        self._listeners: list[Listener] = []
        self._tasks = TaskOwner(f"host {self.peer_id}")
        #: Typed events for services: ConnectionOpened, ConnectionEnded, ProtocolsChanged, ...
        self.bus = ServiceBus()
        #: Observed and confirmed addresses; what we advertise (``advertised_addrs``).
        self.addresses = AddressBook()
        self._interfaces: tuple[float, list[IPAddress]] | None = None
        self._started = False
        self._closed = False
        #: Outbound connection attempts (one per address tried) and how many of them failed.
        self.dial_attempts = 0
        self.dial_failures = 0
        #: Connections established since start, by direction; bytes of the closed ones (the
        #: open ones count theirs in their muxers). For metrics.
        self.connections_opened = {Direction.INBOUND: 0, Direction.OUTBOUND: 0}
        self.closed_bytes_received = 0
        self.closed_bytes_sent = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            for text in self.config.listen_addrs:
                await self.listen(Multiaddr(text))
        except BaseException:
            await self.close()
            raise

    async def listen(self, addr: Multiaddr) -> list[Multiaddr]:
        transport = next((t for t in self.transports if t.can_listen(addr)), None)
        if transport is None:
            raise P2PError(f"cannot listen on {addr}: no transport for this address")
        try:
            listener = await transport.listen(addr, self._on_inbound_raw)
        except OSError as exc:
            raise P2PError(f"cannot listen on {addr}: {exc}") from exc
        if isinstance(listener, TcpListener):
            # the per-address ban and rate limit, before the connection costs anything more
            listener.admit = self._admit_address
        self._listeners.append(listener)
        log.info("%s listening on %s", self.peer_id, ", ".join(map(str, listener.multiaddrs)))
        return listener.multiaddrs

    def transport_for(self, addr: Multiaddr) -> Transport | None:
        return next((t for t in self.transports if t.can_dial(addr)), None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for listener in self._listeners:
            await listener.close()
        self._listeners.clear()
        conns = [c for cs in self._conns.values() for c in cs]
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        for conn in conns:  # now, not from their close callbacks after close() returned
            self._connection_ended(conn)
        await self._tasks.close()
        self._negotiations.clear()
        self._drains.clear()
        for fut in self._pending_dials.values():
            if not fut.done():
                fut.cancel()

    async def __aenter__(self) -> Host:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def listen_addrs(self) -> list[Multiaddr]:
        return [a for listener in self._listeners for a in listener.multiaddrs]

    @property
    def advertised_addrs(self) -> list[Multiaddr]:
        """The addresses we tell others (identify, peer records, the DHT): listen addresses with
        unspecified ones (``0.0.0.0``, ``::``) expanded to the interfaces' addresses, and the
        addresses peers confirmed (``host/addresses.py``); never an unspecified one."""
        now = self.clock.monotonic()
        listen = self.listen_addrs
        ips: list[IPAddress] = []
        if any(is_unspecified(a) for a in listen):
            # Interfaces change rarely; asking the OS on every identify would be wasteful.
            if self._interfaces is None or now - self._interfaces[0] > INTERFACES_TTL:
                self._interfaces = (now, interface_ips())
            ips = self._interfaces[1]
        return self.addresses.advertised(listen, ips, now)

    def p2p_addrs(self) -> list[Multiaddr]:
        """Advertised addresses with ``/p2p/<our id>`` appended, ready to hand to another peer."""
        return [a.encapsulate(Multiaddr(f"/p2p/{self.peer_id}")) for a in self.advertised_addrs]

    # -- protocol handlers ------------------------------------------------------------------

    def set_stream_handler(
        self, protocol: str, handler: StreamHandler, *, keeps_stream: bool = False
    ) -> None:
        """Serve ``protocol``. When a handler returns, the host closes its stream and resets it
        unless the remote closes its side soon (nothing left buffered); ``keeps_stream=True``
        is for a handler that hands the stream on (a relayed connection runs over it)."""
        self._acceptors.pop(protocol, None)
        self._handlers[protocol] = handler
        if keeps_stream:
            self._keeps_stream.add(protocol)
        else:
            self._keeps_stream.discard(protocol)
        self._supported[protocol] = None
        self._protocols_changed()

    def set_stream_acceptor(self, protocol: str, acceptor: StreamAcceptor) -> None:
        """Serve ``protocol`` without a task per stream: ``acceptor(stream)`` is called
        synchronously once the protocol is agreed on (from the ``data_received`` that brought
        the proposal; bytes that came after it are delivered first to the consumer it
        installs). It owns the stream from then: it installs a consumer
        (:meth:`~p2pnet.stream.Stream.set_consumer`) that answers with ``write_nowait`` (or
        a task where a write must wait), and ends the stream, usually with
        :meth:`finish_inbound` or :meth:`reply_and_finish`. An exception it raises resets the
        stream."""
        self._handlers.pop(protocol, None)
        self._keeps_stream.discard(protocol)
        self._acceptors[protocol] = acceptor
        self._supported[protocol] = None
        self._protocols_changed()

    def remove_stream_handler(self, protocol: str) -> None:
        self._keeps_stream.discard(protocol)
        removed = self._handlers.pop(protocol, None) or self._acceptors.pop(protocol, None)
        if removed is not None:
            self._supported.pop(protocol, None)
            self._protocols_changed()

    @property
    def protocols(self) -> list[str]:
        return sorted(self._supported)

    def _protocols_changed(self) -> None:
        self.bus.emit(ProtocolsChanged(tuple(self.protocols)))

    # -- connection events: shorthands for subscribing on the bus ------------------------------

    def on_protocols_changed(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Subscribe to :class:`ProtocolsChanged`; returns the unsubscribe function."""
        return self.bus.subscribe(ProtocolsChanged, lambda _: callback())

    def on_connected(self, callback: ConnectionListener) -> Callable[[], None]:
        """Subscribe to :class:`ConnectionOpened`; returns the unsubscribe function."""
        return self.bus.subscribe(ConnectionOpened, lambda e: callback(e.connection))

    def on_disconnected(self, callback: ConnectionListener) -> Callable[[], None]:
        """Subscribe to :class:`ConnectionEnded`; returns the unsubscribe function."""
        return self.bus.subscribe(ConnectionEnded, lambda e: callback(e.connection))

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a background task owned by the host (cancelled and awaited on close)."""
        return self._tasks.spawn(coro, name=name)

    # -- connections ----------------------------------------------------------------------

    def connections(self, peer: PeerID | None = None) -> list[Connection]:
        if peer is not None:
            conns = self._conns.get(peer)
            return [c for c in conns if not c.is_closed] if conns else []
        return [c for cs in self._conns.values() for c in cs if not c.is_closed]

    def _connection_count(self) -> int:
        """Open connections (what ``len(self.connections())`` says, without the list)."""
        if self._registered < self.config.max_connections:
            return self._registered  # registered ones include the closing: an upper bound
        return len(self.connections())

    def connected_peers(self) -> list[PeerID]:
        return [p for p, cs in self._conns.items() if any(not c.is_closed for c in cs)]

    def traffic(self) -> tuple[int, int]:
        """Bytes received and sent over all connections since start (muxed, decrypted)."""
        # every registered connection counts its own bytes until _connection_ended moves them
        conns = [c for cs in self._conns.values() for c in cs]
        received = self.closed_bytes_received + sum(c.muxed.bytes_received for c in conns)
        sent = self.closed_bytes_sent + sum(c.muxed.bytes_sent for c in conns)
        return received, sent

    def is_connected(self, peer: PeerID) -> bool:
        conns = self._conns.get(peer)
        if conns:
            for c in conns:
                # (Connection.is_closed is this; asked for every peer of every kad answer)
                if not c.muxed.is_closed:
                    return True
        return False

    async def connect(self, addr: Multiaddr | str, *, peer: PeerID | None = None) -> Connection:
        """Connect to the peer at ``addr`` (``.../tcp/N[/p2p/ID]``), reusing a live connection.

        If the address (or ``peer``) names a peer ID, the remote must prove that identity.
        """
        maddr = Multiaddr(addr) if isinstance(addr, str) else addr
        transport_addr, id_text = split_peer_id(maddr)
        if id_text is not None:
            named = PeerID.from_string(id_text)
            if peer is not None and peer != named:
                raise DialError(f"{maddr} names {named}, expected {peer}")
            peer = named
        if peer is not None:
            if peer == self.peer_id:
                raise DialError("cannot dial ourselves")
            existing = self.connections(peer)
            if existing:
                return preferred(existing)
            self.peerstore.add_addrs(peer, [transport_addr], RECENTLY_CONNECTED_ADDR_TTL)
            return await self._dial_peer(peer, [transport_addr])
        return await self._dial_addr(transport_addr, None)

    async def connect_peer(self, peer: PeerID) -> Connection:
        """Connect to ``peer`` using the addresses in the peer store (a live connection is
        reused, a direct one rather than a relayed one)."""
        existing = self.connections(peer)
        if existing:
            return preferred(existing)
        addrs = [a for a in self.peerstore.addrs(peer) if self.transport_for(a) is not None]
        if not addrs:
            raise DialError(f"no known dialable address for {peer}")
        return await self._dial_peer(peer, addrs)

    async def _dial_peer(self, peer: PeerID, addrs: Sequence[Multiaddr]) -> Connection:
        """Dial ``peer`` at ``addrs`` in a task the host owns (so ``close()`` ends it and
        its attempts); concurrent dials to one peer share that one dial."""
        pending = self._pending_dials.get(peer)
        if pending is None:
            if self._closed:
                raise DialError("host is closed")
            pending = asyncio.get_running_loop().create_future()
            self._pending_dials[peer] = pending
            self._tasks.spawn(self._run_dial(peer, addrs, pending), name="dial")
        # a caller that gives up does not end the dial for the others
        return await asyncio.shield(pending)

    async def _run_dial(
        self, peer: PeerID, addrs: Sequence[Multiaddr], fut: asyncio.Future[Connection]
    ) -> None:
        try:
            # Ranked and staggered, in parallel: the first to connect wins (dial_ranker.py).
            dialed = await dial_first(
                rank_addresses(addrs),
                lambda addr: self._dial_attempt(addr, peer),
                self._discard_dialed,
                clock=self.clock,
                timeout=self.config.peer_dial_timeout,
                what=str(peer),
            )
            conn = await self._adopt(dialed)
        except DialFailed as exc:
            for addr, why in exc.errors:
                log.debug("dial %s at %s failed: %s", peer, addr, why)
            # With one address the original error (e.g. PeerIDMismatch) says it best.
            only = exc.errors[0][1] if len(exc.errors) == 1 and not exc.timed_out else None
            _fail(fut, only if isinstance(only, P2PError) else exc)
        except asyncio.CancelledError:
            _fail(fut, DialError(f"dial to {peer} aborted: the host is closing"))
            raise
        except P2PError as exc:  # e.g. the host closed before the connection was registered
            _fail(fut, exc)
        except Exception as exc:  # pragma: no cover - a bug; the waiters still get an answer
            _fail(fut, DialError(f"dial to {peer} failed: {exc!r}"))
            raise
        else:
            if not fut.done():
                fut.set_result(conn)
        finally:
            if self._pending_dials.get(peer) is fut:
                del self._pending_dials[peer]

    async def _dial_addr(self, addr: Multiaddr, peer: PeerID | None) -> Connection:
        return await self._adopt(await self._dial_attempt(addr, peer))

    async def _dial_attempt(self, addr: Multiaddr, peer: PeerID | None) -> _Dialed:
        """Dial and upgrade ``addr``; the connection is not registered yet (:meth:`_adopt`)."""
        self.dial_attempts += 1
        try:
            return await self._dial_attempt_counted(addr, peer)
        except Exception:  # not a cancellation: a parallel dial cancels the attempts it lost
            self.dial_failures += 1
            raise

    async def _dial_attempt_counted(self, addr: Multiaddr, peer: PeerID | None) -> _Dialed:
        if self._closed:
            raise DialError("host is closed")
        transport = self.transport_for(addr)
        if transport is None:
            raise DialError(f"no transport can dial {addr}")
        try:
            scope = self.resources.open_connection(Direction.OUTBOUND, None, self.clock.monotonic())
        except ResourceLimitExceeded as exc:
            raise DialError(f"cannot dial {addr}: {exc}") from exc
        dial_addr = addr
        if peer is not None and is_relayed(addr):
            # A relay is asked for the target by its ID: the relayed transport needs it.
            dial_addr = addr.encapsulate(Multiaddr(f"/p2p/{peer}"))
        try:
            raw = await transport.dial(dial_addr, timeout=self.config.dial_timeout)
            upgraded = await upgrade(
                raw,
                self.key,
                self.config,
                self.security,
                self.muxers,
                initiator=True,
                expected_peer=peer,
                deadlines=self._upgrades,
            )
            try:
                scope.set_peer(upgraded.secure.remote_peer)
            except ResourceLimitExceeded as exc:
                await _close_quietly(upgraded.secure)
                raise DialError(f"cannot keep a connection to {addr}: {exc}") from exc
        except BaseException:
            scope.done()
            raise
        return _Dialed(upgraded, raw, addr, scope)

    async def _adopt(self, dialed: _Dialed) -> Connection:
        conn = self._connection(
            dialed.upgraded, Direction.OUTBOUND, dialed.raw, dialed.addr, dialed.scope
        )
        await self._add_connection(conn)
        return conn

    async def _discard_dialed(self, dialed: _Dialed) -> None:
        """A connection a parallel dial made after another address won: close it."""
        dialed.scope.done()
        await _close_quietly(dialed.upgraded.secure)

    def _connection(
        self,
        upgraded: Upgraded,
        direction: Direction,
        raw: RawConnection,
        remote: Multiaddr,
        scope: ConnectionScope,
    ) -> Connection:
        return Connection(
            upgraded.secure,
            security=upgraded.security,
            muxer=upgraded.muxer,
            direction=direction,
            local_addr=raw.local_addr,
            remote_addr=remote,
            clock=self.clock,
            negotiate_timeout=self.config.negotiate_timeout,
            on_stream=None,
            accept=self._accept_inbound,
            scope=scope,
        )

    async def _on_inbound_raw(self, raw: RawConnection) -> None:
        if self._closed or self._connection_count() >= self.config.max_connections:
            log.debug("refusing inbound connection from %s: limit reached", raw.remote_addr)
            self.resources.refused["system/max_connections"] += 1
            raw.abort()
            return
        ip = _ip_of(raw.remote_addr)
        now = self.clock.monotonic()
        # (a TCP listener of ours checked the ban and the rate at accept: _admit_address)
        admitted = isinstance(raw, TcpConnection)
        if ip is not None and not admitted and not self.resources.allow_connection_from(ip, now):
            log.debug("refusing inbound connection from %s: connection rate", raw.remote_addr)
            raw.abort()
            return
        try:
            # a stalled handshake may be evicted for a newer connection (docs/limits.md)
            scope = self.resources.open_connection(Direction.INBOUND, ip, now, on_evict=raw.abort)
        except ResourceLimitExceeded as exc:
            log.debug("refusing inbound connection from %s: %s", raw.remote_addr, exc)
            raw.abort()
            return
        # The upgrade runs in the transport's task for this connection (not in a second one),
        # owned by the host meanwhile so that close() cancels it. (Not closed: checked above,
        # and nothing was awaited since.)
        with self._tasks.running_here():
            await self._upgrade_inbound(raw, scope)

    def _admit_address(self, ip: str) -> bool:
        """A TCP connection from ``ip`` was just accepted: not from a banned address, not
        beyond the address's connection rate (refused ones are counted, not logged)."""
        if self._closed:
            return False
        try:
            ip = str(ipaddress.ip_address(ip))  # the form _ip_of gives, for IPv6 too
        except ValueError:
            return True  # not an IP (never for TCP): the other checks still apply
        return self.resources.allow_connection_from(ip, self.clock.monotonic())

    async def upgrade_dialled(
        self, raw: RawConnection, peer: PeerID, *, initiator: bool
    ) -> Connection:
        """Upgrade and add a connection to ``peer`` dialled outside the host's dialer (a hole
        punch). On a TCP simultaneous open both sides dialled, so the role in the security and
        muxer negotiation is given (DCUtR fixes it) rather than read from who connected; the
        connection counts as outbound for the initiator and inbound for the other side."""
        direction = Direction.OUTBOUND if initiator else Direction.INBOUND
        try:
            scope = self.resources.open_connection(
                direction, _ip_of(raw.remote_addr), self.clock.monotonic()
            )
        except ResourceLimitExceeded as exc:
            raw.abort()
            raise DialError(f"cannot keep a connection to {raw.remote_addr}: {exc}") from exc
        try:
            upgraded = await upgrade(
                raw,
                self.key,
                self.config,
                self.security,
                self.muxers,
                initiator=initiator,
                expected_peer=peer,
                deadlines=self._upgrades,
            )
            if upgraded.secure.remote_peer != peer:  # the responder side learns it only now
                await _close_quietly(upgraded.secure)
                raise DialError(f"{raw.remote_addr} is {upgraded.secure.remote_peer}, not {peer}")
            try:
                scope.set_peer(peer)
            except ResourceLimitExceeded as exc:
                await _close_quietly(upgraded.secure)
                raise DialError(f"cannot keep a connection to {peer}: {exc}") from exc
        except BaseException:
            scope.done()
            raise
        conn = self._connection(upgraded, direction, raw, raw.remote_addr, scope)
        await self._add_connection(conn)
        return conn

    async def _upgrade_inbound(self, raw: RawConnection, scope: ConnectionScope) -> None:
        try:
            try:
                upgraded = await upgrade(
                    raw,
                    self.key,
                    self.config,
                    self.security,
                    self.muxers,
                    initiator=False,
                    deadlines=self._upgrades,
                )
            except P2PError as exc:
                if scope.evicted:
                    log.debug("inbound connection from %s evicted in its upgrade", raw.remote_addr)
                else:
                    log.debug("inbound connection from %s failed: %s", raw.remote_addr, exc)
                scope.done()
                return
            try:
                scope.set_peer(upgraded.secure.remote_peer)
            except ResourceLimitExceeded as exc:
                log.debug("closing inbound connection from %s: %s", raw.remote_addr, exc)
                scope.done()
                await _close_quietly(upgraded.secure)
                return
        except BaseException:
            scope.done()
            raise
        conn = self._connection(upgraded, Direction.INBOUND, raw, raw.remote_addr, scope)
        await self._add_connection(conn)

    async def _add_connection(self, conn: Connection) -> None:
        if self._closed:
            await conn.close()
            raise DialError("host is closed")
        peer = conn.remote_peer
        # Registered before the muxer starts, so its first inbound stream finds the connection.
        self._conns.setdefault(peer, []).append(conn)
        self._registered += 1
        self.connections_opened[conn.direction] += 1
        await conn.muxed.start()
        self.peerstore.add_pubkey(peer, conn.secure.remote_public_key)
        if conn.direction is Direction.OUTBOUND:
            self.peerstore.add_addrs(peer, [conn.remote_addr], CONNECTED_ADDR_TTL)
        log.debug("connected %r", conn)
        # a callback rather than a task per connection waiting for it to close
        conn.muxed.add_close_callback(lambda: self._connection_ended(conn))
        self.bus.emit(ConnectionOpened(conn))
        if (
            not self._trimming
            and len(self._conns) > self.connmgr.config.high_water
            and self.connmgr.trim_may_help(self.clock.monotonic())
        ):
            self._trimming = True
            self._tasks.spawn(self._trim(), name="trim connections")

    async def _trim(self) -> None:
        """Above the high watermark: disconnect the least useful peers down to the low one."""
        try:
            now = self.clock.monotonic()
            connected = [
                (peer, min(c.opened_at for c in conns))
                for peer, conns in self._conns.items()
                if conns
            ]
            victims = self.connmgr.to_trim(connected, now)
            if victims:
                log.debug("trimming %d connections (above %d peers)", len(victims), len(connected))
            self.connmgr.trimmed += len(victims)
            await asyncio.gather(*(self.disconnect(p) for p in victims), return_exceptions=True)
        finally:
            self._trimming = False

    def _connection_ended(self, conn: Connection) -> None:
        """``conn`` closed: forget it, give back its resources, tell the services. Once per
        connection (the muxer's close callback, or :meth:`close`)."""
        peer = conn.remote_peer
        conns = self._conns.get(peer)
        if conns is None or conn not in conns:
            return
        if conn.scope is not None:
            conn.scope.done()
        self.closed_bytes_received += conn.muxed.bytes_received
        self.closed_bytes_sent += conn.muxed.bytes_sent
        conns.remove(conn)
        self._registered -= 1
        if not conns:
            self._conns.pop(peer, None)
            self.connmgr.forget(peer)
            # Addresses of a peer we no longer reach expire like go's (15 min), not never.
            self.peerstore.update_addrs(peer, CONNECTED_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL)
        log.debug("disconnected %r", conn)
        self.bus.emit(ConnectionEnded(conn))

    def connection_of(self, stream: Stream) -> Connection:
        """The host connection a stream belongs to (``stream.conn``, typed as a Connection)."""
        conn = stream.conn
        if not isinstance(conn, Connection):
            raise TypeError(f"{stream!r} does not run on a connection of this host")
        return conn

    async def disconnect(self, peer: PeerID) -> None:
        conns = self._conns.get(peer, [])
        await asyncio.gather(*(c.close() for c in list(conns)), return_exceptions=True)

    # -- streams --------------------------------------------------------------------------------

    async def new_stream(
        self,
        peer: PeerID,
        protocols: Iterable[str] | str,
        *,
        bounded: bool = False,
        early_data: bytes = b"",
    ) -> Stream:
        """Open a stream to ``peer`` (dialing if needed) speaking the first agreed protocol
        (``bounded``, ``early_data``: see :meth:`Connection.new_stream`)."""
        protos = [protocols] if isinstance(protocols, str) else list(protocols)
        conn = await self.connect_peer(peer)
        self.connmgr.used(peer, self.clock.monotonic())
        return await conn.new_stream(protos, bounded=bounded, early_data=early_data)

    # -- inbound streams: negotiated and served without a task where the handler allows ----

    def _accept_inbound(self, stream: Stream) -> None:
        """The muxer accepted ``stream``: negotiate its protocol as its bytes arrive."""
        InboundNegotiation(self, stream, self._supported).start(self._negotiations)

    def spawn_stream_task(
        self,
        stream: Stream,
        fn: Callable[..., Coroutine[Any, Any, None]],
        *args: Any,
    ) -> None:
        """Run ``fn(stream, *args)`` for an inbound ``stream`` in a task its connection owns
        (cancelled when the connection closes; an exception resets the stream)."""
        self.connection_of(stream).muxed.spawn_handler(stream, lambda s: fn(s, *args))

    def _agreed(self, stream: Stream, protocol: str) -> None:
        """The negotiation of an inbound stream agreed on ``protocol``: hand it over."""
        stream.protocol = protocol
        self.connmgr.used(stream.conn.remote_peer, self.clock.monotonic())
        acceptor = self._acceptors.get(protocol)
        handler = self._handlers.get(protocol) if acceptor is None else None
        if acceptor is None and handler is None:  # removed while negotiating
            stream.reset_nowait()
            return
        scope = stream_scope_of(stream)
        if scope is not None:
            try:
                scope.set_protocol(protocol)
            except ResourceLimitExceeded as exc:
                log.debug("refusing %s stream of %s: %s", protocol, stream.conn.remote_peer, exc)
                stream.reset_nowait()
                return
        if acceptor is not None:
            try:
                acceptor(stream)
            except P2PError as exc:
                log.debug("handler for %s ended with %s", protocol, exc)
                stream.reset_nowait()
            except Exception:
                log.exception("handler for %s failed", protocol)
                stream.reset_nowait()
            return
        assert handler is not None
        self.spawn_stream_task(stream, self._run_handler, protocol, handler)

    async def _run_handler(self, stream: Stream, protocol: str, handler: StreamHandler) -> None:
        try:
            await handler(stream)
        except P2PError as exc:
            log.debug("handler for %s ended with %s", protocol, exc)
            await stream.reset()
            return
        except Exception:
            log.exception("handler for %s failed", protocol)
            await stream.reset()
            return
        if protocol not in self._keeps_stream:
            self.finish_inbound(stream)

    def finish_inbound(self, stream: Stream) -> None:
        """An inbound stream's handler is done: close our side; the remote must close its side
        within ``drain_timeout`` (at most ``drain_limit`` more bytes, dropped), or the stream
        is reset. A handler that returns without reading to EOF would otherwise leave what the
        remote sends after (up to a window per stream) buffered as long as the remote likes."""
        if stream.remote_closed and stream.local_closed:
            return
        try:
            if not stream.local_closed:
                stream.close_nowait()
            if stream.remote_closed:
                return
            Drain(stream, self.config.drain_limit).start(self._drains)
        except P2PError as exc:  # reset meanwhile
            log.debug("finishing an inbound %s stream: %s", stream.protocol, exc)

    def reply_and_finish(self, stream: Stream, data: bytes) -> None:
        """Send ``data`` on an inbound stream, then :meth:`finish_inbound` it (in a task of
        the connection if the write must wait)."""
        if stream.write_nowait(data):
            self.finish_inbound(stream)
        else:
            self.spawn_stream_task(stream, self._reply_in_task, data)

    async def _reply_in_task(self, stream: Stream, data: bytes) -> None:
        await stream.write(data)
        self.finish_inbound(stream)


@dataclass
class _Dialed:
    """An outbound connection dialled and upgraded, not yet registered with the host."""

    upgraded: Upgraded
    raw: RawConnection
    addr: Multiaddr
    scope: ConnectionScope


def is_relayed_connection(conn: Connection) -> bool:
    return is_relayed(conn.remote_addr)


def preferred(conns: Sequence[Connection]) -> Connection:
    """The connection new streams go on: the first direct one, else the first (relayed) one
    (after a hole punch the direct connection wins over the relay, as the DCUtR spec says)."""
    return next((c for c in conns if not is_relayed_connection(c)), conns[0])


def _ip_of(addr: Multiaddr) -> str | None:
    """The peer's IP address of a connection's remote address, in ``ipaddress``'s text form
    (what the per-address limits are keyed by); None for in-process and relayed connections (a
    relayed connection's address names the relay, not the peer). :func:`ip_of` answers an
    in-process address from its first byte, and memoises the rest."""
    ip = ip_of(addr)
    if ip is None or is_relayed(addr):
        return None
    return str(ip)


def _fail(fut: asyncio.Future[Connection], err: BaseException) -> None:
    if not fut.done():  # close() cancels the futures of dials under way
        fut.set_exception(err)
        fut.exception()  # mark retrieved: the waiters re-raise it, nobody else must


async def _close_quietly(conn: ReadWriter) -> None:
    try:
        await conn.close()
    except Exception as exc:  # the connection is being dropped anyway
        log.debug("closing a refused connection: %r", exc)
