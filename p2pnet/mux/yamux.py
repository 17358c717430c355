"""yamux ``/yamux/1.0.0``: the sans-IO protocol core.

Nothing here does I/O, sleeps, reads a clock or starts tasks. :class:`YamuxSession` is fed the
bytes read from the connection (:meth:`YamuxSession.receive_data`) with the current time and
returns what happened as small event objects; local actions (open, write, close, reset, ping,
go-away) append encoded frames to an outbound buffer that the asyncio adapter
(:mod:`p2pnet.mux.yamux_connection`) drains and writes. Timers are the core's too:
:meth:`YamuxSession.get_timer` says when :meth:`YamuxSession.handle_timer` must next run (keepalive
pings and their timeout). Every stream's lifecycle is a :class:`StreamState` whose transitions are
all in :data:`STREAM_TRANSITIONS`; :meth:`YamuxSession.write` splits a write by the send window,
the frame size and the outbound high-water mark.

Wire format (libp2p specs yamux/README.md, the hashicorp spec): a 12-byte big-endian header
``version u8 (0) | type u8 | flags u16 | stream id u32 | length u32``, followed by ``length`` bytes
of payload for Data frames only. For Window Update ``length`` is the window delta, for Ping the
opaque value, for Go Away the error code.

Choices worth knowing:

* Streams are opened with Window Update frames (never empty Data frames); the delta announces
  how much more than the spec's 256 KiB initial window we accept.
* Inbound streams are acknowledged by :meth:`YamuxSession.accept_stream` (a Window Update with
  ACK, or, ``lazily`` and with the spec's window, the ACK flag of the first frame sent on the
  stream); until then they count as *unacked* and at most ``max_unacked_inbound`` of them may
  exist: a SYN beyond that, or beyond ``max_streams`` open inbound streams, is answered with RST
  and the connection lives on. (The host's adapter accepts every stream at once, lazily: a
  stream is unacked until the host answered its first multistream proposal, so the unacked
  bound also bounds streams that never send one.)
* ``max_streams`` bounds inbound and outbound streams separately.
* The receive window is given back as the application *consumes* data (``consume``), once at least
  half the window is free, so a reader that stops reading stops the writer. If half a window was
  consumed within ``2 * RTT`` of the previous update, the window doubles (up to ``max_window``, and
  while all stream windows together stay below ``max_connection_window``) - the go-yamux and
  rust-yamux auto-tuning rule. The RTT comes from session pings, floored at ``min_tuning_rtt``.
* Frames for streams that existed but are gone (closed or reset) are ignored; frames for ids that
  never existed, SYNs with a reused or wrong-parity id, data beyond the window, a bad version or an
  unknown type are protocol errors: a Go Away (protocol error) is queued and
  :class:`~p2pnet.errors.ProtocolError` raised. After that the session accepts no more input.
"""

from __future__ import annotations

import enum
import logging
import struct
from dataclasses import dataclass, field
from typing import Final

from p2pnet.errors import (
    ConnectionClosed,
    ProtocolError,
    StreamClosed,
    StreamLimitExceeded,
)
from p2pnet.io import Bytes

log = logging.getLogger("p2pnet.yamux")

PROTOCOL_ID = "/yamux/1.0.0"

VERSION = 0

TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3

FLAG_SYN = 0x1
FLAG_ACK = 0x2
FLAG_FIN = 0x4
FLAG_RST = 0x8

GO_AWAY_NORMAL = 0
GO_AWAY_PROTOCOL_ERROR = 1
GO_AWAY_INTERNAL_ERROR = 2

HEADER_SIZE = 12
#: The window every stream starts with, in both directions, by the spec.
DEFAULT_WINDOW = 256 * 1024
MAX_U32 = 0xFFFFFFFF

HEADER = struct.Struct(">BBHII")
#: Data frame payloads up to this size are copied into the outbound buffer next to their header
#: rather than kept by reference.
_SMALL_PAYLOAD = 2048
#: Largest ``bytes`` a payload received in a view is copied into: the size of a Noise frame's
#: plaintext, well below glibc's default mmap threshold (128 KiB). Bigger ones (a js-libp2p
#: sender's yamux frames reach 1 MiB) are mapped and faulted in afresh each time: measured 2 GB/s.
_MAX_COPY = 64 * 1024
_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from


