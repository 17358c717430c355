"""The asyncio side of libp2p Noise: run the handshake over a connection, then encrypt/decrypt.

:func:`noise_handshake` drives the sans-IO :class:`~p2pnet.security.noise.NoiseHandshake` over
any :class:`~p2pnet.io.ReadWriter` and returns a :class:`NoiseConnection`, itself a ReadWriter
that carries plaintext (what muxer negotiation reads and writes). :meth:`NoiseConnection.attach`
then turns it into a push :class:`~p2pnet.channel.Channel` (:class:`NoiseChannel`): each chunk
the connection below pushes is decrypted at once and its plaintext pushed up; writes are
encrypted and handed down in the same call. All protocol logic lives in
:mod:`p2pnet.security.noise`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections import deque
from collections.abc import Sequence
from typing import cast

from p2pnet.channel import Channel, ChannelReceiver, LostSignal, ViewReceiver, accepts_views
from p2pnet.channel import attach as attach_channel
from p2pnet.crypto.keys import KeyPair, PublicKey
from p2pnet.errors import (
    ConnectionClosed,
    HandshakeError,
    IncompleteRead,
    P2PError,
    ProtocolError,
)
from p2pnet.io import Bytes, ChunkReader, ReadWriter
from p2pnet.peer.peer_id import PeerID
from p2pnet.security.noise import (
    MAX_PLAINTEXT,
    PROTOCOL_ID,
    TAG_LEN,
    NoiseHandshake,
    NoiseTransport,
)

__all__ = ["PROTOCOL_ID", "NoiseChannel", "NoiseConnection", "NoiseSecurity", "noise_handshake"]

log = logging.getLogger("p2pnet.noise")

#: How long closing the underlying connection may take after a failure.
CLOSE_TIMEOUT = 2.0
#: Decrypted frames smaller than this are joined with their successors into one chunk.
_SMALL_FRAME = 16 * 1024
#: Writes that encrypt to at least this many bytes go through the thread's reusable output
#: buffer (smaller buffers come cheaply from Python's allocator)...
_SCRATCH_FROM = 32 * 1024
#: ... and up to this many (a yamux flush is at most its write high-water mark and a frame).
_SCRATCH_MAX = 4 << 20
#: Whether ``sys.getrefcount`` can tell that nothing else holds the output buffer any more.
_CAN_REUSE = sys.implementation.name == "cpython"
#: Bytes a frame adds to its plaintext: the length prefix and the tag.
_FRAME_EXTRA = 2 + TAG_LEN


class _Scratch(threading.local):
    """The buffers the channels of one thread (one event loop) encrypt and decrypt bulk into.

    A fresh megabyte-sized buffer per write costs more than its encryption (zeroing it and the
    page faults of memory the allocator gave back to the kernel between writes), and a fresh
    ``bytes`` per received frame makes every layer above pay its per-chunk cost per 64 KiB. A
    buffer is reused only when nothing else references it: for ``out``, once the connection
    below has sent or copied the bytes (asyncio's selector transport on Python 3.11 does; a
    transport that keeps a view of what it could not send yet, as on Python 3.12, makes the
    next write take a new buffer); for ``plain``, once the receiver above copied what it keeps.
    """

    out: bytearray | None = None
    plain: bytearray | None = None


_scratch = _Scratch()


def _free_buffer(slot: str, size: int) -> bytearray | None:
    """The thread's ``slot`` buffer, at least ``size`` bytes and held by nobody else, or None
    for a small or a huge size."""
    if size < _SCRATCH_FROM or size > _SCRATCH_MAX or not _CAN_REUSE:
        return None
    buf: bytearray | None = getattr(_scratch, slot)
    # three references when free: the thread-local slot, ``buf`` and getrefcount's argument
    if buf is None or len(buf) < size or sys.getrefcount(buf) > 3:
        buf = bytearray(size)
        setattr(_scratch, slot, buf)
    return buf


async def _close_quietly(conn: ReadWriter) -> None:
    """Close ``conn`` after a failure, bounded in time, swallowing errors of the close itself."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await conn.close()
    except (TimeoutError, OSError, P2PError):
        abort = getattr(conn, "abort", None)
        if callable(abort):
            abort()


