"""Unsigned LEB128 varints as used by multiformats and libp2p.

Only minimal encodings of values below 2**63 are accepted (the multiformats unsigned-varint spec
caps varints at 9 bytes), so a peer cannot make us buffer an endless run of continuation bytes.
"""

from __future__ import annotations

from p2pnet.errors import ProtocolError

MAX_VARINT_BYTES = 9


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("uvarint must be non-negative")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    if len(out) > MAX_VARINT_BYTES:
        raise ValueError("uvarint too large")
    return bytes(out)


def decode_uvarint(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int] | None:
    """Decode a varint at ``offset``.

    Returns ``(value, offset_after)``, or ``None`` when ``buf`` ends before the varint does.
    Raises :class:`ProtocolError` for an over-long or non-minimal varint.
    """
    value = 0
    shift = 0
    end = len(buf)
    i = offset
    while i < end:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and i - offset > 1:
                raise ProtocolError("non-minimal varint encoding")
            return value, i
        shift += 7
        if i - offset >= MAX_VARINT_BYTES:
            raise ProtocolError("varint longer than 9 bytes")
    return None