@dataclass
class YamuxConfig:
    """Limits and timers of a yamux connection. Defaults follow go-yamux / rust-yamux."""

    #: Receive window of a new stream; at least the spec's 256 KiB (more is announced on open).
    initial_window: int = DEFAULT_WINDOW
    #: Ceiling of a stream's receive window under auto-tuning.
    max_window: int = 16 * 1024 * 1024
    #: Floor of the RTT used by window auto-tuning. In an event loop the time for a window update
    #: to turn into data is dominated by scheduling (~1 ms), not by the idle ping RTT (~0.1 ms on
    #: loopback), so tuning with the raw ping RTT would never grow the window.
    min_tuning_rtt: float = 0.001
    #: Ceiling of the sum of all stream receive windows of one connection (auto-tuning stops).
    max_connection_window: int = 1024 * 1024 * 1024
    #: Open streams per connection, counted separately for each direction: an inbound SYN beyond
    #: it is reset, a local ``open_stream`` beyond it raises StreamLimitExceeded.
    max_streams: int = 1000
    #: Inbound streams not yet accepted by the application; a SYN beyond it is reset.
    max_unacked_inbound: int = 256
    #: Outbound streams the remote has not acknowledged yet; ``open_stream`` waits beyond it.
    max_ack_backlog: int = 256
    #: Seconds between keepalive pings (None: no keepalive).
    keepalive_interval: float | None = 30.0
    #: Seconds to wait for a pong (keepalive and ``ping()``).
    ping_timeout: float = 10.0
    #: Largest payload of one Data frame we send.
    max_frame_payload: int = 256 * 1024
    #: Seconds ``close()`` waits to flush the go-away and close the connection below.
    close_timeout: float = 5.0
    #: Seconds ``open_stream`` waits while the ack backlog is full.
    open_timeout: float = 30.0
    #: Bytes of queued outbound frames above which stream writers wait for the writer to catch up.
    write_high_water: int = 1024 * 1024
    #: Bytes received for a connection's streams and not read by their applications above which
    #: the adapter stops reading from the connection (TCP then pushes back on the remote); it
    #: reads again at half of it.
    read_high_water: int = 16 * 1024 * 1024
    #: Bytes of replies the remote provoked (pongs, RSTs of refused streams) queued while the
    #: connection cannot write, above which the adapter stops reading the remote until it reads
    #: (checked after each turn of parsing, so one turn's replies may go beyond it).
    max_reply_backlog: int = 256 * 1024
    #: Bytes of queued outbound frames above which a frame provoked by the remote (pong, RST of a
    #: refused stream, window update) means the remote floods us without reading: protocol error.
    max_outbound_backlog: int = 64 * 1024 * 1024
    #: Frames the adapter parses in one turn of the event loop; the rest of what was received
    #: waits for the next turn (reading paused meanwhile). A read of 1 MiB of 12-byte frames
    #: (pings, window updates) is ~87k frames, ~50 ms of parsing and replying: without this one
    #: remote flooding tiny frames held the loop that long per read, and every other
    #: connection's latency with it. Data frames are few per read, so bulk transfers never
    #: reach it.
    max_frames_per_turn: int = 2048

    def __post_init__(self) -> None:
        if self.initial_window < DEFAULT_WINDOW or self.initial_window > MAX_U32:
            raise ValueError(f"initial_window must be in [{DEFAULT_WINDOW}, 2**32)")
        if self.max_window < self.initial_window or self.max_window > MAX_U32:
            raise ValueError("max_window must be in [initial_window, 2**32)")
        if self.max_streams < 1 or self.max_unacked_inbound < 1 or self.max_ack_backlog < 1:
            raise ValueError("stream limits must be positive")
        if self.max_frame_payload < 1:
            raise ValueError("max_frame_payload must be positive")
        if self.max_frames_per_turn < 1:
            raise ValueError("max_frames_per_turn must be positive")


def encode_header(ftype: int, flags: int, stream_id: int, length: int) -> bytes:
    return _pack_header(VERSION, ftype, flags, stream_id, length)


# ---------------------------------------------------------------------------------------------
# Events returned by receive_data
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class StreamOpened:
    """The remote opened a stream (SYN); accept it with :meth:`YamuxSession.accept_stream`.

    ``record`` is the stream's state (valid even if a later frame in the same input removed it).
    """

    stream_id: int
    record: StreamRecord | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class DataReceived:
    stream_id: int
    data: bytes


@dataclass(slots=True)
class StreamEnded:
    """The remote half-closed the stream (FIN): no more data will come."""

    stream_id: int


@dataclass(slots=True)
class StreamResetByRemote:
    stream_id: int


@dataclass(slots=True)
class SendWindowUpdated:
    """The remote granted more send window (or acknowledged the stream)."""

    stream_id: int


