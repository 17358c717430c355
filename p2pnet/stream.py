"""The interfaces services see: a :class:`Stream`, the connection it belongs to, and muxers.

Every service (identify, ping, kad, gossipsub, agent messaging) and the ``Node`` facade speak to
streams only through :class:`Stream`; no code outside ``mux/`` names a concrete muxer. A
:class:`StreamMuxer` is negotiated by multistream-select after security, exactly like a
:class:`~p2pnet.security.base.SecurityTransport`, and produces a :class:`MuxedConnection`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from multiaddr import Multiaddr

from p2pnet.clock import Clock
from p2pnet.errors import P2PError
from p2pnet.io import Bytes, ReadWriter
from p2pnet.peer.peer_id import PeerID

if TYPE_CHECKING:
    from p2pnet.resources.manager import ConnectionScope


class Direction(enum.Enum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


@runtime_checkable
class ConnectionInfo(Protocol):
    """What was negotiated for one connection and who is on the other end."""

    @property
    def local_peer(self) -> PeerID: ...

    @property
    def remote_peer(self) -> PeerID: ...

    @property
    def direction(self) -> Direction: ...

    @property
    def local_addr(self) -> Multiaddr: ...

    @property
    def remote_addr(self) -> Multiaddr: ...

    @property
    def security(self) -> str:
        """The security protocol id (``/noise``, ``/plaintext/2.0.0``)."""
        ...

    @property
    def muxer(self) -> str:
        """The stream muxer protocol id (``/yamux/1.0.0``)."""
        ...

    @property
    def opened_at(self) -> float:
        """When the upgrade finished, on the node's monotonic clock."""
        ...

    @property
    def is_closed(self) -> bool: ...


class StreamConsumer(Protocol):
    """Takes a stream's bytes as they arrive, instead of a task calling ``read``.

    Installed with :meth:`Stream.set_consumer` (*push mode*). The muxer calls it synchronously
    from the connection's ``data_received`` (no task is woken per chunk), never re-entrantly.
    A consumer that cannot keep up calls :meth:`Stream.pause_reading`: the bytes then wait in
    the stream's buffer, counted against its resource scope, and the remote runs out of send
    window (flow control does the rest). An exception raised by a method here resets the stream.
    """

    def data_received(self, data: bytes) -> None:
        """The next bytes of the stream, in order (never empty)."""
        ...

    def eof_received(self) -> None:
        """The remote half-closed the stream after every byte was delivered. The consumer is
        detached (called once, and nothing after)."""
        ...

    def stream_lost(self, exc: P2PError) -> None:
        """The stream was reset (either side) or its connection is gone; bytes not delivered
        yet are dropped. The consumer is detached (called once, and nothing after)."""
        ...


