"""The asyncio adapter around the yamux core: :class:`YamuxConnection` and :class:`YamuxStream`.

Every protocol decision (stream states, flow control, how a write is split into frames, keepalive,
limits) is made by the sans-IO :class:`~p2pnet.mux.yamux.YamuxSession`; this module only moves
bytes, timers and events. Three tasks per connection, all owned and awaited by
:meth:`YamuxConnection.close`:

* the *reader* reads chunks from the connection below, feeds them to the session and dispatches
  its events (payload chunks go to the stream's buffer; its readers are woken only when the buffer
  goes from empty to non-empty);
* the *writer* is the only code that writes to the connection: it joins every queued frame into
  one ``write`` (so frames never interleave and small frames are batched). The reader never waits
  for the writer, so two peers that both write a lot cannot deadlock;
* the *timer* sleeps until :meth:`~p2pnet.mux.yamux.YamuxSession.get_timer` and runs
  :meth:`~p2pnet.mux.yamux.YamuxSession.handle_timer` (keepalive pings and their timeout).

Time is read only through the injected :class:`~p2pnet.clock.Clock`.

Inbound streams go to the ``on_stream`` callback (each in a task owned by the connection; an
exception is logged and resets the stream) or, without a callback, to :meth:`accept_stream`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from p2pnet.clock import SYSTEM_CLOCK, Clock
from p2pnet.errors import (
    ConnectionClosed,
    P2PError,
    ProtocolError,
    ResourceLimitExceeded,
    StreamClosed,
    StreamLimitExceeded,
    StreamReset,
)
from p2pnet.io import Bytes, ChunkReader, ReadWriter
from p2pnet.mux.yamux import (
    GO_AWAY_INTERNAL_ERROR,
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    PROTOCOL_ID,
    DataReceived,
    GoAwayReceived,
    KeepaliveTimedOut,
    PongReceived,
    SendWindowUpdated,
    StreamAcked,
    StreamEnded,
    StreamOpened,
    StreamRecord,
    StreamResetByRemote,
    YamuxConfig,
    YamuxSession,
)
from p2pnet.resources.manager import ConnectionScope, StreamScope
from p2pnet.stream import ConnectionInfo, Direction, StreamCallback

log = logging.getLogger("p2pnet.yamux")


class YamuxStream(ChunkReader):
    """One yamux stream; a :class:`~p2pnet.stream.Stream`.

    ``read`` returns ``b""`` after the remote's FIN; ``write`` waits for send window and raises
    :class:`StreamClosed` after :meth:`close`, :class:`StreamReset` after a reset (either side) and
    :class:`ConnectionClosed` once the connection is gone. Its state is the core's
    :class:`~p2pnet.mux.yamux.StreamRecord`.
    """

    def __init__(
        self, connection: YamuxConnection, record: StreamRecord, scope: StreamScope | None = None
    ) -> None:
        super().__init__()
        self.connection = connection
        #: What this stream holds in the resource manager (None: not accounted).
        self.scope = scope
        #: A handler task of the connection runs for this (inbound) stream.
        self.handler_running = False
        self.record = record
        self.stream_id = record.stream_id
        #: The application protocol, set by the host after multistream negotiation.
        self.protocol: str | None = None
        self._chunks: deque[bytes] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._write_lock = asyncio.Lock()

    # ----------------------------------------------------------------- state (the core's)

    @property
    def local_closed(self) -> bool:
        """We sent FIN (or the stream or its connection is dead)."""
        return self.record.local_closed or self.connection.error is not None

    @property
    def remote_closed(self) -> bool:
        """The remote sent FIN (or the stream or its connection is dead)."""
        return self.record.remote_closed or self.connection.error is not None

    @property
    def is_reset(self) -> bool:
        return self.record.is_reset

    @property
    def direction(self) -> Direction:
        return Direction.OUTBOUND if self.record.outbound else Direction.INBOUND

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet."""
        return sum(map(len, self._chunks)) + len(self._pending) - self._pending_pos

    def _raise_if_dead(self) -> None:
        if self.record.is_reset:
            raise StreamReset(f"stream {self.stream_id} was reset")
        error = self.connection.error
        if error is not None:
            raise ConnectionClosed(f"stream {self.stream_id}: {error}") from error

    # ----------------------------------------------------------------- called by the connection

    def deliver(self, data: bytes) -> bool:
        """Payload received for this stream; False if its scope refused to hold it."""
        scope = self.scope
        if scope is not None:
            try:
                scope.reserve_memory(len(data))
            except ResourceLimitExceeded as exc:
                log.debug("stream %d: %s; resetting it", self.stream_id, exc)
                return False
        chunks = self._chunks
        chunks.append(data)
        if len(chunks) == 1:
            self._readable.set()
        return True

    def wake(self) -> None:
        """The core's state changed (FIN, RST, window, connection gone): re-check it."""
        if self.record.is_reset:
            if self.scope is not None:
                self.scope.release_memory(sum(map(len, self._chunks)))
            self._chunks.clear()
            self._pending = b""
            self._pending_pos = 0
        self._readable.set()
        self._writable.set()

    # ----------------------------------------------------------------- reading

    async def _read_chunk(self) -> bytes:
        chunks = self._chunks
        record = self.record
        while True:
            if record.is_reset:
                raise StreamReset(f"stream {self.stream_id} was reset")
            if chunks:
                chunk = chunks.popleft()
                if self.scope is not None:
                    self.scope.release_memory(len(chunk))
                self.connection.consumed(self.stream_id, len(chunk))
                return chunk
            if record.remote_closed:
                return b""
            self._raise_if_dead()
            self._readable.clear()
            await self._readable.wait()

    # ----------------------------------------------------------------- writing

    async def write(self, data: Bytes) -> None:
        """Send ``data``; the core splits it by send window and frame size."""
        if self.record.local_closed and not self.record.is_reset:
            raise StreamClosed(f"stream {self.stream_id} was closed for writing")
        self._raise_if_dead()
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)  # the core keeps views of it until the writer sent them
        conn = self.connection
        session = conn.session
        sid = self.stream_id
        total = len(data)
        view = memoryview(data)
        async with self._write_lock:
            pos = 0
            while pos < total:
                self._raise_if_dead()
                if self.record.local_closed:
                    raise StreamClosed(f"stream {sid} was closed for writing")
                sent = session.write(sid, data if pos == 0 else view[pos:])
                if sent:
                    conn.flush()
                    pos += sent
                elif session.outbound_size >= session.config.write_high_water:
                    await conn.wait_room()
                else:
                    self._writable.clear()
                    await self._writable.wait()

    async def drain(self) -> None:
        """Wait until the connection's outbound queue is below its high-water mark."""
        self._raise_if_dead()
        await self.connection.wait_room()

    # ----------------------------------------------------------------- closing

    async def close(self) -> None:
        """Half-close: send FIN. Reading still works until the remote's FIN. Idempotent."""
        self.connection.close_stream(self)

    async def reset(self) -> None:
        """Abort both directions: RST to the remote, pending readers/writers get StreamReset."""
        self.connection.reset_stream(self)

    async def __aenter__(self) -> YamuxStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.reset()

    @property
    def conn(self) -> ConnectionInfo:
        """The connection this stream runs on (set by whoever created the muxer)."""
        info = self.connection.info
        if info is None:
            raise RuntimeError("this yamux connection was created without a ConnectionInfo")
        return info

    def __repr__(self) -> str:
        return (
            f"<YamuxStream {self.stream_id} {self.record.state.value} protocol={self.protocol!r}>"
        )