@dataclass(slots=True)
class StreamAcked:
    """The remote acknowledged (or refused) one of our streams: the ack backlog shrank."""

    stream_id: int


@dataclass(slots=True)
class PongReceived:
    opaque: int
    rtt: float


@dataclass(slots=True)
class GoAwayReceived:
    code: int


@dataclass(slots=True)
class KeepaliveTimedOut:
    """No pong within ``ping_timeout``: the session queued a go-away and terminated."""

    timeout: float


Event = (
    StreamOpened
    | DataReceived
    | StreamEnded
    | StreamResetByRemote
    | SendWindowUpdated
    | StreamAcked
    | PongReceived
    | GoAwayReceived
    | KeepaliveTimedOut
)


class StreamState(enum.Enum):
    OPEN = "open"
    LOCAL_CLOSED = "closed for writing"  # we sent FIN
    REMOTE_CLOSED = "closed by the remote"  # the remote sent FIN
    CLOSED = "closed"  # both sent FIN: the stream is gone
    RESET = "reset"  # either side sent RST: the stream is gone

    # members are singletons: identity hashing is correct and much cheaper than Enum's
    __hash__ = object.__hash__


class StreamInput(enum.Enum):
    LOCAL_FIN = "local FIN"
    REMOTE_FIN = "remote FIN"
    RESET = "RST"

    __hash__ = object.__hash__


_O, _LC, _RC, _C, _R = (
    StreamState.OPEN,
    StreamState.LOCAL_CLOSED,
    StreamState.REMOTE_CLOSED,
    StreamState.CLOSED,
    StreamState.RESET,
)
#: Every stream state change; an input not listed for a state leaves it unchanged (a second FIN,
#: a FIN after a reset).
STREAM_TRANSITIONS: Final[dict[tuple[StreamState, StreamInput], StreamState]] = {
    (_O, StreamInput.LOCAL_FIN): _LC,
    (_O, StreamInput.REMOTE_FIN): _RC,
    (_LC, StreamInput.REMOTE_FIN): _C,
    (_RC, StreamInput.LOCAL_FIN): _C,
    (_O, StreamInput.RESET): _R,
    (_LC, StreamInput.RESET): _R,
    (_RC, StreamInput.RESET): _R,
}
_GONE: Final = frozenset((_C, _R))


class StreamRecord:
    """Lifecycle and flow-control state of one stream.

    The adapter keeps the record of each of its streams: it stays valid (in a final state) after
    the session forgot the stream.
    """

    __slots__ = (
        "acked",
        "buffered",
        "last_update",
        "need_ack",
        "outbound",
        "recv_credit",
        "recv_window",
        "send_window",
        "state",
        "stream_id",
    )

    def __init__(self, stream_id: int, outbound: bool, recv_window: int, now: float) -> None:
        self.stream_id = stream_id
        self.outbound = outbound
        #: The remote acknowledged our SYN (outbound streams only).
        self.acked = not outbound
        #: We still owe the remote an ACK (inbound streams not yet accepted).
        self.need_ack = not outbound
        self.send_window = DEFAULT_WINDOW
        #: Current receive window size (grows by auto-tuning).
        self.recv_window = recv_window
        #: Bytes the remote may still send before our next window update.
        self.recv_credit = recv_window
        #: Bytes received but not yet consumed by the application.
        self.buffered = 0
        self.last_update = now
        self.state = StreamState.OPEN

    @property
    def local_closed(self) -> bool:
        """No more writes: we sent FIN, or the stream is gone."""
        return self.state is not _O and self.state is not _RC

    @property
    def remote_closed(self) -> bool:
        """No more data will come: the remote sent FIN, or the stream is gone."""
        return self.state is not _O and self.state is not _LC

    @property
    def is_reset(self) -> bool:
        return self.state is _R

    def advance(self, event: StreamInput) -> bool:
        """Apply ``event``; returns whether the state changed."""
        new = STREAM_TRANSITIONS.get((self.state, event))
        if new is None:
            return False
        self.state = new
        return True


