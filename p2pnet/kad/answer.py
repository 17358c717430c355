"""The answer to one kad request, read by the stream's consumer as it arrives (no read calls).

A requester that sent its request with the multistream proposal (lazy negotiation) first gets
the listener's header and echo, then the answer: :class:`AnswerReader` feeds them to a
:class:`~p2pnet.host.reply.ReplyReader` (the negotiation, then a frame decoder) from the
stream's ``data_received``, and resolves :attr:`AnswerReader.result` once. On a pooled stream
it reads the answer alone.

Outcomes are those of the pull-mode reads it replaces: the frame's bytes; or the negotiation's
error (refused, malformed), :class:`~p2pnet.errors.MessageTooLargeError` or a malformed prefix,
:class:`~p2pnet.errors.IncompleteRead` at an early end of the stream, the stream's reset or its
connection's loss. The request's timeout is the caller's. Bytes after the answer stay in the
stream (a pooled stream's next request sees them, as a pull-mode reader would). The bytes of an
answer being assembled count against the stream's resource scope.
"""

from __future__ import annotations

import asyncio

from p2pnet.errors import IncompleteRead, P2PError
from p2pnet.host.reply import ReplyReader
from p2pnet.multistream.core import MultistreamDialer
from p2pnet.resources.manager import stream_scope_of
from p2pnet.stream import Stream

__all__ = ["AnswerReader"]


class AnswerReader:
    """One answer on ``stream`` (a :class:`~p2pnet.stream.StreamConsumer`); ``negotiation``:
    the proposal went out with the request, its answer comes first."""

    __slots__ = ("_held", "_reader", "_scope", "_stream", "result")

    def __init__(
        self, stream: Stream, max_size: int, negotiation: MultistreamDialer | None = None
    ) -> None:
        self._stream = stream
        self._reader = ReplyReader(stream, max_size, negotiation)
        self._scope = stream_scope_of(stream)
        self._held = 0
        #: The answer's bytes, or the error that ended the exchange.
        self.result: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self.result.done():
            return
        reader = self._reader
        try:
            frame = reader.feed(data)
            if frame is None:
                if not reader.negotiating:
                    self._hold(reader.decoder.buffered)
                return
        except P2PError as exc:
            self._finish(exc)
            return
        self._finish(frame)

    def eof_received(self) -> None:
        # (what the pull-mode read raised at EOF; the bytes wanted are those of the next step)
        self._finish(IncompleteRead(b"", self._reader.decoder.wanted))

    def stream_lost(self, exc: P2PError) -> None:
        self._finish(exc)

    def _hold(self, buffered: int) -> None:
        scope = self._scope
        if scope is None or buffered == self._held:
            return
        if buffered > self._held:
            # (ResourceLimitExceeded, a P2PError: a peer over its budget fails the request)
            scope.reserve_memory(buffered - self._held)
        else:
            scope.release_memory(self._held - buffered)
        self._held = buffered

    def _finish(self, outcome: bytes | P2PError) -> None:
        """Detach (what came after the answer goes back to the stream) and resolve, once."""
        if self._held and self._scope is not None:
            self._scope.release_memory(self._held)
            self._held = 0
        stream = self._stream
        stream.set_consumer(None)
        if isinstance(outcome, bytes):
            decoder = self._reader.decoder
            rest = decoder.take_buffered() if decoder.buffered else b""
            if rest:
                stream.unread(rest)
        if self.result.done():  # (the waiting request was cancelled)
            return
        if isinstance(outcome, bytes):
            self.result.set_result(outcome)
        else:
            self.result.set_exception(outcome)
