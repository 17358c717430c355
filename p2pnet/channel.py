"""The push-driven byte pipe an upgraded connection runs on (in the style of asyncio protocols).

The upgrade (multistream, the security handshake, muxer negotiation) reads and writes with the
pull interface of :mod:`p2pnet.io`. Once it is done, the muxer :func:`attach` es itself to the
secured connection as a :class:`ChannelReceiver`: from then on the transport's ``data_received``
calls down the layers synchronously (TCP -> Noise decryption -> the muxer core -> a stream's
buffer), without a reader task, and the muxer writes with the non-blocking :class:`Channel`
methods, once per event-loop iteration. Flow control is the asyncio transport's: the channel
reports ``pause_writing``/``resume_writing`` up, the receiver may ``pause_reading`` it.

A connection that can do this natively has an ``attach`` method (TCP, the memory transport,
Noise, plaintext). :class:`PulledChannel` gives the same interface to any other
:class:`~p2pnet.io.ReadWriter` (a relayed connection is a stream of another connection) with one
reader task and a writer task while it has bytes to write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from p2pnet.errors import ConnectionClosed, P2PError
from p2pnet.io import Bytes, ReadWriter

log = logging.getLogger("p2pnet.channel")

#: How long closing a channel may take to flush before it is aborted.
CLOSE_TIMEOUT = 2.0


class ChannelReceiver(Protocol):
    """What a channel calls, always from the event loop and never re-entrantly.

    A receiver whose class sets ``accepts_views = True`` may be given a ``memoryview`` instead
    of ``bytes``: a view of a buffer the channel reuses for its next read, valid only during the
    call, so the receiver must copy (or decrypt) whatever it keeps. Others always get ``bytes``.
    """

    def data_received(self, data: bytes) -> None:
        """The next bytes of the connection (never empty)."""
        ...

    def connection_lost(self, exc: P2PError | None) -> None:
        """The connection ended: ``None`` for a clean end (EOF, or our own close). Called once."""
        ...

    def pause_writing(self) -> None:
        """The channel's write buffer is above its high-water mark: stop producing."""
        ...

    def resume_writing(self) -> None: ...


class ViewReceiver(ChannelReceiver, Protocol):
    """A :class:`ChannelReceiver` that takes views (its class sets ``accepts_views = True``)."""

    accepts_views: bool

    def data_received(self, data: Bytes) -> None:
        """The next bytes; a view valid only during this call: copy whatever is kept."""
        ...


def accepts_views(receiver: ChannelReceiver) -> bool:
    """Whether ``receiver`` may be given views of a buffer reused after the call."""
    return getattr(receiver, "accepts_views", False) is True


@runtime_checkable
class Channel(Protocol):
    """The sending side and the controls of an attached connection. Nothing here blocks."""

    def write(self, data: Bytes) -> None:
        """Queue ``data``; it is sent in order, whatever the flow-control state."""
        ...

    def writelines(self, chunks: Sequence[Bytes]) -> None:
        """Queue several buffers, in order (one system call where the transport can)."""
        ...

    def pause_reading(self) -> None:
        """Stop calling ``data_received`` until :meth:`resume_reading` (idempotent)."""
        ...

    def resume_reading(self) -> None: ...

    def close(self) -> None:
        """Flush what is queued, then close; abort after :data:`CLOSE_TIMEOUT`. Idempotent."""
        ...

    def abort(self) -> None:
        """Close at once, dropping what is queued."""
        ...

    async def wait_closed(self) -> None:
        """Until the receiver's ``connection_lost`` has been called."""
        ...


@runtime_checkable
class Attachable(Protocol):
    """A connection that can switch from pull reads to pushing into a receiver."""

    def attach(self, receiver: ChannelReceiver) -> Channel:
        """Hand every byte not read yet, then every byte that arrives, to ``receiver``.

        Bytes already received are delivered before this returns; the pull methods
        (``read``/``write``) must not be used afterwards.
        """
        ...


def attach(conn: ReadWriter, receiver: ChannelReceiver) -> Channel:
    """``conn.attach(receiver)``, or a :class:`PulledChannel` for a pull-only connection."""
    # (not ``isinstance(conn, Attachable)``: a runtime protocol check costs ~20 µs, per end)
    attach_to = getattr(conn, "attach", None)
    if callable(attach_to):
        channel: Channel = attach_to(receiver)
        return channel
    return PulledChannel(conn, receiver)


class LostSignal:
    """The ``connection_lost`` bookkeeping every channel needs: call once, let others wait."""

    __slots__ = ("_future", "lost")

    def __init__(self) -> None:
        self.lost = False
        self._future: asyncio.Future[None] | None = None

    def fire(self, receiver: ChannelReceiver, exc: P2PError | None) -> None:
        if self.lost:
            return
        self.lost = True
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        receiver.connection_lost(exc)

    async def wait(self) -> None:
        if self.lost:
            return
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._future)