class NoiseConnection(ChunkReader):
    """A Noise-secured connection: plaintext :class:`~p2pnet.io.ReadWriter` over ``raw``.

    ``write`` splits data into frames of at most 65519 plaintext bytes, encrypts them all and
    hands them to ``raw`` in one write; writes are serialised so concurrent writers never
    interleave frames or reorder nonces. Reads pull large raw chunks and yield the plaintext of
    whole frames. A frame that fails authentication raises :class:`ProtocolError` and closes the
    connection; EOF in the middle of a frame raises :class:`IncompleteRead`.
    """

    def __init__(
        self,
        raw: ReadWriter,
        transport: NoiseTransport,
        *,
        local_peer: PeerID,
        remote_peer: PeerID,
        remote_public_key: PublicKey,
        remote_stream_muxers: Sequence[str] = (),
        early_data: bytes = b"",
    ) -> None:
        super().__init__()
        self.raw = raw
        self.local_peer = local_peer
        self.remote_peer = remote_peer
        self.remote_public_key = remote_public_key
        self.remote_stream_muxers = list(remote_stream_muxers)
        self._transport = transport
        self._early = early_data
        self._frames: deque[bytes] = deque()
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._error: P2PError | None = None

    # -- reading ------------------------------------------------------------------------------

    def _next_frame(self) -> bytes:
        frames = self._frames
        first = frames.popleft()
        if len(first) >= _SMALL_FRAME or not frames or len(frames[0]) >= _SMALL_FRAME:
            return first
        parts = [first]
        size = len(first)
        while frames and size < _SMALL_FRAME and len(frames[0]) < _SMALL_FRAME:
            nxt = frames.popleft()
            parts.append(nxt)
            size += len(nxt)
        return b"".join(parts)

    async def _fail(self, exc: P2PError) -> P2PError:
        self._error = exc
        if not self._closed:
            self._closed = True
            await _close_quietly(self.raw)
        return exc

    def _decrypt(self, raw: Bytes) -> ProtocolError | None:
        try:
            frames = self._transport.decrypt(raw)
        except ProtocolError as exc:
            log.debug("noise connection to %s: %s", self.remote_peer, exc)
            return exc
        self._frames.extend(f for f in frames if f)
        return None

    async def _read_chunk(self) -> bytes:
        while True:
            if self._frames:
                return self._next_frame()
            if self._error is not None:
                raise self._error
            if self._early:
                early, self._early = self._early, b""
                err = self._decrypt(early)
                if err is not None:
                    raise await self._fail(err)
                continue
            if self._closed:
                return b""
            try:
                raw = await self.raw.read(-1)
            except ConnectionClosed as exc:
                if self._closed:
                    return b""
                raise await self._fail(exc) from None
            if not raw:
                transport = self._transport
                if transport.buffered:
                    partial = transport.partial
                    expected = transport.partial_frame_length or 2
                    log.debug("noise connection to %s: EOF inside a frame", self.remote_peer)
                    raise await self._fail(IncompleteRead(partial, expected))
                return b""
            err = self._decrypt(raw)
            if err is not None:
                raise await self._fail(err)

    # -- writing ------------------------------------------------------------------------------

    async def write(self, data: Bytes) -> None:
        if self._closed:
            raise ConnectionClosed("write on a closed noise connection")
        if not data:
            return
        async with self._write_lock:
            if self._closed:
                raise ConnectionClosed("write on a closed noise connection")
            out = self._transport.encrypt(data)
            await self.raw.write(out)

    # -- push mode ----------------------------------------------------------------------------

    def attach(self, receiver: ChannelReceiver) -> NoiseChannel:
        """Push the plaintext not read yet, then the plaintext of every frame received, to
        ``receiver``; write through the returned channel."""
        if self._closed:
            raise ConnectionClosed("attach to a closed noise connection")
        channel = NoiseChannel(self, receiver)
        leftover: list[bytes] = []
        if self._pending_pos < len(self._pending):
            leftover.append(self._take_pending(-1))
        leftover.extend(self._frames)
        self._frames.clear()
        if leftover:
            receiver.data_received(b"".join(leftover))
        early, self._early = self._early, b""
        if early:
            channel.data_received(early)
        if self._error is not None:
            channel.connection_lost(self._error)
            return channel
        channel.lower = attach_channel(self.raw, channel)
        return channel

    # -- closing ------------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.raw.close()

    def abort(self) -> None:
        """Drop the underlying connection at once if it supports that, else just mark closed."""
        self._closed = True
        abort = getattr(self.raw, "abort", None)
        if callable(abort):
            abort()

    def __repr__(self) -> str:
        return f"<NoiseConnection {self.local_peer} <-> {self.remote_peer}>"


