"""The kad server's side of one inbound stream, without a task: requests answered as they arrive.

A :class:`KadInboundStream` is the stream's consumer (:meth:`p2pnet.stream.Stream.set_consumer`):
the connection pushes the stream's bytes into it, complete length-prefixed requests go to the
behaviour, and the answers go out with ``write_nowait`` from the same call. A request that
arrives with its negotiation (lazy multistream on the requester's side) is answered from the
``data_received`` that brought it.

The bounds of the task-based server it replaces:

* a request must complete within ``inbound_idle_timeout`` of the previous one (or of the
  stream's start): one deadline per stream in the DHT's
  :class:`~p2pnet.deadlines.DeadlineQueue`, renewed per chunk that completes a request;
* a request of more than ``max_message_size`` bytes, a malformed length prefix, an
  undecodable or invalid request resets the stream; the bytes of a request being assembled
  count against the stream's resource scope;
* at most ``REQUESTS_PER_TURN`` requests per turn of the event loop (a peer that queued
  thousands in one chunk does not hold the loop): reading is paused until the next turn;
* an answer that cannot be queued at once (send window, the connection's high-water mark)
  is written by a task of the connection, reading paused meanwhile;
* a stream that ends inside a request is reset; at the remote's FIN we close our side.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from p2pnet.deadlines import Deadline
from p2pnet.errors import P2PError, ProtocolError, ResourceLimitExceeded
from p2pnet.kad import messages as m
from p2pnet.kad.config import Mode
from p2pnet.kad.errors import KadError
from p2pnet.resources.manager import stream_scope_of
from p2pnet.wire.framing import FrameDecoder, encode_length_prefixed

if TYPE_CHECKING:
    from p2pnet.kad.dht import KadDHT
    from p2pnet.stream import Stream

__all__ = ["REQUESTS_PER_TURN", "KadInboundStream"]

log = logging.getLogger("p2pnet.kad")

#: Requests of one inbound stream served before the stream yields to the event loop.
REQUESTS_PER_TURN = 16


class KadInboundStream:
    """One inbound kad stream in push mode (a :class:`~p2pnet.stream.StreamConsumer`)."""

    __slots__ = ("_deadline", "_decoder", "_dht", "_ended", "_held", "_peer", "_scope", "_stream")

    def __init__(self, dht: KadDHT, stream: Stream) -> None:
        self._dht = dht
        self._stream = stream
        self._peer = stream.conn.remote_peer
        self._decoder = FrameDecoder(dht.config.max_message_size)
        self._scope = stream_scope_of(stream)
        #: bytes of the request under assembly reserved in ``_scope``
        self._held = 0
        self._deadline: Deadline | None = None
        self._ended = False

    def start(self) -> None:
        self._deadline = self._dht._idle_deadlines.add(self._timed_out)
        self._stream.set_consumer(self)

    # -- StreamConsumer ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        self._decoder.feed(data)
        self._serve()

    def eof_received(self) -> None:
        if self._ended:
            return
        if self._decoder.buffered:
            self._fail(None, "the stream ended inside a request")
            return
        self._end()
        try:
            self._stream.close_nowait()
        except P2PError as exc:  # reset meanwhile
            log.debug("closing a kad stream of %s: %s", self._peer, exc)

    def stream_lost(self, exc: P2PError) -> None:
        self._end()

    # -- serving ----------------------------------------------------------------------------

    def _serve(self) -> bool:
        """Answer the complete requests buffered (at most ``REQUESTS_PER_TURN``); True if
        reading stays paused (an answer waits for a task, or the next turn serves more)."""
        dht = self._dht
        behaviour = dht.behaviour
        stream = self._stream
        decoder = self._decoder
        served = 0
        while True:
            try:
                frame = decoder.next_frame()
            except ProtocolError as exc:  # oversized, malformed prefix
                self._fail("bad requests", str(exc))
                return False
            if frame is None:
                break
            if behaviour.mode is not Mode.SERVER or dht._lifecycle.closed:
                self._fail(None, "not serving")
                return False
            try:
                resp = behaviour.handle_request(self._peer, m.decode(frame), dht._wall())
            except (KadError, ProtocolError) as exc:
                self._fail("bad requests", str(exc))
                return False
            finally:
                dht._notify()
            served += 1
            if resp is not None:
                answer = encode_length_prefixed(m.encode(resp))
                if not stream.write_nowait(answer):
                    # the answer must wait for window or for the connection: a task writes it
                    stream.pause_reading()
                    dht.host.spawn_stream_task(stream, self._write_in_task, answer)
                    self._renew()
                    return True
            if served >= REQUESTS_PER_TURN and decoder.buffered:
                stream.pause_reading()
                asyncio.get_running_loop().call_soon(self._next_turn)
                self._renew()
                return True
        if served:
            self._renew()
        self._account()
        return False

    def _next_turn(self) -> None:
        if self._ended:
            return
        if not self._serve() and not self._ended:
            self._stream.resume_reading()

    async def _write_in_task(self, stream: Stream, answer: bytes) -> None:
        try:
            await stream.write(answer)
        except P2PError as exc:
            log.debug("kad answer to %s not sent: %s", self._peer, exc)
            self._end()
            return
        if not self._ended:
            self._next_turn()

    def _account(self) -> None:
        """Hold the bytes of the request under assembly in the stream's scope."""
        buffered = self._decoder.buffered
        scope = self._scope
        if buffered == self._held or scope is None:
            return
        try:
            if buffered > self._held:
                scope.reserve_memory(buffered - self._held)
            else:
                scope.release_memory(self._held - buffered)
        except ResourceLimitExceeded as exc:
            self._fail(None, str(exc))
            return
        self._held = buffered

    def _renew(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._dht._idle_deadlines.add(self._timed_out)

    def _timed_out(self) -> None:
        self._deadline = None
        if self._ended:
            return
        dht = self._dht
        log.debug(
            "kad stream from %s idle for %.0f s: reset", self._peer, dht.config.inbound_idle_timeout
        )
        dht.behaviour.count("idle inbound streams reset")
        self._end()
        self._stream.set_consumer(None)
        self._stream.reset_nowait()
        dht._notify()

    def _fail(self, counter: str | None, why: str) -> None:
        """Reset the stream (``counter``: a bad request, counted and logged)."""
        dht = self._dht
        if counter is not None:
            dht.behaviour.count(counter)
            log.info("bad kad request from %s: %s", self._peer, why)
        else:
            log.debug("kad stream of %s: %s; reset", self._peer, why)
        self._end()
        self._stream.set_consumer(None)
        self._stream.reset_nowait()
        dht._notify()

    def _end(self) -> None:
        """Stop: give back what is held, drop the deadline. Idempotent."""
        self._ended = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._held and self._scope is not None:
            self._scope.release_memory(self._held)
            self._held = 0