class PulledChannel:
    """A :class:`Channel` over a pull-only :class:`~p2pnet.io.ReadWriter`.

    One task reads and pushes what it reads; a second runs only while written bytes wait, and
    reports ``pause_writing`` while more than :attr:`high_water` bytes do.
    """

    high_water = 1 << 20

    def __init__(self, conn: ReadWriter, receiver: ChannelReceiver) -> None:
        self._conn = conn
        self._receiver = receiver
        self._lost = LostSignal()
        self._out: list[bytes] = []
        self._out_size = 0
        self._write_paused = False
        self._closing = False
        self._readable = asyncio.Event()
        self._readable.set()
        loop = asyncio.get_running_loop()
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._reader = loop.create_task(self._read_loop(), name=f"channel-reader {conn!r}")

    async def _read_loop(self) -> None:
        conn = self._conn
        try:
            while True:
                if not self._readable.is_set():
                    await self._readable.wait()
                data = await conn.read(-1)
                if not data:
                    break
                if self._lost.lost:
                    return
                self._receiver.data_received(data)
        except asyncio.CancelledError:
            raise
        except P2PError as exc:
            self._lose(exc)
            return
        except OSError as exc:
            self._lose(ConnectionClosed(f"read failed: {exc!r}"))
            return
        self._lose(None)

    def _lose(self, exc: P2PError | None) -> None:
        if self._lost.lost:
            return
        self._lost.fire(self._receiver, exc)
        # The receiver may have called close() from connection_lost, which does nothing once the
        # channel is lost: the connection below must still be let go of, or (for a relayed
        # connection) its stream stays half open and the relay keeps the circuit.
        self._out.clear()
        self._out_size = 0
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        if self._reader is not asyncio.current_task():
            self._reader.cancel()  # (lost by a write: it may wait, paused, for a resume)
        if exc is None:
            # the remote ended cleanly: end our side the same way
            self._closer = asyncio.get_running_loop().create_task(self._close_conn())
        else:
            self._abort_conn()

    async def _close_conn(self) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._conn.close()
        except (TimeoutError, P2PError, OSError) as exc:
            log.debug("channel %r: close failed (%r), aborting", self._conn, exc)
            self._abort_conn()

    def _abort_conn(self) -> None:
        abort = getattr(self._conn, "abort", None)
        if callable(abort):
            abort()
        else:
            self._closer = asyncio.get_running_loop().create_task(self._conn.close())

    async def _write_loop(self) -> None:
        try:
            while self._out:
                out, self._out = self._out, []
                self._out_size = 0
                await self._conn.write(out[0] if len(out) == 1 else b"".join(out))
                if self._write_paused and self._out_size < self.high_water:
                    self._write_paused = False
                    self._receiver.resume_writing()
            if self._closing:
                await self._conn.close()
                self._reader.cancel()
                self._lost.fire(self._receiver, None)
        except asyncio.CancelledError:
            raise
        except (P2PError, OSError) as exc:
            self._lose(ConnectionClosed(f"write failed: {exc!r}"))
        finally:
            self._writer = None

    def _kick_writer(self) -> None:
        if self._writer is None and not self._lost.lost:
            self._writer = asyncio.get_running_loop().create_task(
                self._write_loop(), name=f"channel-writer {self._conn!r}"
            )

    def write(self, data: Bytes) -> None:
        if self._closing or self._lost.lost:
            raise ConnectionClosed("write on a closed channel")
        if not data:
            return
        self._out.append(bytes(data))
        self._out_size += len(data)
        if self._out_size >= self.high_water and not self._write_paused:
            self._write_paused = True
            self._receiver.pause_writing()
        self._kick_writer()

    def writelines(self, chunks: Sequence[Bytes]) -> None:
        self.write(b"".join(chunks))

    def pause_reading(self) -> None:
        self._readable.clear()

    def resume_reading(self) -> None:
        self._readable.set()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._lost.lost:
            return
        self._kick_writer()
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._close_timed_out)

    def _close_timed_out(self) -> None:
        if not self._lost.lost:
            log.debug("channel %r: close timed out, aborting", self._conn)
            self.abort()

    def abort(self) -> None:
        self._closing = True
        self._out.clear()
        self._out_size = 0
        self._reader.cancel()
        if self._writer is not None:
            self._writer.cancel()
        self._abort_conn()
        self._lost.fire(self._receiver, None)

    async def wait_closed(self) -> None:
        await self._lost.wait()
        for task in (self._reader, self._writer, self._closer):
            if task is not None and task is not asyncio.current_task():
                await asyncio.wait([task], timeout=CLOSE_TIMEOUT)


__all__ = [
    "CLOSE_TIMEOUT",
    "Attachable",
    "Channel",
    "ChannelReceiver",
    "LostSignal",
    "PulledChannel",
    "ViewReceiver",
    "accepts_views",
    "attach",
]
