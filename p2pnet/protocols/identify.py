"""identify (``/ipfs/id/1.0.0``) and identify push (``/ipfs/id/push/1.0.0``).

On every new connection we ask the remote who it is; the answer (protocols, listen addresses,
public key, versions, the address it sees us at) goes into the peer store. When our own protocols
change we push a fresh record to every connected peer. Building, parsing and applying messages
are the pure functions of :mod:`p2pnet.protocols.identify_messages`; this service moves them over
streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from multiaddr import Multiaddr

from p2pnet.deadlines import Deadline, DeadlineQueue
from p2pnet.errors import P2PError
from p2pnet.host.bus import (
    AddressesChanged,
    ConnectionEnded,
    ConnectionOpened,
    PeerIdentified,
    ProtocolsChanged,
)
from p2pnet.host.connection import Connection, Direction
from p2pnet.host.host import Host
from p2pnet.host.reply import ReplyReader
from p2pnet.multistream.core import MultistreamDialer
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.record import make_peer_record
from p2pnet.protocols.identify_messages import (
    IdentifyInfo,
    apply_identify,
    identify_parts,
    observed_addr_field,
    parse_identify,
)
from p2pnet.resources.limits import ResourceLimits
from p2pnet.resources.manager import TokenBucket
from p2pnet.service import Lifecycle
from p2pnet.stream import ConnectionInfo, Stream
from p2pnet.waiters import Waiters
from p2pnet.wire.framing import (
    encode_length_prefixed,
    read_length_prefixed,
    write_length_prefixed,
)

PROTOCOL_ID = "/ipfs/id/1.0.0"
PUSH_PROTOCOL_ID = "/ipfs/id/push/1.0.0"
# go caps identify messages at 4 KiB per message and js at 8 KiB; we accept more but not unbounded.
MAX_IDENTIFY_SIZE = 64 * 1024
#: Identify pushes taken from one peer by default: a token bucket (per second, burst). Beyond
#: it a push stream is reset unread (a peer changes its protocols or addresses rarely). The
#: host's ``ResourceLimits.identify_push_rate`` and ``identify_push_burst`` set them.
PUSH_RATE = ResourceLimits.identify_push_rate
PUSH_BURST = ResourceLimits.identify_push_burst

log = logging.getLogger("p2pnet.identify")

__all__ = ["PROTOCOL_ID", "PUSH_PROTOCOL_ID", "IdentifyInfo", "IdentifyService"]


class IdentifyService:
    def __init__(self, host: Host, *, timeout: float = 10.0) -> None:
        self.host = host
        self.timeout = timeout
        #: Peers identified (at least once, while connected), and who waits for the others.
        self._identified: set[PeerID] = set()
        self._identify_waiters: dict[PeerID, Waiters] = {}
        #: Connections whose identify exchange runs, and who waits for its end.
        self._running: dict[Connection, list[asyncio.Future[None]]] = {}
        self._push_pending = False
        self._push_budget: dict[PeerID, TokenBucket] = {}
        self._record: tuple[tuple[bytes, ...], bytes] | None = None
        #: Our identify message but the observed address: (addresses, record, protocols,
        #: (the bytes before it, the bytes after it)).
        self._parts: tuple[list[Multiaddr], bytes, list[str], tuple[bytes, bytes]] | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        #: The deadlines of the identify requests under way (one timer for all).
        self._deadlines = DeadlineQueue(timeout)
        # Serving from construction (what every caller relies on): the service starts here.
        self._lifecycle = Lifecycle("identify")
        self._lifecycle.begin_start()
        self._attach()

    # -- lifecycle ---------------------------------------------------------------------------

    def _attach(self) -> None:
        host = self.host
        host.set_stream_acceptor(PROTOCOL_ID, self._accept_identify)
        host.set_stream_handler(PUSH_PROTOCOL_ID, self._handle_push)
        bus = host.bus
        self._unsubscribe = [
            bus.subscribe(ConnectionOpened, lambda e: self._on_connected(e.connection)),
            bus.subscribe(ConnectionEnded, lambda e: self._on_disconnected(e.connection)),
            bus.subscribe(ProtocolsChanged, lambda _: self._schedule_push()),
            bus.subscribe(AddressesChanged, lambda _: self._schedule_push()),
        ]

    async def start(self) -> None:
        """A no-op: identify runs from construction (RuntimeError once closed)."""
        self._lifecycle.begin_start()

    async def close(self) -> None:
        """Stop for good: no more identify of new connections, no handlers, no pushes."""
        if self._lifecycle.begin_close() is None:
            return
        unsubscribe, self._unsubscribe = self._unsubscribe, []
        for stop in unsubscribe:
            stop()
        self.host.remove_stream_handler(PROTOCOL_ID)
        self.host.remove_stream_handler(PUSH_PROTOCOL_ID)
        self._deadlines.clear()

    def on_identified(self, callback: Callable[[IdentifyInfo], None]) -> Callable[[], None]:
        """Call ``callback`` after every identify or push from a peer has been applied.

        A shorthand for subscribing to :class:`~p2pnet.host.bus.PeerIdentified` on the host's
        bus; returns the unsubscribe function. For a push, ``info`` holds only the fields the
        push carried.
        """
        return self.host.bus.subscribe(PeerIdentified, lambda e: callback(e.info))

    # -- our side ------------------------------------------------------------------------------

    def build_message(self, conn: ConnectionInfo) -> bytes:
        """Our identify message for the peer on ``conn`` (its address is what we observe).

        All but the observed address is the same for every peer: made again only when our
        addresses, protocols or record change (:func:`identify_parts`; same bytes as
        :func:`build_identify`)."""
        host = self.host
        addrs = host.advertised_addrs
        record = self.signed_peer_record(addrs)
        protocols = host.protocols
        cached = self._parts
        if (
            cached is None
            or cached[1] is not record
            or cached[0] != addrs
            or cached[2] != protocols
        ):
            config = host.config
            parts = identify_parts(
                public_key=host.key.public_key,
                listen_addrs=addrs,
                protocols=protocols,
                protocol_version=config.protocol_version,
                agent_version=config.agent_version,
                signed_peer_record=record,
            )
            cached = self._parts = (addrs, record, protocols, parts)
        before, after = cached[3]
        return before + observed_addr_field(conn.remote_addr) + after

    def signed_peer_record(self, addrs: list[Multiaddr] | None = None) -> bytes:
        """Our signed peer record (RFC 0003), re-signed only when our addresses change
        (``addrs``: the advertised addresses, when the caller has them already)."""
        if addrs is None:
            addrs = self.host.advertised_addrs
        key = tuple(a.to_bytes() for a in addrs)
        if self._record is None or self._record[0] != key:
            # Milliseconds since the epoch: a later record always has a higher sequence number.
            seq = int(self.host.clock.time() * 1000)
            self._record = (key, make_peer_record(self.host.key, addrs, seq))
        return self._record[1]

    def _accept_identify(self, stream: Stream) -> None:
        """An identify request: our message, then the stream ends (no task for it)."""
        self.host.reply_and_finish(stream, encode_length_prefixed(self.build_message(stream.conn)))

    # -- their side ------------------------------------------------------------------------------

    def _on_connected(self, conn: Connection) -> None:
        self._running[conn] = []
        try:
            stream = conn.muxed.open_stream_nowait()
        except P2PError as exc:
            log.info("identify of %s failed: %s", conn.remote_peer, exc)
            self._finished(conn)
            return
        if stream is not None:
            # no task: the answer is read as it arrives (_IdentifyRequest)
            _IdentifyRequest(self, conn, stream).start(self._deadlines)
            return
        # (a constant name: the peer's base58 text would be computed for every connection)
        self.host.spawn(self._identify_quietly(conn), name="identify")

    def _finished(self, conn: Connection) -> None:
        for waiter in self._running.pop(conn, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _answered(self, conn: Connection, data: bytes) -> None:
        """The identify message ``data`` came from the peer on ``conn``: record it."""
        try:
            info = self._apply(self._parse_answer(conn, data))
            self._observed(conn, info)
        except P2PError as exc:
            log.info("identify of %s failed: %s", conn.remote_peer, exc)

    def _on_disconnected(self, conn: Connection) -> None:
        if not self.host.is_connected(conn.remote_peer):
            self._identified.discard(conn.remote_peer)
            self._push_budget.pop(conn.remote_peer, None)

    async def _identify_quietly(self, conn: Connection) -> None:
        try:
            await self.identify_connection(conn)
        except (P2PError, TimeoutError) as exc:
            log.info("identify of %s failed: %s", conn.remote_peer, exc)
        finally:
            self._finished(conn)

    async def identify_finished(self, conn: Connection) -> None:
        """Until the identify exchange this service started when ``conn`` opened has ended,
        answered or failed (at once if none runs): what go-libp2p's ``NewStream`` waits for
        before it picks how to negotiate a protocol (the peer store then knows the peer's)."""
        waiters = self._running.get(conn)
        if waiters is None:
            return
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        await waiter

    async def identify_connection(self, conn: Connection) -> IdentifyInfo:
        """Ask the peer on ``conn`` who it is, record the answer and return it.

        Raises :class:`~p2pnet.errors.P2PError` (or TimeoutError after ``timeout``) on failure.
        """
        async with asyncio.timeout(self.timeout):  # (bounds the negotiation and the read)
            stream = await conn.new_stream([PROTOCOL_ID], bounded=True)
            async with stream:
                data = await read_length_prefixed(stream, MAX_IDENTIFY_SIZE, timeout=None)
        info = self._apply(self._parse_answer(conn, data))
        self._observed(conn, info)
        return info

    @staticmethod
    def _parse_answer(conn: Connection, data: bytes) -> IdentifyInfo:
        """The peer's identify answer on ``conn`` (whose handshake authenticated its key)."""
        return parse_identify(
            conn.remote_peer, data, push=False, known_key=conn.secure.remote_public_key
        )

    async def identify(self, peer: PeerID) -> IdentifyInfo:
        """Run identify again with ``peer`` (connecting if needed) and return what it said."""
        return await self.identify_connection(await self.host.connect_peer(peer))

    async def _handle_push(self, stream: Stream) -> None:
        peer = stream.conn.remote_peer
        now = self.host.clock.monotonic()
        budget = self._push_budget.get(peer)
        limits = self.host.resources.limits
        if budget is None:
            budget = self._push_budget[peer] = TokenBucket(
                limits.identify_push_rate, limits.identify_push_burst, now
            )
        if not budget.take(now):
            log.debug("identify push from %s beyond %s/s: reset", peer, limits.identify_push_rate)
            self.host.resources.refused["identify/push_rate"] += 1
            await stream.reset()
            return
        async with stream:
            data = await read_length_prefixed(stream, MAX_IDENTIFY_SIZE)
        info = self._apply(parse_identify(stream.conn.remote_peer, data, push=True))
        self._observed(stream.conn, info)

    def _observed(self, conn: ConnectionInfo, info: IdentifyInfo) -> None:
        """Note how the peer sees us in the host's address book; when that confirms a new
        address of ours (or one expired), tell our peers with a push."""
        if info.observed_addr is None:
            return
        changed = self.host.addresses.observe(
            info.observed_addr,
            observer=conn.remote_addr,
            inbound=conn.direction is Direction.INBOUND,
            now=self.host.clock.monotonic(),
        )
        if changed:
            log.info(
                "confirmed addresses now %s",
                self.host.addresses.confirmed(self.host.clock.monotonic()),
            )
            self.host.bus.emit(AddressesChanged())

    def _apply(self, info: IdentifyInfo) -> IdentifyInfo:
        apply_identify(self.host.peerstore, info)
        self._identified.add(info.peer)
        waiters = self._identify_waiters.pop(info.peer, None)
        if waiters is not None:
            waiters.wake()
        log.debug("identified %s: %s", info.peer, info)
        self.host.bus.emit(PeerIdentified(info))
        return info

    async def wait_identified(self, peer: PeerID, timeout: float = 10.0) -> None:
        """Wait until the first identify exchange with ``peer`` completed."""
        if peer in self._identified:
            return
        waiters = self._identify_waiters.get(peer)
        if waiters is None:
            waiters = self._identify_waiters[peer] = Waiters()
        try:
            async with asyncio.timeout(timeout):  # (wait_for would wrap the wait in a task)
                while peer not in self._identified:
                    await waiters.wait()
        finally:
            if not waiters.waiting and self._identify_waiters.get(peer) is waiters:
                del self._identify_waiters[peer]

    # -- push --------------------------------------------------------------------------------

    def _schedule_push(self) -> None:
        # Several handler changes in a row produce one push.
        if self._push_pending or not self.host.connected_peers():
            return
        self._push_pending = True
        self.host.spawn(self._push_all(), name="identify push")

    async def _push_all(self) -> None:
        await asyncio.sleep(0)
        self._push_pending = False
        await asyncio.gather(
            *(self._push(c) for c in self.host.connections()), return_exceptions=True
        )

    async def _push(self, conn: Connection) -> None:
        if PUSH_PROTOCOL_ID not in self.host.peerstore.get_protocols(conn.remote_peer):
            return
        try:
            async with asyncio.timeout(self.timeout):
                stream = await conn.new_stream([PUSH_PROTOCOL_ID])
                async with stream:
                    await write_length_prefixed(stream, self.build_message(conn))
        except (P2PError, TimeoutError) as exc:
            log.debug("identify push to %s failed: %s", conn.remote_peer, exc)


class _IdentifyRequest:
    """Our identify request on a new connection, without a task: the stream's consumer feeds
    the multistream dialer, then the answer's length-prefixed message, as the bytes arrive.

    The same bounds as :meth:`IdentifyService.identify_connection`: the service's ``timeout``
    for the whole exchange (a deadline of the service's queue), at most
    :data:`MAX_IDENTIFY_SIZE` bytes, a refused or malformed negotiation, a malformed prefix or
    a stream that ends early fails it (the stream is reset); bytes after the message are
    ignored (we close our side once it is read). Waiters of ``identify_finished`` are released
    when it ends, whichever way."""

    __slots__ = ("_conn", "_deadline", "_neg", "_reader", "_service", "_stream")

    def __init__(self, service: IdentifyService, conn: Connection, stream: Stream) -> None:
        self._service = service
        self._conn = conn
        self._stream = stream
        self._neg = MultistreamDialer([PROTOCOL_ID])
        self._reader = ReplyReader(stream, MAX_IDENTIFY_SIZE, self._neg)
        self._deadline: Deadline | None = None

    def start(self, deadlines: DeadlineQueue) -> None:
        stream = self._stream
        try:
            if not stream.write_nowait(self._neg.data_to_send()):
                # (a new stream on a connection whose writes already wait: rare) a task does it
                stream.reset_nowait()
                self._service.host.spawn(
                    self._service._identify_quietly(self._conn), name="identify"
                )
                return
            self._deadline = deadlines.add(self._timed_out)
            stream.set_consumer(self)
        except P2PError as exc:
            self._fail(str(exc))

    def data_received(self, data: bytes) -> None:
        try:
            message = self._reader.feed(data)
        except P2PError as exc:
            self._fail(str(exc))
            return
        if message is not None:
            self._end()
            try:
                self._stream.close_nowait()
            except P2PError as exc:  # pragma: no cover - reset meanwhile
                log.debug("closing the identify stream: %s", exc)
            try:
                self._service._answered(self._conn, message)
            finally:
                self._service._finished(self._conn)

    def eof_received(self) -> None:
        self._fail("the stream ended before the identify message")

    def stream_lost(self, exc: P2PError) -> None:
        # (the stream is gone already: no reset, which would re-enter the muxer while it
        # tells its streams that the connection ended)
        self._fail(str(exc), reset=False)

    def _timed_out(self) -> None:
        self._deadline = None
        self._fail(f"timed out after {self._service.timeout:g} s")

    def _end(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._stream.set_consumer(None)

    def _fail(self, why: str, *, reset: bool = True) -> None:
        self._end()
        log.info("identify of %s failed: %s", self._conn.remote_peer, why)
        if reset:
            self._stream.reset_nowait()
        self._service._finished(self._conn)
