"""The asyncio adapter around the yamux core: :class:`YamuxConnection` and :class:`YamuxStream`.

Three tasks per connection, all owned and awaited by :meth:`YamuxConnection.close`:

* the *reader* reads chunks from the connection below, feeds them to the sans-IO
  :class:`~p2pnet.mux.yamux.YamuxSession` and dispatches its events (payload chunks are appended to
  the stream's deque; its event is set only when the deque goes from empty to non-empty);
* the *writer* is the only code that writes to the connection: it joins every queued frame into
  one ``write`` (so frames never interleave and small frames are batched). The reader never waits
  for the writer, so two peers that both write a lot cannot deadlock;
* the *keepalive* pings every ``keepalive_interval`` and closes the connection when a pong does
  not come back within ``ping_timeout``.

Inbound streams go to the ``on_stream`` callback (each in a task owned by the connection; an
exception is logged and resets the stream) or, without a callback, to :meth:`accept_stream`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from p2pnet.errors import (
    ConnectionClosed,
    P2PError,
    ProtocolError,
    StreamClosed,
    StreamLimitExceeded,
    StreamReset,
)
from p2pnet.io import Bytes, ChunkReader, ReadWriter
from p2pnet.mux.yamux import (
    GO_AWAY_INTERNAL_ERROR,
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    DataReceived,
    GoAwayReceived,
    PongReceived,
    SendWindowUpdated,
    StreamAcked,
    StreamEnded,
    StreamOpened,
    StreamResetByRemote,
    YamuxConfig,
    YamuxSession,
)

log = logging.getLogger("p2pnet.yamux")

StreamCallback = Callable[["YamuxStream"], Awaitable[None]]

_clock = time.monotonic


class YamuxStream(ChunkReader):
    """One yamux stream; a :class:`~p2pnet.io.ReadWriter`.

    ``read`` returns ``b""`` after the remote's FIN; ``write`` waits for send window and raises
    :class:`StreamClosed` after :meth:`close`, :class:`StreamReset` after a reset (either side) and
    :class:`ConnectionClosed` once the connection is gone.
    """

    def __init__(self, connection: YamuxConnection, stream_id: int) -> None:
        super().__init__()
        self.connection = connection
        self.stream_id = stream_id
        #: The application protocol, set by the host after multistream negotiation.
        self.protocol: str | None = None
        self._chunks: deque[bytes] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._remote_eof = False
        self._local_closed = False
        self._reset = False
        self._error: P2PError | None = None

    # ----------------------------------------------------------------- state

    @property
    def local_closed(self) -> bool:
        """We sent FIN (or the stream is dead)."""
        return self._local_closed or self._reset or self._error is not None

    @property
    def remote_closed(self) -> bool:
        """The remote sent FIN (or the stream is dead)."""
        return self._remote_eof or self._reset or self._error is not None

    @property
    def is_reset(self) -> bool:
        return self._reset

    def _mark_reset(self) -> None:
        self._reset = True
        self._chunks.clear()
        self._pending = b""
        self._pending_pos = 0
        self._readable.set()
        self._writable.set()

    def _mark_failed(self, error: P2PError) -> None:
        if self._error is None:
            self._error = error
        self._readable.set()
        self._writable.set()

    def _raise_if_dead(self) -> None:
        if self._reset:
            raise StreamReset(f"stream {self.stream_id} was reset")
        if self._error is not None:
            raise ConnectionClosed(f"stream {self.stream_id}: {self._error}") from self._error

    # ----------------------------------------------------------------- reading

    async def _read_chunk(self) -> bytes:
        chunks = self._chunks
        while True:
            if self._reset:
                raise StreamReset(f"stream {self.stream_id} was reset")
            if chunks:
                chunk = chunks.popleft()
                self.connection._consumed(self.stream_id, len(chunk))
                return chunk
            if self._remote_eof:
                return b""
            if self._error is not None:
                raise ConnectionClosed(f"stream {self.stream_id}: {self._error}") from self._error
            self._readable.clear()
            await self._readable.wait()

    # ----------------------------------------------------------------- writing

    async def write(self, data: Bytes) -> None:
        """Send ``data``, split by the send window and ``max_frame_payload``."""
        if self._local_closed:
            raise StreamClosed(f"stream {self.stream_id} was closed for writing")
        self._raise_if_dead()
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)  # we keep views of it until the writer sent them
        conn = self.connection
        session = conn._session
        sid = self.stream_id
        total = len(data)
        view = memoryview(data)
        async with self._write_lock:
            pos = 0
            while pos < total:
                if self._local_closed:
                    raise StreamClosed(f"stream {sid} was closed for writing")
                self._raise_if_dead()
                if session.outbound_size >= conn._high_water:
                    await conn._wait_room()
                    continue
                room = session.max_send(sid)
                if room <= 0:
                    self._writable.clear()
                    await self._writable.wait()
                    continue
                take = total - pos
                if take > room:
                    take = room
                session.send_data(sid, data if take == total else view[pos : pos + take])
                conn._kick()
                pos += take

    async def drain(self) -> None:
        """Wait until the connection's outbound queue is below its high-water mark."""
        self._raise_if_dead()
        await self.connection._wait_room()

    # ----------------------------------------------------------------- closing

    async def close(self) -> None:
        """Half-close: send FIN. Reading still works until the remote's FIN. Idempotent."""
        if self._local_closed or self._reset:
            return
        self._local_closed = True
        self._writable.set()
        self.connection._close_stream(self.stream_id)

    async def reset(self) -> None:
        """Abort both directions: RST to the remote, pending readers/writers get StreamReset."""
        if self._reset:
            return
        self._mark_reset()
        self.connection._reset_stream(self.stream_id)

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

    def __repr__(self) -> str:
        return f"<YamuxStream {self.stream_id} protocol={self.protocol!r}>"


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
    ) -> None:
        self.conn = conn
        self.initiator = initiator
        self.config = config or YamuxConfig()
        self._session = YamuxSession(initiator=initiator, config=self.config)
        self._on_stream = on_stream
        self._high_water = self.config.write_high_water
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
        self._keepalive_task: asyncio.Task[None] | None = None
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
        return self._session.rtt

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
        """Start the reader, the writer and the keepalive; measure the RTT with a first ping."""
        if self._started:
            return
        if self._closing:
            raise ConnectionClosed("yamux connection is closed")
        self._started = True
        loop = asyncio.get_running_loop()
        side = "client" if self.initiator else "server"
        self._writer_task = loop.create_task(self._writer_loop(), name=f"yamux-{side}-writer")
        self._reader_task = loop.create_task(self._reader_loop(), name=f"yamux-{side}-reader")
        if self.config.keepalive_interval is not None:
            self._keepalive_task = loop.create_task(
                self._keepalive_loop(self.config.keepalive_interval),
                name=f"yamux-{side}-keepalive",
            )
        # the pong sets session.rtt, which receive-window auto-tuning needs
        self._session.ping(_clock())
        self._kick()

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

    async def open_stream(self) -> YamuxStream:
        """Open an outbound stream (its SYN is sent right away; data may follow before the ACK).

        Waits up to ``open_timeout`` while ``max_ack_backlog`` streams are unacknowledged, then
        raises :class:`StreamLimitExceeded`; also raised beyond ``max_streams`` open streams.
        """
        self._check_open()
        session = self._session
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
        sid = session.open_stream(_clock())
        stream = YamuxStream(self, sid)
        self._streams[sid] = stream
        self._kick()
        return stream

    async def accept_stream(self) -> YamuxStream:
        """Wait for the next inbound stream (only without an ``on_stream`` callback)."""
        if self._on_stream is not None:
            raise RuntimeError("inbound streams go to the on_stream callback")
        while True:
            while self._accept_queue:
                stream = self._accept_queue.popleft()
                if stream._reset or stream._error is not None:
                    continue
                self._session.accept_stream(stream.stream_id)
                self._kick()
                return stream
            self._check_open()
            self._accept_event.clear()
            await self._accept_event.wait()

    async def ping(self) -> float:
        """Round-trip time in seconds of one session ping; TimeoutError after ``ping_timeout``."""
        self._check_open()
        opaque = self._session.ping(_clock())
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pong_waiters[opaque] = fut
        self._kick()
        try:
            async with asyncio.timeout(self.config.ping_timeout):
                return await fut
        finally:
            self._pong_waiters.pop(opaque, None)
            self._session.forget_ping(opaque)

    # ----------------------------------------------------------------- called by streams

    def _kick(self) -> None:
        self._out_ready.set()

    async def _wait_room(self) -> None:
        session = self._session
        while session.outbound_size >= self._high_water:
            self._check_open()
            self._room.clear()
            await self._room.wait()

    def _consumed(self, sid: int, n: int) -> None:
        session = self._session
        session.consume(sid, n, _clock())
        if session.outbound_size:
            self._out_ready.set()

    def _close_stream(self, sid: int) -> None:
        if self._closing:
            return
        session = self._session
        session.close_stream(sid)
        self._kick()
        if not session.has_stream(sid):
            self._streams.pop(sid, None)

    def _reset_stream(self, sid: int) -> None:
        self._streams.pop(sid, None)
        if self._closing:
            return
        self._session.reset_stream(sid)
        self._kick()
        self._open_room.set()

    # ----------------------------------------------------------------- tasks

    async def _writer_loop(self) -> None:
        session = self._session
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
                frames: list[Bytes] = list(session.take_outbound())
                self.bytes_sent += sum(map(len, frames))
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
        session = self._session
        conn = self.conn
        streams = self._streams
        try:
            while True:
                data = await conn.read(-1)
                if not data:
                    await self._shutdown(ConnectionClosed("connection closed by the remote"), None)
                    return
                if type(data) is not bytes:
                    data = bytes(data)
                self.bytes_received += len(data)
                events = session.receive_data(data, _clock())
                for ev in events:
                    if type(ev) is DataReceived:
                        stream = streams.get(ev.stream_id)
                        if stream is not None:
                            chunks = stream._chunks
                            chunks.append(ev.data)
                            if len(chunks) == 1:
                                stream._readable.set()
                        else:  # pragma: no cover - the core only reports live streams
                            session.consume(ev.stream_id, len(ev.data), _clock())
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
                stream._writable.set()
        elif isinstance(ev, StreamOpened):
            self._new_inbound(ev.stream_id)
        elif isinstance(ev, StreamEnded):
            stream = streams.get(ev.stream_id)
            if stream is not None:
                stream._remote_eof = True
                stream._readable.set()
                if not self._session.has_stream(ev.stream_id):
                    del streams[ev.stream_id]
        elif isinstance(ev, StreamResetByRemote):
            stream = streams.pop(ev.stream_id, None)
            if stream is not None:
                stream._mark_reset()
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

    def _new_inbound(self, sid: int) -> None:
        stream = YamuxStream(self, sid)
        self._streams[sid] = stream
        if self._on_stream is None:
            self._accept_queue.append(stream)
            self._accept_event.set()
            return
        self._session.accept_stream(sid)
        task = asyncio.get_running_loop().create_task(
            self._run_handler(self._on_stream, stream), name=f"yamux-stream-{sid}"
        )
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

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

    async def _keepalive_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.ping()
            except TimeoutError:
                log.info("yamux keepalive: no pong within %.1fs, closing", self.config.ping_timeout)
                await self._shutdown(ConnectionClosed("keepalive timeout"), GO_AWAY_INTERNAL_ERROR)
                return
            except ConnectionClosed:
                return

    # ----------------------------------------------------------------- shutdown

    async def _shutdown(self, error: P2PError, code: int | None) -> None:
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        self._error = error
        session = self._session
        current = asyncio.current_task()
        try:
            # wake everyone: streams, accepters, openers, pingers, waiting writers
            for stream in self._streams.values():
                stream._mark_failed(error)
            for stream in self._accept_queue:
                stream._mark_failed(error)
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
                self._kick()
                try:
                    async with asyncio.timeout(self.config.close_timeout):
                        await self._writer_idle.wait()
                except TimeoutError:
                    log.debug("yamux close: flush timed out")
        finally:
            tasks: list[asyncio.Task[Any]] = [
                t
                for t in (self._reader_task, self._writer_task, self._keepalive_task)
                if t is not None
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