class NoiseChannel:
    """An attached :class:`NoiseConnection`: the receiver of the channel below, and the
    :class:`~p2pnet.channel.Channel` of the plaintext for the layer above.

    A frame that fails authentication (or EOF inside a frame) ends the connection: the channel
    below is aborted and the receiver gets ``connection_lost`` with the
    :class:`~p2pnet.errors.ProtocolError` (:class:`~p2pnet.errors.IncompleteRead`).
    """

    __slots__ = ("_conn", "_lost", "_receiver", "_transport", "_views", "lower")

    #: ``data_received`` may be given a view of a buffer the channel below reuses after the call
    #: (TCP's receive buffer): every frame is decrypted (or a partial one copied) at once.
    accepts_views = True

    def __init__(self, conn: NoiseConnection, receiver: ChannelReceiver) -> None:
        self._conn = conn
        self._transport = conn._transport
        self._receiver = receiver
        #: The receiver takes a view of all the plaintext of a chunk (yamux): decrypted into
        #: one reused buffer. Else each frame's plaintext is a ``bytes`` of its own.
        self._views = accepts_views(receiver)
        self._lost = LostSignal()
        #: The channel of the connection below (set once it is attached).
        self.lower: Channel | None = None

    # -- ChannelReceiver, for the channel below --------------------------------------------------

    def data_received(self, data: Bytes) -> None:
        if self._lost.lost:
            return
        receiver = self._receiver
        transport = self._transport
        if self._views:
            # all the frames' plaintext in one view, valid during the call: one call up
            try:
                scratch = _free_buffer("plain", transport.joined_size(len(data)))
                plain = transport.decrypt_joined(data, scratch)
            except ProtocolError as exc:
                log.debug("noise connection to %s: %s", self._conn.remote_peer, exc)
                self._fail(exc)
                return
            if plain:
                cast(ViewReceiver, receiver).data_received(plain)
            return
        try:
            frames = transport.decrypt(data)
        except ProtocolError as exc:
            log.debug("noise connection to %s: %s", self._conn.remote_peer, exc)
            self._fail(exc)
            return
        if len(frames) == 1:
            if frames[0]:
                receiver.data_received(frames[0])
            return
        # small frames are joined: the layer above pays its per-call cost once
        run: list[bytes] = []
        size = 0
        for frame in frames:
            if not frame:
                continue
            if len(frame) >= _SMALL_FRAME:
                if run:
                    receiver.data_received(run[0] if len(run) == 1 else b"".join(run))
                    run = []
                    size = 0
                receiver.data_received(frame)
            else:
                run.append(frame)
                size += len(frame)
                if size >= _SMALL_FRAME:
                    receiver.data_received(run[0] if len(run) == 1 else b"".join(run))
                    run = []
                    size = 0
            if self._lost.lost:
                return
        if run:
            receiver.data_received(run[0] if len(run) == 1 else b"".join(run))

    def connection_lost(self, exc: P2PError | None) -> None:
        transport = self._transport
        if exc is None and transport.buffered:
            log.debug("noise connection to %s: EOF inside a frame", self._conn.remote_peer)
            exc = IncompleteRead(transport.partial, transport.partial_frame_length or 2)
        self._conn._closed = True
        self._lost.fire(self._receiver, exc)

    def pause_writing(self) -> None:
        self._receiver.pause_writing()

    def resume_writing(self) -> None:
        self._receiver.resume_writing()

    def _fail(self, exc: P2PError) -> None:
        self._conn._error = exc
        self._conn._closed = True
        if self.lower is not None:
            self.lower.abort()
        self._lost.fire(self._receiver, exc)

    # -- Channel, for the layer above ------------------------------------------------------------

    def _below(self) -> Channel:
        lower = self.lower
        if lower is None or self._lost.lost:
            raise ConnectionClosed("write on a closed noise connection")
        return lower

    def write(self, data: Bytes) -> None:
        if data:
            self.writelines((data,))
        else:
            self._below()

    def writelines(self, chunks: Sequence[Bytes]) -> None:
        lower = self._below()
        size = 0
        for chunk in chunks:
            size += len(chunk)
        # the frames' prefixes and tags: at most one frame per piece and per MAX_PLAINTEXT bytes
        scratch = _free_buffer(
            "out", size + (len(chunks) + size // MAX_PLAINTEXT + 1) * _FRAME_EXTRA
        )
        out = self._transport.encrypt_many(chunks, scratch)
        if out:
            lower.write(out)

    def pause_reading(self) -> None:
        if self.lower is not None:
            self.lower.pause_reading()

    def resume_reading(self) -> None:
        if self.lower is not None:
            self.lower.resume_reading()

    def close(self) -> None:
        self._conn._closed = True
        if self.lower is not None:
            self.lower.close()
        else:
            self._lost.fire(self._receiver, None)

    def abort(self) -> None:
        self._conn._closed = True
        if self.lower is not None:
            self.lower.abort()
        else:
            self._lost.fire(self._receiver, None)

    async def wait_closed(self) -> None:
        if self.lower is not None:
            await self.lower.wait_closed()
        await self._lost.wait()


async def noise_handshake(
    conn: ReadWriter,
    local_key: KeyPair,
    *,
    initiator: bool,
    expected_peer: PeerID | None = None,
    timeout: float | None = 10.0,
    stream_muxers: Sequence[str] = (),
) -> NoiseConnection:
    """Secure ``conn`` with libp2p Noise (XX) and return the plaintext connection.

    On any failure ``conn`` is closed and :class:`HandshakeError` is raised
    (:class:`PeerIDMismatch` if the remote is not ``expected_peer``); a handshake that does not
    finish within ``timeout`` seconds raises ``HandshakeError("noise handshake timed out")``.
    """
    hs = NoiseHandshake(
        local_key,
        initiator=initiator,
        expected_peer=expected_peer,
        stream_muxers=stream_muxers,
    )
    role = "initiator" if initiator else "responder"
    try:
        async with asyncio.timeout(timeout):
            while True:
                out = hs.data_to_send()
                if out:
                    await conn.write(out)
                if hs.complete:
                    break
                data = await conn.read(-1)
                if not data:
                    raise HandshakeError(
                        "connection closed during the noise handshake"
                        + (f" ({hs.buffered} bytes of a message pending)" if hs.buffered else "")
                    )
                hs.receive_data(data)
    except TimeoutError:
        log.debug("noise handshake (%s) timed out after %ss", role, timeout)
        await _close_quietly(conn)
        raise HandshakeError("noise handshake timed out") from None
    except HandshakeError as exc:
        log.debug("noise handshake (%s) failed: %s", role, exc)
        await _close_quietly(conn)
        raise
    except P2PError as exc:  # ConnectionClosed / IncompleteRead from the raw connection
        log.debug("noise handshake (%s) failed: %s", role, exc)
        await _close_quietly(conn)
        raise HandshakeError(f"noise handshake failed: {exc}") from exc
    except BaseException:
        await _close_quietly(conn)
        raise
    result = hs.result()
    local_peer = PeerID.from_public_key(local_key.public_key)
    log.debug("noise handshake (%s) done: %s <-> %s", role, local_peer, result.remote_peer)
    return NoiseConnection(
        conn,
        result.transport,
        local_peer=local_peer,
        remote_peer=result.remote_peer,
        remote_public_key=result.remote_public_key,
        remote_stream_muxers=result.remote_stream_muxers,
        early_data=result.leftover,
    )


class NoiseSecurity:
    """Noise as a :class:`~p2pnet.security.base.SecurityTransport` for the upgrader."""

    protocol_id = PROTOCOL_ID

    async def secure(
        self,
        conn: ReadWriter,
        key: KeyPair,
        *,
        initiator: bool,
        expected_peer: PeerID | None,
        timeout: float | None,
    ) -> NoiseConnection:
        return await noise_handshake(
            conn, key, initiator=initiator, expected_peer=expected_peer, timeout=timeout
        )
