"""Unsigned-varint length-prefixed frames: the one implementation every layer uses.

``uvarint(len(body)) || body`` frames multistream-select messages (with a trailing newline in the
body), identify, kad, gossipsub RPCs, plaintext exchanges and agent messages.

:class:`FrameDecoder` is sans-IO: feed bytes, pop frames. It parses each prefix byte once, and
:attr:`FrameDecoder.wanted` says how many bytes the current frame still needs, never more, so an
adapter that reads exactly that many bytes never consumes a byte of whatever follows the frame
(the protocol agreed by multistream, the next message on a pooled stream). The async helpers
below are thin adapters over it.
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pnet.errors import MessageTooLargeError, ProtocolError
from p2pnet.io import Bytes, ReadWriter, deadline
from p2pnet.resources.manager import stream_scope_of
from p2pnet.wire.varint import MAX_VARINT_BYTES, encode_uvarint

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
#: Once a frame's first byte arrived, the whole frame must arrive within this many seconds (a
#: deadline for the frame, not for each read: a peer trickling a byte at a time cannot hold it).
DEFAULT_FRAME_TIMEOUT = 30.0
# Frames whose body is at least this long count against the stream's resource scope while they
# are assembled (smaller ones are covered by the muxer's buffer accounting).
_ACCOUNT_FRAMES_FROM = 4096

# Below this many consumed bytes the buffer is not compacted (avoids memmove per frame).
_COMPACT_AT = 64 * 1024


def encode_length_prefixed(data: Bytes) -> bytes:
    return encode_uvarint(len(data)) + bytes(data)


def length_prefixed_parts(frames: Iterable[Bytes]) -> list[Bytes]:
    """``[prefix, frame, prefix, frame, ...]`` for one vectored write of several frames."""
    parts: list[Bytes] = []
    for frame in frames:
        parts += (encode_uvarint(len(frame)), frame)
    return parts


class FrameDecoder:
    """Sans-IO decoder of length-prefixed frames.

    :meth:`feed` any slices of the byte stream; :meth:`next_frame` returns the next complete body
    or ``None``. A prefix announcing more than the limit raises :class:`MessageTooLargeError` as
    soon as its bytes prove it (before the body arrives); an over-long or non-minimal varint
    raises :class:`ProtocolError`. After an error the decoder must be discarded.
    """

    __slots__ = (
        "_buf",
        "_frame_start",
        "_length",
        "_pos",
        "_prefix_bytes",
        "_shift",
        "_value",
        "max_length",
    )

    def __init__(self, max_length: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_length < 0:
            raise ValueError("max_length must not be negative")
        self.max_length = max_length
        self._buf = bytearray()
        self._pos = 0  # bytes of _buf already parsed
        self._frame_start = 0  # where the current frame's prefix begins in _buf
        self._length: int | None = None  # body length once the prefix is complete
        self._value = 0
        self._shift = 0
        self._prefix_bytes = 0

    def feed(self, data: Bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned as part of a frame (0 between frames)."""
        return len(self._buf) - self._frame_start

    @property
    def wanted(self) -> int:
        """How many more bytes to read so as to make progress without reading past this frame.

        Inside the prefix that is one byte at a time (its length is unknown until its last byte);
        inside the body, the rest of the body.
        """
        if self._length is None:
            return 1
        return max(1, self._length - (len(self._buf) - self._pos))

    def take_buffered(self) -> bytes:
        """Remove and return the unparsed bytes (only valid between frames)."""
        if self._prefix_bytes or self._length is not None:
            raise RuntimeError("take_buffered inside a frame")
        data = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = self._frame_start = 0
        return data

    def next_frame(self, max_length: int | None = None) -> bytes | None:
        """The next complete body, or ``None`` if more bytes are needed.

        ``max_length`` overrides the decoder's limit for this frame (e.g. an ``ls`` answer).
        """
        limit = self.max_length if max_length is None else max_length
        buf = self._buf
        length = self._length
        if length is None:
            length = self._parse_prefix(limit)
            if length is None:
                return None
        start = self._pos
        end = start + length
        if end > len(buf):
            return None
        frame = bytes(buf[start:end])
        self._length = None
        if end == len(buf):
            buf.clear()
            end = 0
        elif end >= _COMPACT_AT:
            del buf[:end]
            end = 0
        self._pos = self._frame_start = end
        return frame

    def _parse_prefix(self, limit: int) -> int | None:
        buf = self._buf
        pos = self._pos
        end = len(buf)
        value = self._value
        shift = self._shift
        count = self._prefix_bytes
        while pos < end:
            byte = buf[pos]
            pos += 1
            count += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if byte == 0 and count > 1:
                    raise ProtocolError("non-minimal varint length prefix")
                self._pos = pos
                self._value = self._shift = self._prefix_bytes = 0
                if value > limit:
                    raise MessageTooLargeError(
                        f"message of {value} bytes exceeds the limit of {limit}"
                    )
                self._length = value
                return value
            shift += 7
            if count >= MAX_VARINT_BYTES:
                raise ProtocolError("varint length prefix longer than 9 bytes")
            # The last byte is at least 1, so the length is at least value + 2**shift.
            if value + (1 << shift) > limit:
                raise MessageTooLargeError(f"length prefix exceeds the limit of {limit} bytes")
        self._pos = pos
        self._value = value
        self._shift = shift
        self._prefix_bytes = count
        return None

    def split(self, data: Bytes) -> list[bytes]:
        """:meth:`feed` ``data``, then :meth:`frames`: every frame complete now.

        Between frames (nothing buffered) the frames are cut straight from ``data`` (one copy
        each, none into and out of the buffer); only an incomplete frame at its end, or a prefix
        the plain loop does not take (over the limit, non-minimal, longer than two bytes: the
        buffer's path raises for those as :meth:`next_frame` does), goes to the buffer.
        """
        if self._buf or type(data) is not bytes:
            self._buf += data
            return self.frames()
        out: list[bytes] = []
        pos, end, limit = 0, len(data), self.max_length
        while pos < end:
            first = data[pos]
            if first < 0x80:
                length, start = first, pos + 1
            elif pos + 1 < end and 0 < data[pos + 1] < 0x80:
                length, start = (first & 0x7F) | (data[pos + 1] << 7), pos + 2
            else:
                break
            stop = start + length
            if stop > end or length > limit:
                break
            out.append(data[start:stop])
            pos = stop
        if pos < end:
            self._buf += memoryview(data)[pos:]
            out += self.frames()
        return out

    def frames(self) -> list[bytes]:
        """Every complete frame buffered now."""
        out: list[bytes] = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out


