"""Unsigned-varint length-prefixed messages, the framing of every libp2p protobuf stream."""

from __future__ import annotations

from p2pnet.errors import IncompleteRead, MessageTooLargeError, ProtocolError
from p2pnet.io import Bytes, ReadWriter
from p2pnet.wire.varint import MAX_VARINT_BYTES, decode_uvarint, encode_uvarint

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024


def encode_length_prefixed(data: Bytes) -> bytes:
    return encode_uvarint(len(data)) + bytes(data)


async def read_uvarint(reader: ReadWriter) -> int:
    """Read one varint byte by byte. Raises :class:`IncompleteRead` at EOF."""
    buf = bytearray()
    while True:
        b = await reader.readexactly(1)
        buf += b
        decoded = decode_uvarint(buf)
        if decoded is not None:
            return decoded[0]
        if len(buf) >= MAX_VARINT_BYTES:  # pragma: no cover - decode_uvarint raises first
            raise ProtocolError("varint too long")


async def read_length_prefixed(
    reader: ReadWriter, max_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> bytes:
    """Read one length-prefixed message, refusing lengths above ``max_size``.

    Returns ``b""`` for a zero-length message; raises :class:`IncompleteRead` if EOF cuts it short.
    """
    length = await read_uvarint(reader)
    if length > max_size:
        raise MessageTooLargeError(f"message of {length} bytes exceeds the limit of {max_size}")
    return await reader.readexactly(length)


async def read_length_prefixed_or_eof(
    reader: ReadWriter, max_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> bytes | None:
    """Like :func:`read_length_prefixed` but returns ``None`` on a clean EOF between messages."""
    first = await reader.read(1)
    if not first:
        return None
    buf = bytearray(first)
    while True:
        decoded = decode_uvarint(buf)
        if decoded is not None:
            break
        b = await reader.read(1)
        if not b:
            raise IncompleteRead(bytes(buf), len(buf) + 1)
        buf += b
    length = decoded[0]
    if length > max_size:
        raise MessageTooLargeError(f"message of {length} bytes exceeds the limit of {max_size}")
    return await reader.readexactly(length)


async def write_length_prefixed(writer: ReadWriter, data: Bytes) -> None:
    await writer.write(encode_length_prefixed(data))


class LengthPrefixedDecoder:
    """Sans-IO decoder: feed bytes, get complete messages out."""

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: Bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        pos = 0
        buf = self._buf
        while True:
            decoded = decode_uvarint(buf, pos)
            if decoded is None:
                break
            length, start = decoded
            if length > self.max_size:
                raise MessageTooLargeError(
                    f"message of {length} bytes exceeds the limit of {self.max_size}"
                )
            if len(buf) - start < length:
                break
            out.append(bytes(buf[start : start + length]))
            pos = start + length
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
