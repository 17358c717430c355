"""TCP transport: listen on and dial ``/ip4|ip6|dns4|dns6/<host>/tcp/<port>`` multiaddrs.

The connection is an :class:`asyncio.BufferedProtocol` of our own rather than a
StreamReader/StreamWriter pair (which copies every byte twice, into its buffer and out of it
again): the socket is read into one receive buffer per thread, and each read is copied once into
a ``bytes`` queued for the reader.
Backpressure both ways: reading from the socket pauses while more than :data:`READ_HIGH_WATER`
bytes wait unread and resumes below :data:`READ_LOW_WATER`; :meth:`TcpConnection.write` waits
while the transport's write buffer is above its high-water mark (``pause_writing``).

That pull interface serves the upgrade. Afterwards :meth:`TcpConnection.attach` turns the
connection into a push :class:`~p2pnet.channel.Channel`: each read is handed straight to the
receiver (the Noise layer decrypts straight out of the receive buffer, without copying it), and
flow control is the receiver's to drive.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from multiaddr import Multiaddr

from p2pnet.channel import ChannelReceiver, LostSignal, ViewReceiver, accepts_views
from p2pnet.errors import ConnectionClosed, DialError
from p2pnet.io import Bytes, ChunkReader
from p2pnet.transport.addr import host_port_of, is_tcp_multiaddr, tcp_multiaddr
from p2pnet.transport.base import RawConnection, RawConnectionHandler

log = logging.getLogger("p2pnet.tcp")

#: Bytes asked of each ``recv``: big reads amortise the per-call cost of the event loop and of
#: the layers above (and split fewer Noise frames across chunks). Every connection of a thread
#: reads into the same buffer of this size (:class:`_ReceiveBuffer`), so no read allocates.
READ_SIZE = 1 << 20
#: Reading from the socket pauses while this much received data waits for the reader (the
#: remote then fills its TCP window and stops), and resumes once it is down to the low mark.
READ_HIGH_WATER = 2 << 20
READ_LOW_WATER = 512 << 10
#: Queued chunks smaller than this are joined into one read (up to :data:`READ_SIZE` bytes).
_SMALL_CHUNK = 16 << 10
#: How long :meth:`TcpConnection.close` waits for the write buffer to flush before aborting.
CLOSE_TIMEOUT = 2.0


class _ReceiveBuffer(threading.local):
    """The buffer every TCP connection of a thread (one event loop) receives into.

    The event loop asks for a buffer, ``recv_into`` fills it and the protocol is told how much
    arrived, all in one callback: the bytes are handed on (or copied) before the next read of
    any connection, so one buffer serves them all. A ``recv`` into a fresh ``bytes`` of a
    megabyte instead costs an allocation per read and, each time the allocator gave the memory
    back to the kernel, a page fault per 4 KiB.
    """

    buf: bytearray | None = None
    view: memoryview | None = None

    def get(self) -> memoryview:
        view = self.view
        if view is None:
            self.buf = bytearray(READ_SIZE)
            view = self.view = memoryview(self.buf)
        return view


_receive_buffer = _ReceiveBuffer()


class _TcpProtocol(asyncio.BufferedProtocol):
    """The event loop's side of a :class:`TcpConnection`: receive queue, flow-control state.

    Received bytes land in the thread's :class:`_ReceiveBuffer`. A receiver whose class sets
    ``accepts_views = True`` (the Noise channel, which decrypts them at once) is given a view of
    it, valid only during its ``data_received``; everyone else gets a ``bytes`` copy.
    """

    def __init__(self, on_made: Callable[[_TcpProtocol], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self.read_paused = False
        self.write_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closed_waiter: asyncio.Future[None] | None = None
        self._on_made = on_made
        #: Set by :meth:`TcpConnection.attach`: received bytes go straight to it.
        self.receiver: ChannelReceiver | None = None
        self.receiver_views = False  # the receiver takes views of the receive buffer
        self.receiver_lost = LostSignal()
        self.abort_timer: asyncio.TimerHandle | None = None

    # -- callbacks of the event loop -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        if self._on_made is not None:
            on_made, self._on_made = self._on_made, None
            on_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _receive_buffer.get()

    def buffer_updated(self, nbytes: int) -> None:
        view = _receive_buffer.get()
        receiver = self.receiver
        if receiver is not None:
            if not self.receiver_lost.lost:
                if self.receiver_views:
                    cast(ViewReceiver, receiver).data_received(view[:nbytes])
                else:
                    receiver.data_received(bytes(view[:nbytes]))
            return
        self.data_received(bytes(view[:nbytes]))

    def data_received(self, data: bytes) -> None:
        """Bytes read before the connection is attached: queued for :meth:`TcpConnection.read`."""
        size = len(data)
        self.chunks.append(data)
        self.buffered += size
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.buffered > READ_HIGH_WATER and not self.read_paused and not self.lost:
            self.read_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        if self.receiver is not None:
            self.receiver_lost.fire(self.receiver, None)
        self._wake_reader()
        return True  # half-close: we may still write

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        if self.abort_timer is not None:
            self.abort_timer.cancel()
            self.abort_timer = None
        if self.receiver is not None:
            self.receiver_lost.fire(self.receiver, None if exc is None else _lost_error(self))
        self._wake_reader()
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.receiver is not None:
            self.receiver.pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.receiver is not None:
            self.receiver.resume_writing()
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()

    # -- used by TcpConnection -----------------------------------------------------------------

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_readable(self) -> None:
        if self._read_waiter is not None:
            raise RuntimeError("another coroutine is already reading from this TCP connection")
        assert self.transport is not None
        if self.read_paused:  # nothing queued, so the reader is far below the low mark
            self.read_paused = False
            self.transport.resume_reading()
        fut = asyncio.get_running_loop().create_future()
        self._read_waiter = fut
        try:
            await fut
        finally:
            self._read_waiter = None

    async def wait_writable(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        await fut

    async def wait_lost(self) -> None:
        if self.lost:
            return
        if self._closed_waiter is None:
            self._closed_waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._closed_waiter)


def _lost_error(proto: _TcpProtocol) -> ConnectionClosed:
    if proto.error is not None:
        return ConnectionClosed(f"TCP connection lost: {proto.error}")
    return ConnectionClosed("TCP connection closed")


class TcpConnection(ChunkReader):
    """A raw TCP connection, speaking the :class:`~p2pnet.io.ReadWriter` interface.

    ``read`` returns the received chunks as the event loop produced them (small ones joined),
    ``b""`` at EOF (the remote's FIN, or after :meth:`close`/:meth:`abort`); a connection reset
    raises :class:`ConnectionClosed` once the data received before it has been read.
    """

    def __init__(self, protocol: _TcpProtocol, *, initiator: bool) -> None:
        super().__init__()
        transport = protocol.transport
        if transport is None:
            raise ValueError("the protocol has no transport yet")
        self._proto = protocol
        self._transport = transport
        self.initiator = initiator
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sockname = transport.get_extra_info("sockname")
        peername = transport.get_extra_info("peername")
        if sockname is None or peername is None:
            if sock is None:
                raise OSError("TCP socket without addresses")
            sockname, peername = sock.getsockname(), sock.getpeername()  # OSError if gone
        self.local_addr = tcp_multiaddr(sockname)
        self.remote_addr = tcp_multiaddr(peername)
        self._closed = False

    # -- reading ------------------------------------------------------------------------------

    async def _read_chunk(self) -> bytes:
        proto = self._proto
        chunks = proto.chunks
        while not chunks:
            if proto.lost:
                if proto.error is not None:
                    raise _lost_error(proto)
                return b""
            if proto.eof:
                return b""
            await proto.wait_readable()
        chunk = chunks.popleft()
        if len(chunk) < _SMALL_CHUNK and chunks and len(chunks[0]) < _SMALL_CHUNK:
            parts = [chunk]
            size = len(chunk)
            while chunks and size < READ_SIZE and len(chunks[0]) < _SMALL_CHUNK:
                nxt = chunks.popleft()
                parts.append(nxt)
                size += len(nxt)
            chunk = b"".join(parts)
        proto.buffered -= len(chunk)
        if proto.read_paused and proto.buffered <= READ_LOW_WATER and not proto.lost:
            proto.read_paused = False
            self._transport.resume_reading()
        return chunk

    # -- writing ------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._closed:
            raise ConnectionClosed("write on a closed TCP connection")
        if self._proto.lost or self._transport.is_closing():
            raise _lost_error(self._proto)

    async def _drain(self) -> None:
        proto = self._proto
        while proto.write_paused:
            if proto.lost:
                raise _lost_error(proto)
            await proto.wait_writable()
        if proto.lost and proto.error is not None:
            raise _lost_error(proto)

    async def write(self, data: Bytes) -> None:
        """Send ``data``; waits while the transport's write buffer is full."""
        self._check_writable()
        try:
            self._transport.write(data)
        except (ConnectionError, OSError) as exc:  # pragma: no cover - asyncio reports later
            raise ConnectionClosed(f"TCP connection lost: {exc}") from exc
        if self._proto.write_paused:
            await self._drain()

    # -- push mode ----------------------------------------------------------------------------

    def attach(self, receiver: ChannelReceiver) -> TcpChannel:
        """Push every byte not read yet, then every byte received, to ``receiver``."""
        proto = self._proto
        if proto.receiver is not None:
            raise RuntimeError("this TCP connection is attached already")
        channel = TcpChannel(self)
        pending = self._take_pending(-1) if self._pending_pos < len(self._pending) else b""
        proto.receiver = receiver
        proto.receiver_views = accepts_views(receiver)
        if pending:
            receiver.data_received(pending)
        chunks = proto.chunks
        while chunks and not proto.receiver_lost.lost:
            chunk = chunks.popleft()
            proto.buffered -= len(chunk)
            receiver.data_received(chunk)
        chunks.clear()
        proto.buffered = 0
        if proto.read_paused and not proto.lost:
            proto.read_paused = False
            self._transport.resume_reading()
        if proto.lost:
            proto.receiver_lost.fire(receiver, _lost_error(proto) if proto.error else None)
        elif proto.eof:
            proto.receiver_lost.fire(receiver, None)
        elif proto.write_paused:
            receiver.pause_writing()
        return channel

    # -- closing ------------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Flush what is buffered, send FIN and close (abort after :data:`CLOSE_TIMEOUT`)."""
        if self._closed:
            return
        self._closed = True
        self._transport.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._proto.wait_lost()
        except TimeoutError:
            self._transport.abort()

    def abort(self) -> None:
        """Drop the connection at once, without flushing."""
        self._closed = True
        self._transport.abort()

    def __repr__(self) -> str:
        return f"<TcpConnection {self.local_addr} <-> {self.remote_addr}>"


class TcpChannel:
    """The push :class:`~p2pnet.channel.Channel` of an attached :class:`TcpConnection`."""

    __slots__ = ("_conn", "_proto", "_transport")

    def __init__(self, conn: TcpConnection) -> None:
        self._conn = conn
        self._proto = conn._proto
        self._transport = conn._transport

    def write(self, data: Bytes) -> None:
        if self._conn._closed or self._proto.lost:
            raise _lost_error(self._proto)
        self._transport.write(data)

    def writelines(self, chunks: Sequence[Bytes]) -> None:
        if self._conn._closed or self._proto.lost:
            raise _lost_error(self._proto)
        self._transport.writelines(chunks)

    def pause_reading(self) -> None:
        proto = self._proto
        if not proto.read_paused and not proto.lost:
            proto.read_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        proto = self._proto
        if proto.read_paused and not proto.lost:
            proto.read_paused = False
            self._transport.resume_reading()

    def close(self) -> None:
        """FIN after the write buffer is flushed; abort if that takes :data:`CLOSE_TIMEOUT`."""
        if self._conn._closed:
            return
        self._conn._closed = True
        proto = self._proto
        self._transport.close()
        if not proto.lost:
            proto.abort_timer = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT, self._transport.abort
            )

    def abort(self) -> None:
        self._conn.abort()

    async def wait_closed(self) -> None:
        await self._proto.wait_lost()


