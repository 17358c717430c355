"""Inbound streams without a task: the listener's negotiation and the drain after a handler,
driven by the bytes as they arrive (push consumers, :meth:`p2pnet.stream.Stream.set_consumer`).

The muxer hands every inbound stream to the host synchronously (``accept``). The host installs
an :class:`InboundNegotiation`, which feeds the sans-IO
:class:`~p2pnet.multistream.core.MultistreamListener` from the stream's ``data_received``. Once a
protocol is agreed, a push handler (``Host.set_stream_acceptor``: identify, kad) takes the
stream in the same call; an ordinary handler gets a task then, and only then. A kad request that
arrives with its proposal is therefore answered from the ``data_received`` that brought it.

Bounds are those of the task-based path: the negotiation must end within the host's
``negotiate_timeout`` (one :class:`~p2pnet.deadlines.DeadlineQueue` of the host, not a timer per
stream), a malformed or refused negotiation resets the stream (the last ``na`` goes out first),
at most ``MAX_NEGOTIATION_ATTEMPTS`` proposals. When a write would have to wait (a remote that
does not read, a connection backed up), the stream continues in a task with the ordinary
awaiting writes, under the same timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from p2pnet.deadlines import Deadline, DeadlineQueue
from p2pnet.errors import P2PError
from p2pnet.multistream.core import MultistreamListener, ProtocolAgreed, Supported
from p2pnet.multistream.negotiate import finish_negotiation
from p2pnet.stream import Stream

if TYPE_CHECKING:
    from p2pnet.host.host import Host

__all__ = ["Drain", "InboundNegotiation"]

log = logging.getLogger("p2pnet.host")


class InboundNegotiation:
    """Listener-side multistream negotiation of one inbound stream, as a stream consumer."""

    __slots__ = ("_deadline", "_host", "_neg", "_stream")

    def __init__(self, host: Host, stream: Stream, supported: Supported) -> None:
        self._host = host
        self._stream = stream
        self._neg = MultistreamListener(supported)
        self._deadline: Deadline | None = None

    def start(self, deadlines: DeadlineQueue) -> None:
        """Take the stream's bytes from now on. Our header goes out with our first answer
        (the core queued it): one frame less per stream. go-multistream's listener writes its
        header at once instead, but no dialer waits for it: go's, js's and rust's dialers send
        their header together with their first proposal (or ``ls``)."""
        # (the deadline first: bytes buffered already may end the negotiation in set_consumer)
        self._deadline = deadlines.add(self._timed_out)
        try:
            self._stream.set_consumer(self)
        except P2PError as exc:  # reset (or its connection gone) before we answered
            self._end()
            log.debug("inbound stream gone before its negotiation: %s", exc)

    # -- StreamConsumer ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        neg = self._neg
        stream = self._stream
        try:
            events = neg.receive_data(data)
        except P2PError as exc:
            self._end()
            # what the core queued before the failure (the last ``na``) still goes out
            stream.write_nowait(neg.data_to_send())
            log.debug("inbound stream negotiation failed: %s", exc)
            stream.reset_nowait()
            return
        out = neg.data_to_send()
        if out and not stream.write_nowait(out):
            self._end()
            self._host.spawn_stream_task(stream, self._negotiate_in_task, out)
            return
        if neg.finished:
            self._end()
            event = events[-1]
            assert isinstance(event, ProtocolAgreed)  # a listener only agrees or fails
            stream.unread(neg.take_unused())
            self._host._agreed(stream, event.protocol)

    def eof_received(self) -> None:
        self._end()
        log.debug("inbound stream negotiation failed: the remote closed its stream")
        self._stream.reset_nowait()

    def stream_lost(self, exc: P2PError) -> None:
        self._end()

    # -- the rest ---------------------------------------------------------------------------

    def _end(self) -> None:
        """Stop taking bytes and drop the deadline."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._stream.set_consumer(None)

    def _timed_out(self) -> None:
        self._deadline = None
        log.debug(
            "inbound stream negotiation timed out after %g s", self._host.config.negotiate_timeout
        )
        self._stream.set_consumer(None)
        self._stream.reset_nowait()

    async def _negotiate_in_task(self, stream: Stream, out: bytes) -> None:
        """A write had to wait: the rest of the negotiation runs here, with awaiting writes
        (bounded by the same timeout, from now)."""
        neg = self._neg
        try:
            async with asyncio.timeout(self._host.config.negotiate_timeout):
                await stream.write(out)
                if not neg.finished:
                    await finish_negotiation(stream, neg)
        except (P2PError, TimeoutError) as exc:
            log.debug("inbound stream negotiation failed: %s", exc)
            await stream.reset()
            return
        stream.unread(neg.take_unused())
        assert neg.agreed is not None  # finished without raising: agreed
        self._host._agreed(stream, neg.agreed)


class Drain:
    """After an inbound handler closed its side: the remote must close its side within
    ``drain_timeout``, sending at most ``drain_limit`` bytes meanwhile (dropped), or the stream
    is reset (so a remote cannot leave a window of bytes buffered per stream for as long as it
    likes). Push mode: no task waits for it."""

    __slots__ = ("_deadline", "_left", "_stream")

    def __init__(self, stream: Stream, limit: int) -> None:
        self._stream = stream
        self._left = limit
        self._deadline: Deadline | None = None

    def start(self, deadlines: DeadlineQueue) -> None:
        self._deadline = deadlines.add(self._timed_out)
        self._stream.set_consumer(self)

    def data_received(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left <= 0:
            self._give_up("sent too much after its handler")

    def eof_received(self) -> None:
        self._cancel()

    def stream_lost(self, exc: P2PError) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        self._give_up("not closed after its handler")

    def _give_up(self, why: str) -> None:
        self._cancel()
        stream = self._stream
        log.debug("%s stream of %s %s: reset", stream.protocol, stream.conn.remote_peer, why)
        stream.set_consumer(None)
        stream.reset_nowait()