# ---------------------------------------------------------------------------------------------
# asyncio adapters: read exactly what the decoder wants, so nothing past the frame is consumed


async def read_frame(
    reader: ReadWriter,
    decoder: FrameDecoder,
    max_length: int | None = None,
    *,
    timeout: float | None = None,
) -> bytes:
    """Read until ``decoder`` has a whole frame; raises IncompleteRead at EOF.

    ``timeout`` bounds the whole frame (TimeoutError). If ``reader`` is a stream with a resource
    scope, a large frame's bytes count against it while the frame is assembled
    (:class:`~p2pnet.errors.ResourceLimitExceeded` if the peer's budget is spent).
    """
    if timeout is None:
        return await _read_frame(reader, decoder, max_length)
    async with deadline(timeout):
        return await _read_frame(reader, decoder, max_length)


async def _read_frame(reader: ReadWriter, decoder: FrameDecoder, max_length: int | None) -> bytes:
    scope = stream_scope_of(reader)
    held = 0
    try:
        while (frame := decoder.next_frame(max_length)) is None:
            wanted = decoder.wanted
            if scope is not None and not held and wanted >= _ACCOUNT_FRAMES_FROM:
                scope.reserve_memory(wanted)
                held = wanted
            decoder.feed(await reader.readexactly(wanted))
        return frame
    finally:
        if held:
            assert scope is not None
            scope.release_memory(held)


async def read_length_prefixed(
    reader: ReadWriter,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    *,
    timeout: float | None = DEFAULT_FRAME_TIMEOUT,
) -> bytes:
    """Read one length-prefixed message, refusing lengths above ``max_size``.

    Returns ``b""`` for a zero-length message; raises :class:`~p2pnet.errors.IncompleteRead` if
    EOF cuts it short, TimeoutError if it does not complete within ``timeout``.
    """
    return await read_frame(reader, FrameDecoder(max_size), timeout=timeout)


async def read_length_prefixed_or_eof(
    reader: ReadWriter,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    *,
    timeout: float | None = DEFAULT_FRAME_TIMEOUT,
) -> bytes | None:
    """Like :func:`read_length_prefixed` but returns ``None`` on a clean EOF between messages.

    The ``timeout`` starts at the frame's first byte (waiting for a next message is unbounded).
    """
    first = await reader.read(1)
    if not first:
        return None
    decoder = FrameDecoder(max_size)
    decoder.feed(first)
    return await read_frame(reader, decoder, timeout=timeout)


async def write_length_prefixed(writer: ReadWriter, data: Bytes) -> None:
    await writer.write(encode_length_prefixed(data))