ConnectionHandler = Callable[[TcpConnection], Awaitable[None]]


class TcpListener:
    """Listening sockets; each accepted connection is handed to ``handler``.

    The accept loop is our own rather than ``loop.create_server``'s, which takes the whole
    backlog at once (up to :data:`ACCEPT_BACKLOG` sockets before any is looked at) and, out of
    file descriptors, stops accepting for a full second: a flood of connections then holds a
    legitimate one in the kernel's queue for seconds. Here each wake-up of a listening socket
    accepts at most :data:`ACCEPT_BATCH` connections, so the handler (the host's admission
    check, which aborts a refused connection and frees its fd at once) runs between batches;
    out of fds, accepting pauses :data:`ACCEPT_PAUSE` and resumes (the refused connections
    give their fds back within a few loop iterations). Only while accept fails at once after
    each pause (fds held by live connections) does the pause double, up to
    :data:`ACCEPT_PAUSE_MAX`: the cost of trying is one failing syscall, the cost of waiting is
    a legitimate connection's latency.

    :attr:`admit`, when its owner sets it, is asked about each connection's remote IP right
    after ``accept()``, before any transport, protocol or task exists: a connection it refuses
    (a banned or flooding address) is closed at once, the cheapest refusal there is.

    The handler runs in a task the listener owns: :meth:`close` stops accepting, then cancels
    and awaits the handlers still running. The connections themselves belong to whoever the
    handler gave them to; a handler that fails with an exception gets its connection aborted.
    """

    def __init__(self, handler: ConnectionHandler, requested: Multiaddr) -> None:
        self._handler = handler
        self.requested = requested
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._resume: asyncio.TimerHandle | None = None
        self._pause = ACCEPT_PAUSE
        self._warned_at: float | None = None
        self._pauses_unreported = 0
        self.multiaddrs: list[Multiaddr] = []
        #: May a connection from this IP go on? (None: all may.)
        self.admit: Callable[[str], bool] | None = None
        #: Connections closed at once because :attr:`admit` refused them.
        self.refused = 0

    def _start(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket]) -> None:
        self._loop = loop
        self._sockets = sockets
        self.multiaddrs = [tcp_multiaddr(s.getsockname()) for s in sockets]
        self._serve()

    def _serve(self) -> None:
        self._resume = None
        if self._closed or self._loop is None:
            return
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _stop_serving(self) -> None:
        if self._loop is not None:
            for sock in self._sockets:
                self._loop.remove_reader(sock.fileno())

    def _accept(self, sock: socket.socket) -> None:
        loop = self._loop
        assert loop is not None
        for i in range(ACCEPT_BATCH):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                break  # the queue is empty (or the head connection left before we took it)
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    if i > 0:  # fds came back since the last pause: a short one again
                        self._pause = ACCEPT_PAUSE
                    self._out_of_resources(exc)
                    return
                # e.g. EPERM from a firewall rule, EPROTO: that one connection is lost
                log.debug("accept() on %s failed: %s", self.multiaddrs, exc)
                continue
            if self.admit is not None and not self.admit(addr[0]):
                self.refused += 1
                conn.close()
                continue
            conn.setblocking(False)
            task = loop.create_task(self._serve_connection(conn), name=f"tcp-accept {addr}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._pause = ACCEPT_PAUSE  # accepting works again: the next pause starts short

    def _out_of_resources(self, exc: OSError) -> None:
        global accept_out_of_resources
        accept_out_of_resources += 1
        assert self._loop is not None
        if self._resume is not None:
            return  # another listening socket already paused us
        pause = self._pause
        self._pause = min(ACCEPT_PAUSE_MAX, pause * 2)
        # under a flood pauses come every few tens of ms: one warning per interval
        now = self._loop.time()
        self._pauses_unreported += 1
        if self._warned_at is None or now - self._warned_at >= ACCEPT_WARNING_INTERVAL:
            log.warning(
                "out of file descriptors: accepting paused %d times since the last warning, "
                "now for %.2f s (%s)",
                self._pauses_unreported,
                pause,
                exc,
            )
            self._warned_at = now
            self._pauses_unreported = 0
        else:
            log.debug("out of file descriptors: not accepting for %.2f s", pause)
        self._stop_serving()
        self._resume = self._loop.call_later(pause, self._serve)

    async def _serve_connection(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, proto = await loop.connect_accepted_socket(_TcpProtocol, sock)
        except OSError as exc:  # e.g. the peer already went away
            log.debug("accepted TCP connection lost at once: %s", exc)
            sock.close()
            return
        if self._closed:
            transport.abort()
            return
        try:
            conn = TcpConnection(proto, initiator=False)
        except OSError:  # the peer went away before we looked at it
            transport.abort()
            return
        try:
            await self._handler(conn)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler of the TCP connection from %s failed", conn.remote_addr)
            conn.abort()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_serving()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        for sock in self._sockets:
            sock.close()
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
            for t in pending:  # pragma: no cover - a handler that ignores cancellation
                log.error("TCP connection handler %s did not stop", t.get_name())


#: listen() backlog (the kernel caps it at net.core.somaxconn).
ACCEPT_BACKLOG = 1024
#: Connections accepted per wake-up of a listening socket (see :class:`TcpListener`).
ACCEPT_BATCH = 16
#: Out of file descriptors: the first pause of accepting, and the longest.
ACCEPT_PAUSE = 0.02
ACCEPT_PAUSE_MAX = 0.25
#: Seconds between two warnings about running out of file descriptors.
ACCEPT_WARNING_INTERVAL = 10.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: How often accept() ran out of file descriptors (each time accepting pauses).
accept_out_of_resources = 0


#: SO_REUSEPORT on the listener lets a hole-punching dial bind the listening port too (the NAT
#: mapping the peer was told about is that port's). Linux and the BSDs have it.
REUSE_PORT = hasattr(socket, "SO_REUSEPORT")


def _check_port_free(host: str, port: int) -> None:
    """With SO_REUSEPORT two listeners could share a port; a second node on a taken port must
    still fail with EADDRINUSE, so bind once without it first (racy only against a process
    starting in the same instant)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(sockaddr)  # OSError(EADDRINUSE) when taken


async def listen(addr: Multiaddr, handler: ConnectionHandler) -> TcpListener:
    host, port = host_port_of(addr)
    loop = asyncio.get_running_loop()
    if REUSE_PORT and port != 0:
        _check_port_free(host, port)
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, type_, proto, _name, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if REUSE_PORT:  # a hole-punching dial may bind this port too
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # like asyncio: an IPv6 socket serves IPv6 only
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot bind {sockaddr}: {exc.strerror}") from None
            # A deep accept queue: a burst of connection attempts (a flood refused one by one
            # above) must not make the kernel drop a legitimate SYN (a 1 s retransmission).
            sock.listen(ACCEPT_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(f"no address to listen on for {addr}")
    listener = TcpListener(handler, addr)
    listener._start(loop, sockets)
    return listener


async def dial(
    addr: Multiaddr,
    *,
    timeout: float = 10.0,
    local_host: str | None = None,
    local_port: int | None = None,
) -> TcpConnection:
    """Connect to ``addr`` (from ``local_host`` if given, e.g. another loopback address).

    With ``local_port`` the socket is bound to that port with SO_REUSEADDR and SO_REUSEPORT,
    beside a listener on it: the dial of a hole punch, which must leave through the port whose
    NAT mapping the peer dials (both SYNs crossing make a TCP simultaneous open)."""
    host, port = host_port_of(addr)
    loop = asyncio.get_running_loop()
    local = (local_host, 0) if local_host is not None else None
    try:
        async with asyncio.timeout(timeout):
            if local_port is not None:
                transport, proto = await _dial_from_port(loop, host, port, local_host, local_port)
            else:
                transport, proto = await loop.create_connection(
                    _TcpProtocol, host, port, local_addr=local
                )
    except TimeoutError as exc:
        raise DialError(f"TCP dial to {addr} timed out after {timeout}s") from exc
    except OSError as exc:
        raise DialError(f"TCP dial to {addr} failed: {exc}") from exc
    try:
        return TcpConnection(proto, initiator=True)
    except OSError as exc:
        transport.abort()
        raise DialError(f"TCP dial to {addr} failed: {exc}") from exc


async def _dial_from_port(
    loop: asyncio.AbstractEventLoop, host: str, port: int, local_host: str | None, local_port: int
) -> tuple[asyncio.Transport, _TcpProtocol]:
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:  # pragma: no cover - getaddrinfo raises rather than answer nothing
        raise OSError(f"no address for {host}")
    family, kind, proto_num, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto_num)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if REUSE_PORT:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        any_host = "::" if family == socket.AF_INET6 else "0.0.0.0"
        sock.bind((local_host or any_host, local_port))
        await loop.sock_connect(sock, sockaddr)
        return await loop.create_connection(_TcpProtocol, sock=sock)
    except BaseException:
        sock.close()
        raise


class TcpTransport:
    """The :class:`~p2pnet.transport.base.Transport` for ``/ip4|ip6|dns4|dns6/.../tcp/N``."""

    def __init__(self) -> None:
        self._listeners: list[TcpListener] = []

    def listening_on(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every socket we listen on (``0.0.0.0`` when unspecified)."""
        self._listeners = [lst for lst in self._listeners if not lst._closed]
        return [host_port_of(a) for lst in self._listeners for a in lst.multiaddrs]

    async def dial_from_listen_port(self, addr: Multiaddr, *, timeout: float) -> TcpConnection:
        """Dial ``addr`` from the port we listen on (same address family), for a hole punch;
        from an ephemeral port when we listen on none of that family."""
        host, _ = host_port_of(addr)
        v6 = ":" in host
        for local_host, local_port in self.listening_on():
            if (":" in local_host) == v6:
                return await dial(
                    addr, timeout=timeout, local_host=local_host, local_port=local_port
                )
        return await dial(addr, timeout=timeout)

    def can_dial(self, addr: Multiaddr) -> bool:
        return is_tcp_multiaddr(addr)

    def can_listen(self, addr: Multiaddr) -> bool:
        return is_tcp_multiaddr(addr)

    async def dial(self, addr: Multiaddr, *, timeout: float) -> RawConnection:
        return await dial(addr, timeout=timeout)

    async def listen(self, addr: Multiaddr, handler: RawConnectionHandler) -> TcpListener:
        listener = await listen(addr, handler)
        self._listeners.append(listener)
        return listener
