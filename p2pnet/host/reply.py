"""The reply to a request on a stream we opened, fed from the stream's ``data_received``.

A request sent with its multistream proposal (lazy negotiation: identify's request on a new
connection, a kad request to a peer known to serve kad) gets the listener's header and echo
first, then one length-prefixed reply. :class:`ReplyReader` feeds the former to the sans-IO
:class:`~p2pnet.multistream.core.MultistreamDialer` (once agreed: the stream's protocol and its
resource scope's are set) and the rest to a frame decoder, as the bytes arrive; its owner (a
stream consumer: :class:`p2pnet.kad.answer.AnswerReader`, identify's request) decides what a
reply, an error or the end of the stream means for it.
"""

from __future__ import annotations

from p2pnet.multistream.core import MultistreamDialer
from p2pnet.resources.manager import stream_scope_of
from p2pnet.stream import Stream
from p2pnet.wire.framing import FrameDecoder

__all__ = ["ReplyReader"]


class ReplyReader:
    """The negotiation (if ``negotiation`` is given: its proposal went out with the request)
    and then one frame of at most ``max_size`` bytes on ``stream``."""

    __slots__ = ("_neg", "_stream", "decoder")

    def __init__(
        self, stream: Stream, max_size: int, negotiation: MultistreamDialer | None = None
    ) -> None:
        self._stream = stream
        self._neg = negotiation
        #: The frame decoder (what it holds, what it wants next).
        self.decoder = FrameDecoder(max_size)

    @property
    def negotiating(self) -> bool:
        return self._neg is not None

    def feed(self, data: bytes) -> bytes | None:
        """The reply once complete, else None (bytes past it stay in :attr:`decoder`).

        Raises what the negotiation raises (a refusal, a malformed answer) and what the frame
        decoder raises (:class:`~p2pnet.errors.MessageTooLargeError`, a malformed prefix)."""
        neg = self._neg
        if neg is not None:
            neg.receive_data(data)
            if not neg.finished:
                return None
            self._neg = None
            protocol = neg.protocols[0]
            stream = self._stream
            stream.protocol = protocol
            scope = stream_scope_of(stream)
            if scope is not None:
                scope.set_protocol(protocol)
            data = neg.take_unused()
            if not data:
                return None
        decoder = self.decoder
        decoder.feed(data)
        return decoder.next_frame()