class YamuxConnection:
    """Streams multiplexed over one (secure) connection.

    ``initiator`` is True on the dialing side (odd stream ids). Call :meth:`start` once, then
    open streams with :meth:`open_stream` and take inbound ones with :meth:`accept_stream` or the
    ``on_stream`` callback. :meth:`close` sends a go-away, fails every stream with
    :class:`ConnectionClosed`, closes ``conn`` and awaits every task.
    """

    def __init__(
        self,
        conn: ReadWriter,
        *,
        initiator: bool,
        config: YamuxConfig | None = None,
        on_stream: StreamCallback | None = None,
        info: ConnectionInfo | None = None,
        clock: Clock = SYSTEM_CLOCK,
        scope: ConnectionScope | None = None,
    ) -> None:
        self.conn = conn
        #: The connection's resource scope: its streams and their buffers count against it.
        self.scope = scope
        #: What the streams report as their ``conn`` (the host's Connection).
        self.info = info
        self.initiator = initiator
        self.config = config or YamuxConfig()
        self.session = YamuxSession(initiator=initiator, config=self.config)
        self._now = clock.monotonic
        self._on_stream = on_stream
        self._streams: dict[int, YamuxStream] = {}
        self._accept_queue: deque[YamuxStream] = deque()
        self._accept_event = asyncio.Event()
        self._out_ready = asyncio.Event()
        self._room = asyncio.Event()
        self._writer_idle = asyncio.Event()
        self._open_room = asyncio.Event()
        self._pong_waiters: dict[int, asyncio.Future[float]] = {}
        self._reader_task: asyncio.Task[None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closing = False
        self._error: P2PError | None = None
        #: Set once the connection is fully closed (tasks stopped, ``conn`` closed).
        self.closed = asyncio.Event()
        #: Bytes of yamux frames read from and written to ``conn`` (for metrics).
        self.bytes_received = 0
        self.bytes_sent = 0

    # ----------------------------------------------------------------- properties

    @property
    def is_closed(self) -> bool:
        return self._closing

    @property
    def rtt(self) -> float | None:
        """Last measured round-trip time in seconds."""
        return self.session.rtt

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    @property
    def streams(self) -> list[YamuxStream]:
        return list(self._streams.values())

    @property
    def error(self) -> P2PError | None:
        """Why the connection closed (None while open)."""
        return self._error

    async def wait_closed(self) -> None:
        await self.closed.wait()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the reader, the writer and the timer; the core queues a first ping."""
        if self._started:
            return
        if self._closing:
            raise ConnectionClosed("yamux connection is closed")
        self._started = True
        loop = asyncio.get_running_loop()
        side = "client" if self.initiator else "server"
        self._writer_task = loop.create_task(self._writer_loop(), name=f"yamux-{side}-writer")
        self._reader_task = loop.create_task(self._reader_loop(), name=f"yamux-{side}-reader")
        self.session.start(self._now())
        if self.session.get_timer() is not None:
            self._timer_task = loop.create_task(self._timer_loop(), name=f"yamux-{side}-timer")
        self.flush()

    async def close(self, code: int = GO_AWAY_NORMAL) -> None:
        """Go away with ``code``, fail every stream, close ``conn`` and await all tasks."""
        await self._shutdown(ConnectionClosed("yamux connection closed locally"), code)

    async def __aenter__(self) -> YamuxConnection:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ----------------------------------------------------------------- streams

    def _check_open(self) -> None:
        if self._closing:
            raise ConnectionClosed(f"yamux connection is closed: {self._error}")
        if not self._started:
            raise RuntimeError("YamuxConnection.start() was not called")

    def _new_stream(self, record: StreamRecord, scope: StreamScope | None = None) -> YamuxStream:
        stream = YamuxStream(self, record, scope)
        if self.session.has_stream(record.stream_id):
            self._streams[record.stream_id] = stream
        elif scope is not None:
            scope.done()
        return stream

    def _forget(self, stream: YamuxStream) -> None:
        """The core forgot the stream: drop it, and give back its scope unless a handler runs."""
        self._streams.pop(stream.stream_id, None)
        if stream.scope is not None and not stream.handler_running:
            stream.scope.done()

    async def open_stream(self) -> YamuxStream:
        """Open an outbound stream (its SYN is sent right away; data may follow before the ACK).

        Waits up to ``open_timeout`` while ``max_ack_backlog`` streams are unacknowledged, then
        raises :class:`StreamLimitExceeded`; also raised beyond ``max_streams`` open streams.
        """
        self._check_open()
        session = self.session
        if not session.can_open_stream():
            try:
                async with asyncio.timeout(self.config.open_timeout):
                    while not session.can_open_stream():
                        self._check_open()
                        self._open_room.clear()
                        await self._open_room.wait()
            except TimeoutError:
                raise StreamLimitExceeded(
                    f"{session.ack_backlog} streams wait for an ACK from the remote"
                ) from None
        self._check_open()
        scope = None
        if self.scope is not None:
            scope = self.scope.open_stream(Direction.OUTBOUND, self._now())
        try:
            record = session.stream(session.open_stream(self._now()))
        except BaseException:
            if scope is not None:
                scope.done()
            raise
        assert record is not None  # just opened
        stream = self._new_stream(record, scope)
        self.flush()
        return stream

    async def accept_stream(self) -> YamuxStream:
        """Wait for the next inbound stream (only without an ``on_stream`` callback)."""
        if self._on_stream is not None:
            raise RuntimeError("inbound streams go to the on_stream callback")
        while True:
            while self._accept_queue:
                stream = self._accept_queue.popleft()
                if stream.record.is_reset:
                    continue
                self.session.accept_stream(stream.stream_id)
                self.flush()
                return stream
            self._check_open()
            self._accept_event.clear()
            await self._accept_event.wait()

    async def ping(self) -> float:
        """Round-trip time in seconds of one session ping; TimeoutError after ``ping_timeout``."""
        self._check_open()
        opaque = self.session.ping(self._now())
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pong_waiters[opaque] = fut
        self.flush()
        try:
            async with asyncio.timeout(self.config.ping_timeout):
                return await fut
        finally:
            self._pong_waiters.pop(opaque, None)
            self.session.forget_ping(opaque)

    # ----------------------------------------------------------------- called by streams

    def flush(self) -> None:
        """Wake the writer: the session has frames queued."""
        self._out_ready.set()

    async def wait_room(self) -> None:
        """Wait until the outbound queue is below ``write_high_water``."""
        session = self.session
        high_water = self.config.write_high_water
        while session.outbound_size >= high_water:
            self._check_open()
            self._room.clear()
            await self._room.wait()

    def consumed(self, sid: int, n: int) -> None:
        """The application read ``n`` bytes of stream ``sid`` (window updates may follow)."""
        session = self.session
        session.consume(sid, n, self._now())
        if session.outbound_size:
            self._out_ready.set()

    def close_stream(self, stream: YamuxStream) -> None:
        self.session.close_stream(stream.stream_id)
        self._settle(stream)

    def reset_stream(self, stream: YamuxStream) -> None:
        self.session.reset_stream(stream.stream_id)
        self._settle(stream)
        self._open_room.set()

    def _settle(self, stream: YamuxStream) -> None:
        """After a local state change: wake the stream, forget it once the core did."""
        stream.wake()
        if not self.session.has_stream(stream.stream_id):
            self._forget(stream)
        if self.session.outbound_size:
            self.flush()

    # ----------------------------------------------------------------- tasks

    async def _writer_loop(self) -> None:
        session = self.session
        write = self.conn.write
        # a connection that takes a list of buffers (e.g. TCP) spares us joining them
        writelines: Callable[[list[Bytes]], Awaitable[None]] | None = getattr(
            self.conn, "writelines", None
        )
        try:
            while True:
                if not session.outbound_size:
                    self._writer_idle.set()
                    self._out_ready.clear()
                    await self._out_ready.wait()
                    continue
                self.bytes_sent += session.outbound_size
                frames: list[Bytes] = list(session.take_outbound())
                self._room.set()
                if len(frames) == 1:
                    await write(frames[0])
                elif writelines is not None:
                    await writelines(frames)
                else:
                    await write(b"".join(frames))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._writer_idle.set()  # nothing more will be flushed
            if not self._closing:
                log.debug("yamux write failed: %r", exc)
                await self._shutdown(ConnectionClosed(f"write failed: {exc!r}"), None)

    async def _reader_loop(self) -> None:
        session = self.session
        conn = self.conn
        streams = self._streams
        now = self._now
        try:
            while True:
                data = await conn.read(-1)
                if not data:
                    await self._shutdown(ConnectionClosed("connection closed by the remote"), None)
                    return
                if type(data) is not bytes:
                    data = bytes(data)
                self.bytes_received += len(data)
                for ev in session.receive_data(data, now()):
                    if type(ev) is DataReceived:
                        stream = streams.get(ev.stream_id)
                        if stream is not None:
                            if not stream.deliver(ev.data):
                                self.reset_stream(stream)
                        else:  # pragma: no cover - the core only reports live streams
                            session.consume(ev.stream_id, len(ev.data), now())
                    else:
                        error = self._dispatch(ev)
                        if error is not None:
                            await self._shutdown(error, None)
                            return
                if session.outbound_size:
                    self._out_ready.set()
        except asyncio.CancelledError:
            raise
        except ProtocolError as exc:
            await self._shutdown(ConnectionClosed(f"protocol error: {exc}"), GO_AWAY_PROTOCOL_ERROR)
        except Exception as exc:
            if not self._closing:
                log.debug("yamux read failed: %r", exc)
                await self._shutdown(
                    ConnectionClosed(f"read failed: {exc!r}"), GO_AWAY_INTERNAL_ERROR
                )

    def _dispatch(self, ev: object) -> ConnectionClosed | None:
        """Handle one non-data event; returns an error when the connection must end."""
        streams = self._streams
        if isinstance(ev, SendWindowUpdated):
            stream = streams.get(ev.stream_id)
            if stream is not None:
                stream.wake()
        elif isinstance(ev, StreamOpened):
            assert ev.record is not None  # the core always attaches it
            return self._new_inbound(ev.record)
        elif isinstance(ev, (StreamEnded, StreamResetByRemote)):
            stream = streams.get(ev.stream_id)
            if stream is not None:
                stream.wake()
                if not self.session.has_stream(ev.stream_id):
                    self._forget(stream)
            if isinstance(ev, StreamResetByRemote):
                self._open_room.set()
        elif isinstance(ev, StreamAcked):
            self._open_room.set()
        elif isinstance(ev, PongReceived):
            fut = self._pong_waiters.pop(ev.opaque, None)
            if fut is not None and not fut.done():
                fut.set_result(ev.rtt)
        elif isinstance(ev, GoAwayReceived):
            self._open_room.set()
            if ev.code != GO_AWAY_NORMAL:
                log.info("remote went away with error code %d", ev.code)
                return ConnectionClosed(f"remote went away (code {ev.code})")
            log.debug("remote went away: no new streams")
        return None

    def _new_inbound(self, record: StreamRecord) -> ConnectionClosed | None:
        sid = record.stream_id
        scope = None
        if self.scope is not None:
            try:
                scope = self.scope.open_stream(Direction.INBOUND, self._now())
            except ResourceLimitExceeded as exc:
                # Refused before any task or buffer exists for it: an RST is all it costs us.
                log.debug("refusing inbound stream %d: %s", sid, exc)
                self.session.reset_stream(sid)
                if self.scope.flooding:
                    log.debug("remote keeps opening refused streams: closing the connection")
                    return ConnectionClosed("inbound stream flood")
                return None
        stream = self._new_stream(record, scope)
        if self._on_stream is None:
            self._accept_queue.append(stream)
            self._accept_event.set()
            return None
        self.session.accept_stream(sid)
        stream.handler_running = True
        task = asyncio.get_running_loop().create_task(
            self._run_handler(self._on_stream, stream), name=f"yamux-stream-{sid}"
        )
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)
        return None

    async def _run_handler(self, handler: StreamCallback, stream: YamuxStream) -> None:
        try:
            await handler(stream)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._closing and isinstance(exc, ConnectionClosed):
                log.debug("stream handler for stream %d: %s", stream.stream_id, exc)
                return
            log.exception("stream handler for stream %d failed; resetting it", stream.stream_id)
            await stream.reset()
        finally:
            stream.handler_running = False
            if stream.scope is not None and (
                self._closing or not self.session.has_stream(stream.stream_id)
            ):
                stream.scope.done()

    async def _timer_loop(self) -> None:
        session = self.session
        while (deadline := session.get_timer()) is not None:
            delay = deadline - self._now()
            if delay > 0:
                await asyncio.sleep(delay)
            for ev in session.handle_timer(self._now()):
                if isinstance(ev, KeepaliveTimedOut):
                    # the core queued the go-away and terminated itself
                    await self._shutdown(ConnectionClosed("keepalive timeout"), None)
                    return
            if session.outbound_size:
                self.flush()

    # ----------------------------------------------------------------- shutdown

    async def _shutdown(self, error: P2PError, code: int | None) -> None:
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        self._error = error
        session = self.session
        current = asyncio.current_task()
        try:
            # wake everyone: streams, accepters, openers, pingers, waiting writers
            for stream in self._streams.values():
                stream.wake()
                if stream.scope is not None and not stream.handler_running:
                    stream.scope.done()
            for stream in self._accept_queue:
                stream.wake()
                if stream.scope is not None:
                    stream.scope.done()
            self._streams.clear()
            self._accept_queue.clear()
            self._accept_event.set()
            self._open_room.set()
            self._room.set()
            for fut in self._pong_waiters.values():
                if not fut.done():
                    fut.set_exception(ConnectionClosed(str(error)))
            self._pong_waiters.clear()
            # go-away (or the one the core already queued) and flush
            if code is not None and not session.terminated:
                session.go_away(code)
            session.terminate()
            writer = self._writer_task
            if writer is not None and writer is not current and not writer.done():
                self._writer_idle.clear()
                self.flush()
                try:
                    async with asyncio.timeout(self.config.close_timeout):
                        await self._writer_idle.wait()
                except TimeoutError:
                    log.debug("yamux close: flush timed out")
        finally:
            tasks: list[asyncio.Task[Any]] = [
                t for t in (self._reader_task, self._writer_task, self._timer_task) if t is not None
            ]
            tasks.extend(self._handler_tasks)
            tasks = [t for t in tasks if t is not current and not t.done()]
            for t in tasks:
                t.cancel()
            try:
                if tasks:
                    _, pending = await asyncio.wait(tasks, timeout=self.config.close_timeout)
                    for t in pending:
                        log.error("yamux: task %s did not stop", t.get_name())
                try:
                    async with asyncio.timeout(self.config.close_timeout):
                        await self.conn.close()
                except Exception as exc:
                    log.debug("yamux: closing the connection below failed: %r", exc)
            finally:
                self.closed.set()


class YamuxMuxer:
    """The :class:`~p2pnet.stream.StreamMuxer` for ``/yamux/1.0.0``."""

    protocol_id = PROTOCOL_ID

    def __init__(self, config: YamuxConfig | None = None) -> None:
        self.config = config or YamuxConfig()

    def create(
        self,
        secure: ReadWriter,
        *,
        initiator: bool,
        info: ConnectionInfo,
        on_stream: StreamCallback | None,
        clock: Clock,
        scope: ConnectionScope | None = None,
    ) -> YamuxConnection:
        return YamuxConnection(
            secure,
            initiator=initiator,
            config=self.config,
            on_stream=on_stream,
            info=info,
            clock=clock,
            scope=scope,
        )
