"""The asyncio adapter around the yamux core: :class:`YamuxConnection` and :class:`YamuxStream`.

Every protocol decision (stream states, flow control, how a write is split into frames, keepalive,
limits) is made by the sans-IO :class:`~p2pnet.mux.yamux.YamuxSession`; this module only moves
bytes, timers and events, and it runs no task of its own (only stream handlers run in tasks):

* *reading* is pushed: the connection is the :class:`~p2pnet.channel.ChannelReceiver` of the
  channel below, whose ``data_received`` (the transport's, through Noise) runs the session and
  dispatches its events synchronously; payload chunks go to the stream's buffer, and its reader is
  woken only when the buffer goes from empty to non-empty. While the streams hold more than
  ``read_high_water`` unread bytes, reading from the channel is paused;
* *writing* is gathered: whatever queues frames in the session (stream writes, window updates,
  replies provoked by the remote) schedules one ``call_soon`` flush, which hands every queued
  frame to the channel in one ``writelines`` (one encryption pass, one socket write). While the
  channel says ``pause_writing`` nothing is flushed: stream writers wait at ``write_high_water``,
  and what the remote provokes meanwhile counts against the connection's memory scope; over it
  the connection is closed (a remote that pings but never reads cannot grow our memory);
* the *keepalive* is one timer at :meth:`~p2pnet.mux.yamux.YamuxSession.get_timer` running
  :meth:`~p2pnet.mux.yamux.YamuxSession.handle_timer`, in the loop's shared buckets
  (:class:`_CoarseTimers`: up to 1/32 s late, one loop timer per bucket).

Time is read only through the injected :class:`~p2pnet.clock.Clock`.

Inbound streams go to the ``on_stream`` callback (each in a task owned by the connection; an
exception is logged and resets the stream) or, without a callback, to :meth:`accept_stream`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections import deque
from collections.abc import Callable
from types import TracebackType

from p2pnet.channel import Channel, attach
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
from p2pnet.stream import (
    ConnectionInfo,
    Direction,
    Stream,
    StreamAcceptor,
    StreamCallback,
    StreamConsumer,
)
from p2pnet.waiters import Flag, Waiters

log = logging.getLogger("p2pnet.yamux")


class YamuxStream(ChunkReader):
    """One yamux stream; a :class:`~p2pnet.stream.Stream`.

    ``read`` returns ``b""`` after the remote's FIN; ``write`` waits for send window and raises
    :class:`StreamClosed` after :meth:`close`, :class:`StreamReset` after a reset (either side) and
    :class:`ConnectionClosed` once the connection is gone. Its state is the core's
    :class:`~p2pnet.mux.yamux.StreamRecord`.
    """

    __slots__ = (
        "__weakref__",
        "_chunks",
        "_consumer",
        "_eof_scheduled",
        "_push_paused",
        "_pushing",
        "_readable",
        "_writable",
        "_write_lock",
        "connection",
        "counted",
        "handler_running",
        "protocol",
        "record",
        "scope",
        "stream_id",
    )

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
        #: Bytes of ``_chunks`` counted in the connection's ``unread`` (0 once it forgot us).
        self.counted = 0
        # futures only while someone waits (an asyncio.Event each cost ~800 bytes per stream)
        self._readable = Waiters()
        self._writable = Waiters()
        self._write_lock: asyncio.Lock | None = None  # made by the first write that waits
        #: push mode (set_consumer): who takes the bytes as they arrive
        self._consumer: StreamConsumer | None = None
        #: the consumer asked to pause (bytes wait in _chunks)
        self._push_paused = False
        #: a consumer call is running (bytes that arrive meanwhile wait in _chunks)
        self._pushing = False
        self._eof_scheduled = False

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
        consumer = self._consumer
        if (
            consumer is not None
            and not self._push_paused
            and not self._pushing
            and not self._chunks
            and not self.record.is_reset
        ):
            # push mode, nothing waiting: the consumer takes it now (never buffered here)
            self.connection.consumed(self, len(data))
            self._push(consumer, data)
            if self._chunks or self.record.is_reset or self.connection.error is not None:
                self._drain_to_consumer()  # what arrived or changed meanwhile
            return True
        scope = self.scope
        if scope is not None:
            try:
                scope.reserve_memory(len(data))
            except ResourceLimitExceeded as exc:
                log.debug("stream %d: %s; resetting it", self.stream_id, exc)
                return False
        chunks = self._chunks
        chunks.append(data)
        self.counted += len(data)
        self.connection.unread += len(data)
        if len(chunks) == 1:
            self._readable.wake()
        if consumer is not None and not self._push_paused and not self._pushing:
            self._drain_to_consumer()
        return True

    def wake(self) -> None:
        """The core's state changed (FIN, RST, window, connection gone): re-check it."""
        if self.record.is_reset:
            dropped = sum(map(len, self._chunks))
            self.connection.uncount(self)
            if self.scope is not None:
                self.scope.release_memory(dropped)
            self._chunks.clear()
            self._pending = b""
            self._pending_pos = 0
        self._readable.wake()
        self._writable.wake()
        if self._consumer is not None and not self._pushing:
            self._check_push_end()

    # ----------------------------------------------------------------- push mode

    def set_consumer(self, consumer: StreamConsumer | None) -> None:
        """Push mode (see :meth:`p2pnet.stream.Stream.set_consumer`); ``None``: pull mode."""
        if consumer is None:
            self._consumer = None
            if self._chunks:
                self._readable.wake()
            return
        if self._consumer is not None:
            raise RuntimeError(f"stream {self.stream_id} has a consumer already")
        self._raise_if_dead()
        self._consumer = consumer
        # bytes a reader left over (read ahead during negotiation) were consumed already
        if self._pending_pos < len(self._pending):
            leftover = self._take_pending(-1)
            self._push(consumer, leftover)
        if self._consumer is consumer:
            self._drain_to_consumer()  # (also tells a consumer that reset its stream meanwhile)

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of what the stream delivers next (``read`` or a
        consumer): bytes a push consumer took and did not use, as what followed a protocol
        negotiation. They were consumed already (flow control counted them once)."""
        if self._consumer is not None:
            raise RuntimeError(f"stream {self.stream_id} delivers to a consumer: no unread()")
        if not data:
            return
        if self._pending_pos < len(self._pending):
            data = data + self._take_pending(-1)
        self._pending = data
        self._pending_pos = 0

    def pause_reading(self) -> None:
        self._push_paused = True

    def resume_reading(self) -> None:
        if not self._push_paused:
            return
        self._push_paused = False
        if self._consumer is not None and not self._pushing:
            self._drain_to_consumer()

    def _push(self, consumer: StreamConsumer, data: bytes) -> None:
        """One consumer call; an exception resets the stream."""
        self._pushing = True
        try:
            consumer.data_received(data)
        except Exception:
            log.exception("stream %d: its consumer failed; resetting it", self.stream_id)
            self._pushing = False
            self.connection.reset_stream(self)  # wakes us: stream_lost
            return
        self._pushing = False

    def _drain_to_consumer(self) -> None:
        """Hand the buffered chunks to the consumer while it takes them, then check the end."""
        chunks = self._chunks
        while chunks and not self._push_paused and not self.record.is_reset:
            consumer = self._consumer
            if consumer is None:
                return
            chunk = chunks.popleft()
            n = len(chunk)
            if self.scope is not None:
                self.scope.release_memory(n)
            self.connection.consumed(self, n)
            self._push(consumer, chunk)
        self._check_push_end()

    def _check_push_end(self) -> None:
        """Tell the consumer that the stream ended, once: lost at once; a FIN once every byte
        is delivered, from a fresh callback (the frames of the data being dispatched may still
        be on their way to :meth:`deliver`)."""
        consumer = self._consumer
        if consumer is None:
            return
        error: P2PError | None = None
        if self.record.is_reset:
            error = StreamReset(f"stream {self.stream_id} was reset")
        elif self.connection.error is not None:
            error = ConnectionClosed(f"stream {self.stream_id}: {self.connection.error}")
        if error is not None:
            self._consumer = None
            try:
                consumer.stream_lost(error)
            except Exception:
                log.exception("stream %d: its consumer failed on stream_lost", self.stream_id)
            return
        if (
            self.record.remote_closed
            and not self._chunks
            and not self._push_paused
            and not self._eof_scheduled
        ):
            self._eof_scheduled = True
            asyncio.get_running_loop().call_soon(self._push_eof)

    def _push_eof(self) -> None:
        self._eof_scheduled = False
        consumer = self._consumer
        if consumer is None or self._pushing:
            return
        if self.record.is_reset or self.connection.error is not None:
            self._check_push_end()
            return
        if self._chunks or self._push_paused:
            return  # delivered (and the end re-checked) when the consumer resumes
        self._consumer = None
        try:
            consumer.eof_received()
        except Exception:
            log.exception("stream %d: its consumer failed on eof_received", self.stream_id)
            self.connection.reset_stream(self)

    # ----------------------------------------------------------------- reading

    async def _read_chunk(self) -> bytes:
        if self._consumer is not None:
            raise RuntimeError(f"stream {self.stream_id} delivers to a consumer: no read()")
        chunks = self._chunks
        record = self.record
        while True:
            if record.is_reset:
                raise StreamReset(f"stream {self.stream_id} was reset")
            if chunks:
                chunk = chunks.popleft()
                n = len(chunk)
                if self.scope is not None:
                    self.scope.release_memory(n)
                self.connection.consumed(self, n)
                return chunk
            if record.remote_closed:
                return b""
            self._raise_if_dead()
            await self._readable.wait()

    # ----------------------------------------------------------------- writing

    def write_nowait(self, data: Bytes) -> bool:
        """Queue all of ``data`` now if that needs no waiting (one frame within the send window,
        the connection's queue below its high-water mark, no other write in progress); False,
        with nothing queued, if :meth:`write` would have to wait."""
        if self.record.local_closed and not self.record.is_reset:
            raise StreamClosed(f"stream {self.stream_id} was closed for writing")
        self._raise_if_dead()
        total = len(data)
        if not total:
            return True
        conn = self.connection
        session = conn.session
        config = session.config
        if (
            (self._write_lock is not None and self._write_lock.locked())
            or total > self.record.send_window
            or total > config.max_frame_payload
            or session.outbound_size >= config.write_high_water
        ):
            return False
        if type(data) is not bytes:
            data = bytes(data)  # the core keeps a reference until the flush
        session.write(self.stream_id, data)
        conn.flush()
        return True

    async def write(self, data: Bytes) -> None:
        """Send ``data``; the core splits it by send window and frame size."""
        if self.write_nowait(data):
            return
        if type(data) is not bytes:
            data = bytes(data)  # the core keeps views of it until the writer sent them
        conn = self.connection
        session = conn.session
        sid = self.stream_id
        total = len(data)
        view = memoryview(data)
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
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
                    await self._writable.wait()

    async def drain(self) -> None:
        """Wait until the connection's outbound queue is below its high-water mark."""
        self._raise_if_dead()
        await self.connection.wait_room()

    # ----------------------------------------------------------------- closing

    async def close(self) -> None:
        """Half-close: send FIN. Reading still works until the remote's FIN. Idempotent."""
        self.connection.close_stream(self)

    def close_nowait(self) -> None:
        """What :meth:`close` does (it never waits)."""
        self.connection.close_stream(self)

    async def reset(self) -> None:
        """Abort both directions: RST to the remote, pending readers/writers get StreamReset."""
        self.connection.reset_stream(self)

    def reset_nowait(self) -> None:
        """What :meth:`reset` does (it never waits)."""
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
    :class:`ConnectionClosed`, closes ``conn`` and awaits the stream handlers.

    After :meth:`start` the connection is the :class:`~p2pnet.channel.ChannelReceiver` of
    ``conn``: no task reads or writes for it. ``data_received`` runs the core and fills stream
    buffers synchronously; frames the core queues are written by one ``call_soon`` callback per
    event-loop iteration; the keepalive is one timer handle.
    """

    __slots__ = (
        "__weakref__",
        "_accept",
        "_accept_event",
        "_accept_queue",
        "_backlog_reserved",
        "_channel",
        "_channel_lost",
        "_close_callbacks",
        "_close_timer",
        "_closing",
        "_error",
        "_flush_scheduled",
        "_flusher",
        "_handler_tasks",
        "_held",
        "_loop",
        "_now",
        "_on_stream",
        "_open_room",
        "_pong_waiters",
        "_replies_paused",
        "_room",
        "_started",
        "_streams",
        "_timer",
        "_timer_deadline",
        "_turn_scheduled",
        "_unread_paused",
        "_write_paused",
        "bytes_received",
        "bytes_sent",
        "closed",
        "config",
        "conn",
        "info",
        "initiator",
        "scope",
        "session",
        "unread",
    )

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
        accept: StreamAcceptor | None = None,
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
        self._accept = accept
        self._streams: dict[int, YamuxStream] = {}
        # (lists, not deques: an empty deque costs ~760 bytes per connection; both stay short)
        self._accept_queue: list[YamuxStream] = []
        self._accept_event = Waiters()
        self._room = Waiters()
        self._open_room = Waiters()
        self._pong_waiters: dict[int, asyncio.Future[float]] = {}
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._channel: Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._flusher: _Flusher | None = None
        self._write_paused = False
        # reading from the channel is paused: the streams hold too much unread, or the remote
        # provoked too many replies that wait behind a full transport (it does not read)
        self._unread_paused = False
        self._replies_paused = False
        # received and not parsed yet: the core stopped at its frame budget for this turn of the
        # loop (``max_frames_per_turn``); chunks received meanwhile wait here, reading paused
        self._held: list[bytes] = []
        self._turn_scheduled = False
        #: Bytes received for streams and not read by their applications yet.
        self.unread = 0
        #: Bytes of queued outbound frames reserved in ``scope`` (while the channel is paused).
        self._backlog_reserved = 0
        self._timer: _CoarseTimer | None = None
        self._timer_deadline: float | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._channel_lost = False
        self._started = False
        self._closing = False
        self._error: P2PError | None = None
        #: Set once the connection is fully closed (``conn`` closed, stream handlers ended).
        self.closed = Flag()
        self._close_callbacks: list[Callable[[], None]] = []
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

    @property
    def reading_paused(self) -> bool:
        """Reading from ``conn`` is paused: the streams hold ``read_high_water`` unread bytes,
        ``max_reply_backlog`` bytes of replies wait for a remote that does not read, or what was
        received is parsed over several turns of the loop (``max_frames_per_turn``)."""
        return (
            self._unread_paused
            or self._replies_paused
            or bool(self._held)
            or self.session.unparsed > 0
        )

    @property
    def writing_paused(self) -> bool:
        """The connection below asked us to stop writing (its buffer is full)."""
        return self._write_paused

    async def wait_closed(self) -> None:
        await self.closed.wait()

    def add_close_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (with ``call_soon``) once :attr:`closed` is set."""
        if self.closed.is_set():
            asyncio.get_running_loop().call_soon(callback)
        else:
            self._close_callbacks.append(callback)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Attach to ``conn`` and arm the keepalive; the core queues a first ping."""
        if self._started:
            return
        if self._closing:
            raise ConnectionClosed("yamux connection is closed")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._flusher = _flusher_of(self._loop)
        self.session.start(self._now())
        self._arm_timer()
        self.flush()
        # last: bytes that arrived during the upgrade are delivered from in here
        try:
            self._channel = attach(self.conn, self)
            if self.reading_paused:  # decided while the bytes of the upgrade were delivered
                self._update_reading()
        except P2PError as exc:  # the connection below closed already
            self._terminate(
                ConnectionClosed(f"connection closed before the muxer ran: {exc}"), None
            )

    async def close(self, code: int = GO_AWAY_NORMAL) -> None:
        """Go away with ``code``, fail every stream, close ``conn`` and await the handlers."""
        self._terminate(ConnectionClosed("yamux connection closed locally"), code)
        await self._wait_terminated()

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
        self.uncount(stream)
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
                        await self._open_room.wait()
            except TimeoutError:
                raise StreamLimitExceeded(
                    f"{session.ack_backlog} streams wait for an ACK from the remote"
                ) from None
        return self._open_now()

    def open_stream_nowait(self) -> YamuxStream | None:
        """:meth:`open_stream` when that needs no waiting, else None (too many streams wait
        for an ACK); raises like it otherwise."""
        self._check_open()
        if not self.session.can_open_stream():
            return None
        return self._open_now()

    def _open_now(self) -> YamuxStream:
        self._check_open()
        session = self.session
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
                stream = self._accept_queue.pop(0)
                if stream.record.is_reset:
                    continue
                self.session.accept_stream(stream.stream_id)
                self.flush()
                return stream
            self._check_open()
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

    # ----------------------------------------------------------------- writing

    def flush(self) -> None:
        """The session has frames queued: write them at the end of this loop iteration."""
        if not self._flush_scheduled and self._loop is not None and not self._closing:
            self._flush_scheduled = True
            assert self._flusher is not None  # set with the loop
            self._flusher.add(self, self._loop)

    def _flush(self) -> None:
        """Encrypt and write everything queued, in one write (unless the channel is paused:
        then what waits counts against the connection's memory scope)."""
        self._flush_scheduled = False
        if self._closing:
            return
        session = self.session
        if self._write_paused:
            self._account_backlog()
            return
        size = session.outbound_size
        if not size:
            return
        frames = session.take_outbound()
        self.bytes_sent += size
        if self._backlog_reserved:
            self._release_backlog()
        channel = self._channel
        if channel is None:
            return
        try:
            if len(frames) == 1:
                channel.write(frames[0])
            else:
                channel.writelines(frames)
        except (P2PError, OSError) as exc:
            log.debug("yamux write failed: %r", exc)
            self._parse_all()
            self._terminate(ConnectionClosed(f"write failed: {exc!r}"), None)
            return
        self._room.wake()
        if self._replies_paused:
            self._replies_paused = False
            self._update_reading()

    def _account_backlog(self) -> None:
        """Reserve the bytes queued behind a paused channel; over the limit the remote is not
        reading what it asks for (pongs, window updates...): close the connection."""
        scope = self.scope
        extra = self.session.outbound_size - self._backlog_reserved
        if scope is None or extra <= 0:
            return
        try:
            scope.reserve_memory(extra)
        except ResourceLimitExceeded as exc:
            scope.manager.refused["conn/write_backlog"] += 1
            log.debug(
                "yamux: %d bytes wait for a remote that does not read (%s): closing",
                self.session.outbound_size,
                exc,
            )
            # what waits would never be read: drop it with the connection
            self._terminate(
                ConnectionClosed(f"write backlog over the memory limit: {exc}"), None, abort=True
            )
            return
        self._backlog_reserved += extra

    def _release_backlog(self) -> None:
        if self.scope is not None:
            self.scope.release_memory(self._backlog_reserved)
        self._backlog_reserved = 0

    async def wait_room(self) -> None:
        """Wait until the outbound queue is below ``write_high_water``."""
        session = self.session
        high_water = self.config.write_high_water
        while session.outbound_size >= high_water:
            self._check_open()
            await self._room.wait()

    # ----------------------------------------------------------------- called by streams

    def consumed(self, stream: YamuxStream, n: int) -> None:
        """The application read ``n`` bytes of ``stream`` (window updates may follow)."""
        counted = stream.counted
        if counted:
            n_counted = n if n <= counted else counted
            stream.counted = counted - n_counted
            self.unread -= n_counted
            if self._unread_paused:
                self._maybe_resume_reading()
        session = self.session
        session.consume(stream.stream_id, n, self._now())
        if session.outbound_size:
            self.flush()

    def uncount(self, stream: YamuxStream) -> None:
        """``stream``'s buffered bytes stop counting towards ``read_high_water`` (it was reset
        or the core forgot it: no more data comes for it, whoever reads what is left)."""
        if stream.counted:
            self.unread -= stream.counted
            stream.counted = 0
            if self._unread_paused:
                self._maybe_resume_reading()

    def _maybe_resume_reading(self) -> None:
        if self.unread <= self.config.read_high_water >> 1:
            self._unread_paused = False
            self._update_reading()

    def _update_reading(self) -> None:
        """Pause or resume the channel as the two reasons to stop reading say."""
        channel = self._channel
        if channel is None or self._closing:
            return
        if self._unread_paused or self._replies_paused:
            channel.pause_reading()
        elif self._held or self.session.unparsed:
            channel.pause_reading()  # until what was received is parsed, a turn at a time
            if not self._turn_scheduled and self._loop is not None:
                self._turn_scheduled = True
                self._loop.call_soon(self._next_turn)
        else:
            channel.resume_reading()

    def _parse_all(self) -> None:
        """The connection below ends: what it received before is parsed first, whatever the
        budget (frames and FINs the remote sent before it went are not lost)."""
        while not self._closing and (self.session.unparsed or self._held):
            self._parse(b"" if self.session.unparsed else self._held.pop(0), 0)

    def _next_turn(self) -> None:
        """Parse the next ``max_frames_per_turn`` frames of what was received."""
        self._turn_scheduled = False
        if self._closing or self._unread_paused or self._replies_paused:
            return  # (resuming calls _update_reading, which schedules the next turn)
        if self.session.unparsed:
            self._parse(b"", self.config.max_frames_per_turn)
        elif self._held:
            self._parse(self._held.pop(0), self.config.max_frames_per_turn)
        self._update_reading()

    def close_stream(self, stream: YamuxStream) -> None:
        self.session.close_stream(stream.stream_id)
        self._settle(stream)

    def reset_stream(self, stream: YamuxStream) -> None:
        self.session.reset_stream(stream.stream_id)
        self._settle(stream)
        self._open_room.wake()

    def _settle(self, stream: YamuxStream) -> None:
        """After a local state change: wake the stream, forget it once the core did."""
        stream.wake()
        if not self.session.has_stream(stream.stream_id):
            self._forget(stream)
        if self.session.outbound_size:
            self.flush()

    # ----------------------------------------------------------------- ChannelReceiver

    #: ``data_received`` may be given a view valid only during the call (the Noise channel's
    #: plaintext buffer): the core copies each payload into a ``bytes`` of its own.
    accepts_views = True

    def data_received(self, data: Bytes) -> None:
        if self._closing:
            return
        self.bytes_received += len(data)
        if self._held or self.session.unparsed:
            # (the rest of a chunk the layer below delivers after we paused it; a copy, as
            # ``data`` may be a view of a buffer the layer below reuses)
            self._held.append(bytes(data))
            return
        self._parse(data, self.config.max_frames_per_turn)
        if self.session.unparsed and not self._closing:
            self._update_reading()

    def _parse(self, data: Bytes, max_frames: int) -> None:
        """Parse ``data`` (after what the core kept unparsed) and act on what happened."""
        session = self.session
        streams = self._streams
        now = self._now
        try:
            events = session.receive_data(data, now(), max_frames)
            for ev in events:
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
                        self._terminate(error, None)
                        return
        except ProtocolError as exc:
            self._terminate(ConnectionClosed(f"protocol error: {exc}"), GO_AWAY_PROTOCOL_ERROR)
            return
        except Exception as exc:  # a bug: end this connection, not the transport's callback
            log.exception("yamux: handling received data failed")
            self._terminate(ConnectionClosed(f"internal error: {exc!r}"), GO_AWAY_INTERNAL_ERROR)
            return
        if self.unread > self.config.read_high_water and not self._unread_paused:
            # the applications do not keep up: let TCP push back on the remote
            self._unread_paused = True
            self._update_reading()
        if session.outbound_size:
            if self._write_paused:
                if (
                    session.reply_backlog > self.config.max_reply_backlog
                    and not self._replies_paused
                ):
                    # the remote asks (pings...) but does not read the answers: stop reading
                    # it until it does, so it cannot make us work (or queue) without bound
                    log.debug("yamux: %d bytes of replies unread: pausing", session.reply_backlog)
                    self._replies_paused = True
                    self._update_reading()
                self._account_backlog()
            else:
                self.flush()

    def connection_lost(self, exc: P2PError | None) -> None:
        self._channel_lost = True
        self._parse_all()
        if not self._closing:
            if exc is None:
                self._terminate(ConnectionClosed("connection closed by the remote"), None)
            else:
                log.debug("yamux connection lost: %r", exc)
                self._terminate(ConnectionClosed(f"connection lost: {exc}"), None)
        self._maybe_closed()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        if self._write_paused:
            self._write_paused = False
            self.flush()

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
                self._open_room.wake()
        elif isinstance(ev, StreamAcked):
            self._open_room.wake()
        elif isinstance(ev, PongReceived):
            fut = self._pong_waiters.pop(ev.opaque, None)
            if fut is not None and not fut.done():
                fut.set_result(ev.rtt)
        elif isinstance(ev, GoAwayReceived):
            self._open_room.wake()
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
        accept = self._accept
        if accept is not None:
            if record.is_reset or not self.session.has_stream(sid):
                return None  # reset in the same batch of frames as its SYN: nothing to serve
            # push mode: no task unless the acceptor asks for one (spawn_handler); the ACK
            # goes with the acceptor's first answer (a multistream listener answers the
            # proposal that follows the SYN at once)
            self.session.accept_stream(sid, lazily=True)
            try:
                accept(stream)
            except Exception:
                log.exception("accepting stream %d failed; resetting it", sid)
                self.reset_stream(stream)
            return None
        if self._on_stream is None:
            self._accept_queue.append(stream)
            self._accept_event.wake()
            return None
        self.session.accept_stream(sid)
        self.spawn_handler(stream, self._on_stream)
        return None

    def spawn_handler(self, stream: Stream, handler: StreamCallback) -> None:
        """Run ``handler(stream)`` in a task the connection owns (cancelled when it closes;
        an exception is logged and resets the stream; the stream's scope is kept until it
        ends)."""
        if not isinstance(stream, YamuxStream) or stream.connection is not self:
            raise ValueError(f"{stream!r} is not a stream of this connection")
        if self._closing:
            # (the connection's end released the stream's scope, or will once forgotten)
            return
        stream.handler_running = True
        assert self._loop is not None
        task = self._loop.create_task(
            self._run_handler(handler, stream), name=f"yamux-stream-{stream.stream_id}"
        )
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._handler_tasks.discard(task)
        if self._closing:
            self._maybe_closed()

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

    # ----------------------------------------------------------------- keepalive timer

    def _arm_timer(self) -> None:
        deadline = self.session.get_timer()
        if deadline == self._timer_deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_deadline = deadline
        if deadline is not None and self._loop is not None:
            self._timer = _coarse_timers_of(self._loop).add(
                self._loop, max(deadline - self._now(), 0.0), self._on_timer
            )

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        if self._closing:
            return
        session = self.session
        for ev in session.handle_timer(self._now()):
            if isinstance(ev, KeepaliveTimedOut):
                # the core queued the go-away and terminated itself
                self._terminate(ConnectionClosed("keepalive timeout"), None)
                return
        if session.outbound_size:
            self.flush()
        self._arm_timer()

    # ----------------------------------------------------------------- shutdown

    def _terminate(self, error: P2PError, code: int | None, *, abort: bool = False) -> None:
        """End the connection now: wake everyone, write what is queued and the go-away, close
        the channel (``abort``: drop what is queued and abort it) and cancel the stream
        handlers. :attr:`closed` is set once the channel is closed and the handlers ended (or
        after ``close_timeout``)."""
        if self._closing:
            return
        self._closing = True
        self._error = error
        session = self.session
        # wake everyone: streams, accepters, openers, pingers, waiting writers (a copy: a
        # consumer told of the loss may reset its stream, which forgets it)
        for stream in list(self._streams.values()):
            stream.wake()
            if stream.scope is not None and not stream.handler_running:
                stream.scope.done()
        for stream in self._accept_queue:
            stream.wake()
            if stream.scope is not None:
                stream.scope.done()
        self._streams.clear()
        self._accept_queue.clear()
        self._held.clear()
        self._accept_event.wake()
        self._open_room.wake()
        self._room.wake()
        for fut in self._pong_waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionClosed(str(error)))
        self._pong_waiters.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # go-away (or the one the core already queued), written ahead of the close
        if code is not None and not session.terminated:
            session.go_away(code)
        session.terminate()
        frames = session.take_outbound()
        self._release_backlog()
        channel = self._channel
        if channel is None:
            self._channel_lost = True
        elif abort:
            channel.abort()
        else:
            # also after the remote's EOF: it may still read, and our side must be closed
            try:
                if frames:
                    channel.writelines(frames)
            except (P2PError, OSError) as exc:
                log.debug("yamux: writing the go-away failed: %r", exc)
            channel.close()
        current = asyncio.current_task() if self._loop is not None else None
        for task in self._handler_tasks:
            if task is not current:  # a handler closing its own connection finishes itself
                task.cancel()
        if self._loop is not None:
            self._close_timer = self._loop.call_later(self.config.close_timeout, self._closed_late)
        self._maybe_closed()

    def _maybe_closed(self) -> None:
        if self._closing and self._channel_lost and not self._handler_tasks:
            self._set_closed()

    def _closed_late(self) -> None:
        self._close_timer = None
        for task in self._handler_tasks:
            log.error("yamux: task %s did not stop", task.get_name())
        if not self._channel_lost and self._channel is not None:
            log.debug("yamux close: the connection below did not close in time; aborting")
            self._channel.abort()
        self._set_closed()

    def _set_closed(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if not self.closed.is_set():
            self.closed.set()
            callbacks, self._close_callbacks = self._close_callbacks, []
            if callbacks:
                loop = asyncio.get_running_loop()
                for callback in callbacks:
                    loop.call_soon(callback)

    async def _wait_terminated(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._handler_tasks if t is not current]
        if tasks:
            await asyncio.wait(tasks, timeout=self.config.close_timeout)
        try:
            async with asyncio.timeout(self.config.close_timeout):
                if self._channel is not None:
                    await self._channel.wait_closed()
                else:  # never started: the connection below is still ours to close
                    await self.conn.close()
        except TimeoutError:
            if self._channel is not None:
                self._channel.abort()
        except (P2PError, OSError) as exc:
            log.debug("yamux: closing the connection below failed: %r", exc)
        self._channel_lost = True
        self._maybe_closed()
        if current not in self._handler_tasks:  # else: closed is set when this handler ends
            await self.closed.wait()


class _Flusher:
    """The connections of one event loop with frames to write, written by one callback at the
    next loop iteration, in the order they asked: one handle per iteration instead of one per
    connection (a node with many busy connections flushes dozens at a time)."""

    # no reference to the loop: it is the key of a weak mapping to this
    __slots__ = ("_queue", "_scheduled")

    def __init__(self) -> None:
        self._queue: list[YamuxConnection] = []
        self._scheduled = False

    def add(self, conn: YamuxConnection, loop: asyncio.AbstractEventLoop) -> None:
        self._queue.append(conn)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for conn in queue:  # connections asking during this run are written next iteration
            try:
                conn._flush()
            except Exception:  # a bug in one connection must not stall the others' writes
                log.exception("yamux: writing queued frames failed")


#: How late (at most) a keepalive timer fires: its bucket's width, in seconds.
COARSE_TIMER_GRANULARITY = 1 / 32


class _CoarseTimer:
    """One timer of :class:`_CoarseTimers` (``cancel``: it never fires)."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None


class _CoarseTimers:
    """The keepalive timers of every yamux connection of one event loop, in buckets of
    :data:`COARSE_TIMER_GRANULARITY` seconds: one loop timer per bucket instead of one per
    connection. Thousands of long-lived timer handles slow every timer operation of the loop
    down (its heap compares them in Python); a keepalive needs no better precision. A timer
    fires up to one bucket late, never early."""

    # no reference to the loop: it is the key of a weak mapping to this
    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[int, list[_CoarseTimer]] = {}

    def add(
        self, loop: asyncio.AbstractEventLoop, delay: float, callback: Callable[[], None]
    ) -> _CoarseTimer:
        key = math.ceil((loop.time() + delay) / COARSE_TIMER_GRANULARITY)
        timer = _CoarseTimer(callback)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [timer]
            loop.call_at(key * COARSE_TIMER_GRANULARITY, self._fire, key)
        else:
            bucket.append(timer)
        return timer

    def _fire(self, key: int) -> None:
        for timer in self._buckets.pop(key, ()):
            callback = timer.callback
            if callback is not None:
                timer.callback = None
                try:
                    callback()
                except Exception:  # one connection's bug must not stop the others' timers
                    log.exception("yamux: a keepalive timer failed")


_coarse_timers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _CoarseTimers] = (
    weakref.WeakKeyDictionary()
)


def _coarse_timers_of(loop: asyncio.AbstractEventLoop) -> _CoarseTimers:
    timers = _coarse_timers.get(loop)
    if timers is None:
        timers = _coarse_timers[loop] = _CoarseTimers()
    return timers


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = (
    weakref.WeakKeyDictionary()
)


def _flusher_of(loop: asyncio.AbstractEventLoop) -> _Flusher:
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = _Flusher()
    return flusher


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
        accept: StreamAcceptor | None = None,
    ) -> YamuxConnection:
        return YamuxConnection(
            secure,
            initiator=initiator,
            config=self.config,
            on_stream=on_stream,
            info=info,
            clock=clock,
            scope=scope,
            accept=accept,
        )