@runtime_checkable
class Stream(ReadWriter, Protocol):
    """One multiplexed, bidirectional byte stream.

    ``read`` returns ``b""`` after the remote's half-close; ``close`` half-closes our side (we can
    still read); ``reset`` aborts both directions. ``protocol`` is the application protocol agreed
    by multistream-select, ``conn`` the connection the stream runs on.
    """

    protocol: str | None

    @property
    def conn(self) -> ConnectionInfo: ...

    @property
    def direction(self) -> Direction:
        """OUTBOUND if we opened the stream, INBOUND if the remote did."""
        ...

    @property
    def local_closed(self) -> bool:
        """We half-closed the stream (or it is reset or its connection is gone)."""
        ...

    @property
    def remote_closed(self) -> bool:
        """The remote half-closed the stream (or it is reset or its connection is gone)."""
        ...

    def write_nowait(self, data: Bytes) -> bool:
        """Queue all of ``data`` at once if that needs no waiting (flow control allows it and no
        other write is in progress) and return True; else queue nothing and return False (then
        ``await write(data)``). Raises like ``write`` on a closed or reset stream."""
        ...

    def set_consumer(self, consumer: StreamConsumer | None) -> None:
        """Push mode: hand the bytes not read yet, then each chunk as it arrives, to
        ``consumer`` (synchronously, in order); ``read`` must not be used meanwhile. ``None``
        goes back to pull mode (unconsumed bytes are then returned by ``read``). Raises like
        ``read`` on a reset stream or a closed connection. A remote FIN already received is
        reported to ``consumer`` soon after, not from within this call."""
        ...

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of what ``read`` (or the next consumer) gets: bytes a
        push consumer took and did not use (what followed a negotiation). Not while a
        consumer is installed."""
        ...

    def pause_reading(self) -> None:
        """Push mode: stop delivering until :meth:`resume_reading` (bytes wait in the stream's
        buffer; the remote's send window is no longer replenished). Idempotent."""
        ...

    def resume_reading(self) -> None:
        """Deliver what waited, then resume delivering as bytes arrive. Idempotent."""
        ...

    async def reset(self) -> None: ...

    def close_nowait(self) -> None:
        """What ``close`` does, from synchronous code (it never waits)."""
        ...

    def reset_nowait(self) -> None:
        """What ``reset`` does, from synchronous code (it never waits)."""
        ...

    async def __aenter__(self) -> Stream: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


StreamCallback = Callable[[Stream], Awaitable[None]]
#: Takes an inbound stream synchronously as the muxer accepts it (no task): it installs a
#: consumer, or asks for a task with :meth:`MuxedConnection.spawn_handler`.
StreamAcceptor = Callable[[Stream], None]


class MuxedConnection(Protocol):
    """A secured connection carrying many streams.

    Inbound streams go to the ``on_stream`` callback given to :meth:`StreamMuxer.create`; each
    stream's :attr:`Stream.conn` is the :class:`ConnectionInfo` given there.
    """

    @property
    def is_closed(self) -> bool: ...

    @property
    def num_streams(self) -> int:
        """Streams open now (either direction)."""
        ...

    @property
    def streams(self) -> Sequence[Stream]:
        """The streams open now."""
        ...

    @property
    def bytes_received(self) -> int:
        """Bytes read from the secured channel (muxer framing included)."""
        ...

    @property
    def bytes_sent(self) -> int:
        """Bytes written to the secured channel (muxer framing included)."""
        ...

    async def start(self) -> None: ...

    async def open_stream(self) -> Stream: ...

    def open_stream_nowait(self) -> Stream | None:
        """``open_stream`` when that needs no waiting (else None)."""
        ...

    def spawn_handler(self, stream: Stream, handler: StreamCallback) -> None:
        """Run ``handler(stream)`` (an inbound stream of this connection) in a task the
        connection owns: cancelled when it closes; an exception resets the stream."""
        ...

    async def close(self) -> None: ...

    async def wait_closed(self) -> None: ...

    def add_close_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the connection is fully closed (what :meth:`wait_closed`
        waits for), from the event loop: soon after, never from inside this call."""
        ...


class StreamMuxer(Protocol):
    """A muxer negotiated by multistream-select (``/yamux/1.0.0``)."""

    protocol_id: str

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
    ) -> MuxedConnection:
        """Multiplex ``secure``; ``info`` is what every stream reports as its ``conn``.

        Inbound streams go to ``accept`` when given (synchronously, from the data that opened
        them: no task per stream unless it asks for one), else each to ``on_stream`` in a
        task of its own.

        ``scope`` is the connection's resource scope: the muxer opens a stream scope for every
        stream (refusing inbound ones it does not grant with a reset, before any task runs for
        them), counts received bytes it buffers against it, and gives everything back when a
        stream ends. A stream exposes its scope as ``stream.scope``.
        """
        ...


__all__ = [
    "Bytes",
    "ConnectionInfo",
    "Direction",
    "MuxedConnection",
    "Stream",
    "StreamAcceptor",
    "StreamCallback",
    "StreamConsumer",
    "StreamMuxer",
]