class YamuxSession:
    """The state of one yamux connection, without I/O.

    ``receive_data(bytes, now)`` parses incoming frames; local actions queue outbound frames that
    :meth:`take_outbound` hands over. Times are plain floats (seconds, a monotonic clock).
    """

    __slots__ = (
        "_data_fin",
        "_data_left",
        "_data_stream",
        "_highest_remote_id",
        "_inbound_open",
        "_inbound_unacked",
        "_keepalive_ping",
        "_next_keepalive",
        "_next_local_id",
        "_next_ping_id",
        "_out",
        "_out_size",
        "_outbound_open",
        "_outbound_unacked",
        "_partial",
        "_pings",
        "_remote_parity",
        "_reply_size",
        "_run",
        "_streams",
        "_total_recv_window",
        "_unparsed",
        "_unparsed_pos",
        "config",
        "initiator",
        "local_go_away",
        "remote_go_away",
        "rtt",
        "terminated",
    )

    def __init__(self, *, initiator: bool, config: YamuxConfig | None = None) -> None:
        self.config = config or YamuxConfig()
        self.initiator = initiator
        self._streams: dict[int, StreamRecord] = {}
        self._next_local_id = 1 if initiator else 2
        self._remote_parity = 0 if initiator else 1
        self._highest_remote_id = 0
        self._inbound_open = 0
        self._outbound_open = 0
        self._inbound_unacked = 0
        self._outbound_unacked = 0
        self._total_recv_window = 0
        self._pings: dict[int, float] = {}
        self._next_ping_id = 1
        self._next_keepalive: float | None = None
        self._keepalive_ping: int | None = None  # opaque of the unanswered keepalive ping
        #: Last measured round-trip time in seconds (None until a pong arrived).
        self.rtt: float | None = None
        self.local_go_away = False
        self.remote_go_away: int | None = None
        #: Set once a protocol error was detected or the session was closed.
        self.terminated = False
        # outbound frames: runs of small frames joined in a bytearray (a flood of pongs costs
        # what it counts, not an object per frame), big payloads by reference
        self._out: list[bytes | bytearray | memoryview] = []
        self._run: bytearray | None = None  # the last item of ``_out`` while small frames join it
        self._out_size = 0
        self._reply_size = 0  # of _out_size: frames the remote provoked
        # receive parser state
        self._partial = b""
        # what receive_data left unparsed at its frame budget, from _unparsed_pos on
        self._unparsed = b""
        self._unparsed_pos = 0
        self._data_left = 0
        self._data_stream: StreamRecord | None = None
        self._data_fin = False

    # ----------------------------------------------------------------- outbound buffer

    @property
    def outbound_size(self) -> int:
        return self._out_size

    @property
    def reply_backlog(self) -> int:
        """Bytes of the queued frames that the remote provoked (pongs, RSTs of refused streams)."""
        return self._reply_size

    def take_outbound(self) -> list[bytes | bytearray | memoryview]:
        out = self._out
        self._out = []
        self._run = None
        self._out_size = 0
        self._reply_size = 0
        return out

    def _queue(self, frame: bytes) -> None:
        run = self._run
        if run is None:
            self._run = bytearray(frame)
            self._out.append(self._run)
        else:
            run += frame
        self._out_size += len(frame)

    def _queue_reply(self, frame: bytes) -> None:
        """Queue a frame the remote provoked; refuse to buffer without bound for a flooder."""
        if self._out_size > self.config.max_outbound_backlog:
            raise self._protocol_error("outbound backlog overflow: the remote never reads")
        self._queue(frame)
        self._reply_size += len(frame)

    # ----------------------------------------------------------------- queries

    def has_stream(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def stream(self, stream_id: int) -> StreamRecord | None:
        """The record of a live stream (keep it: it tells the final state after removal)."""
        return self._streams.get(stream_id)

    @property
    def unacked_inbound(self) -> int:
        """Inbound streams not yet accepted."""
        return self._inbound_unacked

    def streams(self) -> list[StreamRecord]:
        return list(self._streams.values())

    def send_window(self, stream_id: int) -> int:
        st = self._streams.get(stream_id)
        return st.send_window if st is not None else 0

    def recv_window(self, stream_id: int) -> int:
        st = self._streams.get(stream_id)
        return st.recv_window if st is not None else 0

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    @property
    def inbound_streams(self) -> int:
        return self._inbound_open

    @property
    def outbound_streams(self) -> int:
        return self._outbound_open

    @property
    def ack_backlog(self) -> int:
        """Outbound streams the remote has not acknowledged yet."""
        return self._outbound_unacked

    def can_open_stream(self) -> bool:
        return self._outbound_unacked < self.config.max_ack_backlog

    # ----------------------------------------------------------------- local actions

    def _check_usable(self) -> None:
        if self.terminated:
            raise ConnectionClosed("yamux session is closed")

    def open_stream(self, now: float) -> int:
        """Allocate a stream id and queue its SYN (a Window Update announcing our window)."""
        self._check_usable()
        if self.local_go_away:
            raise ConnectionClosed("yamux session is going away")
        if self.remote_go_away is not None:
            raise ConnectionClosed(f"remote sent go-away (code {self.remote_go_away})")
        if self._outbound_open >= self.config.max_streams:
            raise StreamLimitExceeded(
                f"{self._outbound_open} outbound streams open "
                f"(max_streams={self.config.max_streams})"
            )
        sid = self._next_local_id
        if sid > MAX_U32:
            raise StreamLimitExceeded("stream ids exhausted")
        self._next_local_id += 2
        st = StreamRecord(sid, True, self.config.initial_window, now)
        self._streams[sid] = st
        self._outbound_open += 1
        self._outbound_unacked += 1
        self._total_recv_window += st.recv_window
        self._queue(
            _pack_header(
                VERSION, TYPE_WINDOW_UPDATE, FLAG_SYN, sid, st.recv_window - DEFAULT_WINDOW
            )
        )
        return sid

    def accept_stream(self, stream_id: int, *, lazily: bool = False) -> None:
        """Acknowledge an inbound stream (a Window Update with ACK announcing our window).

        ``lazily``: the ACK rides on the first frame we send on the stream (as rust-libp2p's
        yamux acknowledges), unless our window is larger than the spec's (then the Window
        Update announces it now); the stream counts as unacked until then (an adapter that
        answers every stream as its first bytes arrive: one frame less per stream)."""
        st = self._streams.get(stream_id)
        if st is None or not st.need_ack or self.terminated:
            return
        if lazily and st.recv_window == DEFAULT_WINDOW:
            return
        st.need_ack = False
        self._inbound_unacked -= 1
        self._queue(
            _pack_header(
                VERSION, TYPE_WINDOW_UPDATE, FLAG_ACK, stream_id, st.recv_window - DEFAULT_WINDOW
            )
        )

    def _flags_for(self, st: StreamRecord) -> int:
        if st.need_ack:
            st.need_ack = False
            self._inbound_unacked -= 1
            return FLAG_ACK
        return 0

    def _writable(self, stream_id: int) -> StreamRecord:
        self._check_usable()
        st = self._streams.get(stream_id)
        if st is None:
            raise StreamClosed(f"stream {stream_id} is closed")
        if st.local_closed:
            raise StreamClosed(f"stream {stream_id} was closed for writing")
        return st

    def write(self, stream_id: int, data: bytes | memoryview) -> int:
        """Queue as much of ``data`` as may go now; returns how many bytes were queued.

        Data frames carry at most ``max_frame_payload`` bytes and never exceed the send window;
        no frame is started once ``write_high_water`` bytes are queued. 0 means: wait for send
        window (:class:`SendWindowUpdated`) or for the outbound buffer to drain. ``data`` is kept
        by reference until :meth:`take_outbound`, so it must not change meanwhile.
        """
        st = self._writable(stream_id)
        total = len(data)
        high_water = self.config.write_high_water
        frame_max = self.config.max_frame_payload
        pos = 0
        out = self._out
        view: memoryview | None = None
        while pos < total and self._out_size < high_water:
            take = min(st.send_window, frame_max, total - pos)
            if take <= 0:
                break
            st.send_window -= take
            header = _pack_header(VERSION, TYPE_DATA, self._flags_for(st), stream_id, take)
            if take <= _SMALL_PAYLOAD:
                # copied next to its header: small frames share one buffer
                run = self._run
                if run is None:
                    run = self._run = bytearray(header)
                    out.append(run)
                else:
                    run += header
                run += data if take == total else memoryview(data)[pos : pos + take]
            else:
                self._run = None
                out.append(header)
                if take == total:
                    out.append(data)
                else:
                    if view is None:
                        view = memoryview(data)  # slices of a view share the buffer: no copy
                    out.append(view[pos : pos + take])
            self._out_size += HEADER_SIZE + take
            pos += take
        return pos

    def close_stream(self, stream_id: int) -> None:
        """Half-close: queue a FIN. Idempotent; no-op for a stream that is gone."""
        st = self._streams.get(stream_id)
        if st is None or not st.advance(StreamInput.LOCAL_FIN):
            return
        if not self.terminated:
            self._queue(
                _pack_header(
                    VERSION, TYPE_WINDOW_UPDATE, self._flags_for(st) | FLAG_FIN, stream_id, 0
                )
            )
        if st.state in _GONE:
            self._remove(st)

    def reset_stream(self, stream_id: int) -> None:
        """Queue an RST and forget the stream. No-op for a stream that is gone."""
        st = self._streams.get(stream_id)
        if st is None or not st.advance(StreamInput.RESET):
            return
        if not self.terminated:
            self._queue(
                _pack_header(
                    VERSION, TYPE_WINDOW_UPDATE, self._flags_for(st) | FLAG_RST, stream_id, 0
                )
            )
        self._remove(st)

    def consume(self, stream_id: int, n: int, now: float) -> None:
        """The application consumed ``n`` received bytes: maybe give window back (and grow it)."""
        st = self._streams.get(stream_id)
        if st is None:
            return
        st.buffered -= n
        if st.remote_closed or self.terminated:
            return
        window = st.recv_window
        delta = window - st.recv_credit - st.buffered
        if delta < window >> 1:
            return
        cfg = self.config
        rtt = self.rtt or 0.0
        if rtt < cfg.min_tuning_rtt:
            rtt = cfg.min_tuning_rtt
        if window < cfg.max_window and now - st.last_update < 2.0 * rtt:
            grown = min(window * 2, cfg.max_window)
            if self._total_recv_window + grown - window <= cfg.max_connection_window:
                self._total_recv_window += grown - window
                st.recv_window = grown
                delta += grown - window
                log.debug("stream %d: receive window grown to %d", stream_id, grown)
        st.last_update = now
        st.recv_credit += delta
        self._queue(
            _pack_header(VERSION, TYPE_WINDOW_UPDATE, self._flags_for(st), stream_id, delta)
        )

    def ping(self, now: float) -> int:
        """Queue a session ping; returns its opaque value (the pong carries it back)."""
        self._check_usable()
        opaque = self._next_ping_id
        self._next_ping_id = (self._next_ping_id % MAX_U32) + 1
        self._pings[opaque] = now
        self._queue(_pack_header(VERSION, TYPE_PING, FLAG_SYN, 0, opaque))
        return opaque

    def forget_ping(self, opaque: int) -> None:
        self._pings.pop(opaque, None)

    # ----------------------------------------------------------------- timers

    def start(self, now: float) -> None:
        """Queue a first ping (its pong gives the RTT window auto-tuning needs) and arm the
        keepalive."""
        self.ping(now)
        interval = self.config.keepalive_interval
        if interval is not None:
            self._next_keepalive = now + interval

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next run (None: no timer)."""
        if self.terminated or self._next_keepalive is None:
            return None
        if self._keepalive_ping is not None:
            sent = self._pings.get(self._keepalive_ping)
            if sent is not None:
                return min(self._next_keepalive, sent + self.config.ping_timeout)
        return self._next_keepalive

    def handle_timer(self, now: float) -> list[Event]:
        """Keepalive: ping every ``keepalive_interval`` (one ping in flight at a time) and end the
        session when a keepalive pong is ``ping_timeout`` late."""
        interval = self.config.keepalive_interval
        if self.terminated or interval is None or self._next_keepalive is None:
            return []
        if self._keepalive_ping is not None:
            sent = self._pings.get(self._keepalive_ping)
            if sent is None:
                self._keepalive_ping = None
            elif now - sent >= self.config.ping_timeout:
                log.info("yamux keepalive: no pong within %.1fs", self.config.ping_timeout)
                self.go_away(GO_AWAY_INTERNAL_ERROR)
                self.terminated = True
                return [KeepaliveTimedOut(self.config.ping_timeout)]
        if now >= self._next_keepalive:
            if self._keepalive_ping is None:
                self._keepalive_ping = self.ping(now)
            self._next_keepalive = now + interval
        return []

    def go_away(self, code: int = GO_AWAY_NORMAL) -> None:
        """Queue a Go Away (once): no new streams from either side afterwards."""
        if self.local_go_away:
            return
        self.local_go_away = True
        self._queue(_pack_header(VERSION, TYPE_GO_AWAY, 0, 0, code))

    def terminate(self) -> None:
        """The connection is gone: refuse further input and local actions."""
        self.terminated = True

    # ----------------------------------------------------------------- bookkeeping

    def _remove(self, st: StreamRecord) -> None:
        if self._streams.pop(st.stream_id, None) is None:
            return
        self._total_recv_window -= st.recv_window
        if st.outbound:
            self._outbound_open -= 1
            if not st.acked:
                st.acked = True
                self._outbound_unacked -= 1
        else:
            self._inbound_open -= 1
            if st.need_ack:
                st.need_ack = False
                self._inbound_unacked -= 1

    def _protocol_error(self, message: str) -> ProtocolError:
        log.warning("yamux protocol error: %s", message)
        if not self.terminated:
            self.go_away(GO_AWAY_PROTOCOL_ERROR)
            self.terminated = True
        return ProtocolError(message)

    def _is_past_id(self, sid: int) -> bool:
        """Whether ``sid`` belongs to a stream that existed (now gone)."""
        if (sid & 1) == self._remote_parity:
            return sid <= self._highest_remote_id
        return sid < self._next_local_id

    # ----------------------------------------------------------------- input

    @property
    def unparsed(self) -> int:
        """Bytes received that :meth:`receive_data` left at its frame budget (see
        :meth:`receive_data`)."""
        return len(self._unparsed) - self._unparsed_pos

    def receive_data(self, data: Bytes, now: float, max_frames: int = 0) -> list[Event]:
        """Parse ``data`` (any slice of the byte stream) and return what happened.

        ``data`` may be a view of a buffer the caller reuses: every payload is handed out as a
        ``bytes`` of its own (a slice, or ``data`` itself when it is ``bytes`` and all payload).

        With ``max_frames``, parsing stops before the frame header after that many: the rest is
        kept (:attr:`unparsed`, a copy if ``data`` is a view) and parsed first by the next call
        (``data`` may be empty then).
        """
        if self.terminated:
            raise ConnectionClosed("yamux session is closed")
        events: list[Event] = []
        pos = 0
        if self._unparsed:
            pos = self._unparsed_pos
            data = self._unparsed[pos:] + bytes(data) if data else self._unparsed
            if data is not self._unparsed:
                pos = 0
            self._unparsed = b""
            self._unparsed_pos = 0
        n = len(data)
        frames = 0
        if self._partial:
            need = HEADER_SIZE - len(self._partial)
            if n < need:
                self._partial += data
                return events
            header = self._partial + data[:need]
            self._partial = b""
            pos = need
            self._handle_header(header, 0, events, now)
        while pos < n:
            left = self._data_left
            if left:
                take = n - pos
                if take > left:
                    take = left
                st = self._data_stream
                if st is not None:
                    if type(data) is bytes:
                        chunk = data if (pos == 0 and take == n) else data[pos : pos + take]
                        events.append(DataReceived(st.stream_id, chunk))
                    else:
                        # copied out of a reused buffer in pieces the allocator serves from
                        # its heap (a bigger ``bytes`` would be mapped and faulted in afresh)
                        end = pos + take
                        for start in range(pos, end, _MAX_COPY):
                            piece = bytes(data[start : min(start + _MAX_COPY, end)])
                            events.append(DataReceived(st.stream_id, piece))
                pos += take
                left -= take
                self._data_left = left
                if left == 0:
                    self._end_data_frame(events)
                continue
            if n - pos < HEADER_SIZE:
                self._partial = bytes(data[pos:])
                break
            if max_frames:
                if frames == max_frames:
                    if type(data) is bytes:
                        self._unparsed, self._unparsed_pos = data, pos
                    else:  # a view of a buffer the caller reuses: keep a copy
                        self._unparsed, self._unparsed_pos = bytes(data[pos:]), 0
                    break
                frames += 1
            self._handle_header(data, pos, events, now)
            pos += HEADER_SIZE
        return events

    def _end_data_frame(self, events: list[Event]) -> None:
        st = self._data_stream
        self._data_stream = None
        if st is not None and self._data_fin:
            self._remote_fin(st, events)
        self._data_fin = False

    def _remote_fin(self, st: StreamRecord, events: list[Event]) -> None:
        if not st.advance(StreamInput.REMOTE_FIN):
            return
        events.append(StreamEnded(st.stream_id))
        if st.state in _GONE:
            self._remove(st)

    def _handle_header(self, buf: Bytes, pos: int, events: list[Event], now: float) -> None:
        version, ftype, flags, sid, length = _unpack_header(buf, pos)
        if version != VERSION:
            raise self._protocol_error(f"unsupported yamux version {version}")
        if ftype == TYPE_DATA or ftype == TYPE_WINDOW_UPDATE:
            self._handle_stream_frame(ftype, flags, sid, length, events, now)
        elif ftype == TYPE_PING:
            if flags & FLAG_SYN:
                self._queue_reply(_pack_header(VERSION, TYPE_PING, FLAG_ACK, 0, length))
            elif flags & FLAG_ACK:
                sent = self._pings.pop(length, None)
                if length == self._keepalive_ping:
                    self._keepalive_ping = None
                if sent is not None:
                    rtt = max(now - sent, 0.0)
                    self.rtt = rtt
                    events.append(PongReceived(length, rtt))
        elif ftype == TYPE_GO_AWAY:
            if self.remote_go_away is None:
                self.remote_go_away = length
                events.append(GoAwayReceived(length))
        else:
            raise self._protocol_error(f"unknown frame type {ftype}")

    def _handle_stream_frame(
        self, ftype: int, flags: int, sid: int, length: int, events: list[Event], now: float
    ) -> None:
        is_data = ftype == TYPE_DATA
        if sid == 0:
            raise self._protocol_error("data or window update on stream 0")
        if flags & FLAG_SYN:
            st = self._remote_syn(sid, events, now)
        else:
            st = self._streams.get(sid)
            if st is None and not self._is_past_id(sid):
                raise self._protocol_error(f"frame for stream {sid} that was never opened")
        if st is None:
            # a stream that is gone (closed, reset or refused): skip its frames
            if is_data:
                self._begin_data(None, length, False)
            return
        if flags & FLAG_ACK and not st.acked:
            st.acked = True
            self._outbound_unacked -= 1
            events.append(StreamAcked(sid))
        if flags & FLAG_RST:
            st.advance(StreamInput.RESET)
            self._remove(st)
            events.append(StreamResetByRemote(sid))
            if is_data:
                self._begin_data(None, length, False)
            return
        fin = bool(flags & FLAG_FIN)
        if is_data:
            if length > st.recv_credit:
                raise self._protocol_error(
                    f"stream {sid}: {length} bytes of data exceed the receive window "
                    f"({st.recv_credit} left)"
                )
            if st.remote_closed:
                # data after FIN: refuse the stream, not the connection
                log.debug("stream %d: data after FIN, resetting", sid)
                self.reset_stream(sid)
                events.append(StreamResetByRemote(sid))
                self._begin_data(None, length, False)
                return
            st.recv_credit -= length
            st.buffered += length
            if length:
                self._begin_data(st, length, fin)
                return
        else:
            if length:
                window = st.send_window + length
                if window > MAX_U32:
                    raise self._protocol_error(f"stream {sid}: send window overflow")
                st.send_window = window
                events.append(SendWindowUpdated(sid))
        if fin:
            self._remote_fin(st, events)

    def _begin_data(self, st: StreamRecord | None, length: int, fin: bool) -> None:
        self._data_left = length
        self._data_stream = st
        self._data_fin = fin

    def _remote_syn(self, sid: int, events: list[Event], now: float) -> StreamRecord | None:
        if (sid & 1) != self._remote_parity:
            raise self._protocol_error(f"SYN with stream id {sid} of the wrong parity")
        if sid <= self._highest_remote_id:
            raise self._protocol_error(f"SYN reuses stream id {sid}")
        self._highest_remote_id = sid
        cfg = self.config
        reason = None
        if self.local_go_away:
            reason = "going away"
        elif self._inbound_open >= cfg.max_streams:
            reason = f"max_streams={cfg.max_streams} inbound streams open"
        elif self._inbound_unacked >= cfg.max_unacked_inbound:
            reason = f"max_unacked_inbound={cfg.max_unacked_inbound} streams not yet accepted"
        if reason is not None:
            log.debug("refusing inbound stream %d: %s", sid, reason)
            self._queue_reply(_pack_header(VERSION, TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0))
            return None
        st = StreamRecord(sid, False, cfg.initial_window, now)
        self._streams[sid] = st
        self._inbound_open += 1
        self._inbound_unacked += 1
        self._total_recv_window += st.recv_window
        events.append(StreamOpened(sid, st))
        return st


__all__ = [
    "DEFAULT_WINDOW",
    "FLAG_ACK",
    "FLAG_FIN",
    "FLAG_RST",
    "FLAG_SYN",
    "GO_AWAY_INTERNAL_ERROR",
    "GO_AWAY_NORMAL",
    "GO_AWAY_PROTOCOL_ERROR",
    "HEADER",
    "HEADER_SIZE",
    "PROTOCOL_ID",
    "STREAM_TRANSITIONS",
    "TYPE_DATA",
    "TYPE_GO_AWAY",
    "TYPE_PING",
    "TYPE_WINDOW_UPDATE",
    "DataReceived",
    "Event",
    "GoAwayReceived",
    "KeepaliveTimedOut",
    "PongReceived",
    "SendWindowUpdated",
    "StreamAcked",
    "StreamEnded",
    "StreamInput",
    "StreamOpened",
    "StreamRecord",
    "StreamResetByRemote",
    "StreamState",
    "YamuxConfig",
    "YamuxSession",
    "encode_header",
]
