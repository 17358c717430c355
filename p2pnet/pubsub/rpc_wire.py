"""The RPC frame at the byte level: its encoded parts, so received messages are forwarded as the
bytes that arrived (never decoded and encoded again), and the bytes a message signature covers.

An RPC is ``repeated SubOpts subscriptions = 1; repeated Message publish = 2; optional
ControlMessage control = 3``: all three are length-delimited, so a frame is a sequence of
``tag, length, body``. :func:`split_rpc` returns the bodies by field; several ``control`` fields
are concatenated, which protobuf defines as merging them (what a full decode of the RPC does).
Unknown fields are skipped, as a protobuf decoder skips them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pnet.wire.varint import encode_uvarint

# wire types
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

#: Tag bytes of the publish field and of the message fields a signature covers, in order.
TAG_PUBLISH = b"\x12"
#: Message field numbers 1..6 (from, data, seqno, topic, signature, key), all length-delimited.
_MESSAGE_TAGS = {0x0A: 1, 0x12: 2, 0x1A: 3, 0x22: 4, 0x2A: 5, 0x32: 6}
_SIGNATURE, _KEY = 5, 6


class MalformedRPC(ValueError):
    """The frame is not a protobuf encoding (truncated, a bad varint, a group, a bad length)."""


@dataclass(slots=True)
class RPCParts:
    """The encoded bodies of an RPC's fields (no tags, no lengths)."""

    subscriptions: list[bytes] = field(default_factory=list)
    publish: list[bytes] = field(default_factory=list)
    control: bytes | None = None


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise MalformedRPC("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def split_rpc(frame: bytes) -> RPCParts:
    """The parts of an RPC frame; raises :class:`MalformedRPC`."""
    subscriptions, publish, control = split_rpc_fields(frame)
    return RPCParts(subscriptions, publish, control)


def split_rpc_fields(frame: bytes) -> tuple[list[bytes], list[bytes], bytes | None]:
    """:func:`split_rpc` as a tuple (subscriptions, publish, control), for the router: it runs
    for every frame received. Raises :class:`MalformedRPC`."""
    subscriptions: list[bytes] = []
    publish: list[bytes] = []
    controls: list[bytes] = []
    add_message = publish.append
    pos, end = 0, len(frame)
    while pos < end:
        key = frame[pos]
        if key == 0x12 and pos + 2 < end:  # a message with a one- or two-byte length: most
            length = frame[pos + 1]
            if length < 0x80:
                pos += 2
            elif frame[pos + 2] < 0x80:
                length = (length & 0x7F) | (frame[pos + 2] << 7)
                pos += 3
            else:
                length, pos = _varint(frame, pos + 1, end)
            stop = pos + length
            if stop > end:
                raise MalformedRPC("field longer than the frame")
            add_message(frame[pos:stop])
            pos = stop
            continue
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(frame, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise MalformedRPC("field number 0")
        if wire == _LEN:
            length = frame[pos] if pos < end else 0x80
            if length < 0x80:
                pos += 1
            elif pos + 1 < end and frame[pos + 1] < 0x80:  # two bytes
                length = (length & 0x7F) | (frame[pos + 1] << 7)
                pos += 2
            else:
                length, pos = _varint(frame, pos, end)
            stop = pos + length
            if stop > end:
                raise MalformedRPC("field longer than the frame")
            if number == 2:
                publish.append(frame[pos:stop])
            elif number == 1:
                subscriptions.append(frame[pos:stop])
            elif number == 3:
                controls.append(frame[pos:stop])
            pos = stop
        elif wire == _VARINT:
            _, pos = _varint(frame, pos, end)
        elif wire == _I64:
            pos += 8
        elif wire == _I32:
            pos += 4
        else:
            raise MalformedRPC(f"unsupported wire type {wire}")
        if pos > end:
            raise MalformedRPC("truncated field")
    control = None
    if controls:
        control = controls[0] if len(controls) == 1 else b"".join(controls)
    return subscriptions, publish, control


def unsigned_encoding(raw: bytes) -> bytes | None:
    """The encoding of message ``raw`` without its signature and key fields, taken from ``raw``.

    Only when ``raw`` is in the form our encoder produces (known fields in ascending order, each
    once, one-byte tags and minimal lengths); then the result equals encoding the decoded message
    without those fields, which is what the signature covers. Otherwise None: the caller encodes.
    Signature (5) and key (6) are the last fields, so the result is a prefix of ``raw``.
    """
    pos, end, last = 0, len(raw), 0
    cut = -1
    while pos < end:
        number = _MESSAGE_TAGS.get(raw[pos])
        if number is None or number <= last:
            return None
        last = number
        if number >= _SIGNATURE and cut < 0:
            cut = pos
        length = raw[pos + 1] if pos + 1 < end else 0
        if length < 0x80:
            pos += 2 + length
            continue
        if pos + 2 < end and 0 < raw[pos + 2] < 0x80:  # a minimal two-byte length
            pos += 3 + ((length & 0x7F) | (raw[pos + 2] << 7))
            continue
        try:
            length, body = _varint(raw, pos + 1, end)
        except MalformedRPC:
            return None
        if raw[body - 1] == 0:  # a padded (non-minimal) length
            return None
        pos = body + length
    if pos != end:
        return None
    return raw if cut < 0 else raw[:cut]


#: A message read from its encoding by :func:`parse_message`: ``from``, ``data`` (``b""`` when
#: absent, as a decoder reads it), ``seqno``, ``topic``, ``signature``, ``key`` (None when absent)
#: and the bytes the signature covers (the encoding without signature and key; None when they
#: must be encoded again: see :func:`messages.message_fields`).
ParsedMessage = tuple[
    bytes | None, bytes, bytes | None, str | None, bytes | None, bytes | None, bytes | None
]


def parse_message(raw: bytes) -> ParsedMessage | None:
    """The fields of message ``raw``, read without a protobuf decoder, when ``raw`` is in the
    form our encoder (and go's and js's) produces: known fields in ascending order, each once,
    one-byte tags, minimal lengths, a topic in UTF-8. Then every field equals what decoding
    gives, and the signed bytes are a prefix of ``raw``. Anything else (unknown or repeated
    fields, another order, a malformed encoding) gives None: the caller decodes ``raw``.
    """
    return _parse_signed(raw) or _parse_general(raw)


def _parse_general(raw: bytes) -> ParsedMessage | None:
    """:func:`parse_message` for any canonical form (fields absent, a long length...)."""
    end = len(raw)
    pos = last = 0
    cut = end
    values: list[bytes | None] = [None, None, None, None, None, None, None]
    tags = _MESSAGE_TAGS
    while pos < end:
        number = tags.get(raw[pos])
        if number is None or number <= last or pos + 1 >= end:
            return None
        last = number
        length = raw[pos + 1]
        if length < 0x80:
            start = pos + 2
        elif pos + 2 < end and 0 < raw[pos + 2] < 0x80:  # a minimal two-byte length
            length = (length & 0x7F) | (raw[pos + 2] << 7)
            start = pos + 3
        else:
            try:
                length, start = _varint(raw, pos + 1, end)
            except MalformedRPC:
                return None
            if raw[start - 1] == 0:  # a padded (non-minimal) length
                return None
        stop = start + length
        if stop > end:
            return None
        if number >= _SIGNATURE and cut == end:
            cut = pos
        values[number] = raw[start:stop]
        pos = stop
    topic: str | None = None
    if values[4] is not None:
        try:
            topic = values[4].decode()
        except UnicodeDecodeError:
            return None  # a decoder gives bytes for it: the caller's path decides
    return values[1], values[2] or b"", values[3], topic, values[5], values[6], raw[:cut]


def _parse_signed(raw: bytes) -> ParsedMessage | None:
    """:func:`parse_message` of the usual signed message, unrolled: fields 1 to 5 (from, data,
    seqno, topic, signature) each present once in that order, an optional key (6) after them,
    one- or two-byte minimal lengths, a UTF-8 topic. None for anything else (the caller's
    general loop decides then). Where it answers, it answers what that loop does."""
    end = len(raw)
    if end < 10 or raw[0] != 0x0A:
        return None
    # from (1)
    n = raw[1]
    if n < 0x80:
        start = 2
    elif 0 < raw[2] < 0x80:
        n = (n & 0x7F) | (raw[2] << 7)
        start = 3
    else:
        return None
    pos = start + n
    if pos + 1 >= end or raw[pos] != 0x12:
        return None
    from_ = raw[start:pos]
    # data (2)
    n = raw[pos + 1]
    if n < 0x80:
        start = pos + 2
    elif pos + 2 < end and 0 < raw[pos + 2] < 0x80:
        n = (n & 0x7F) | (raw[pos + 2] << 7)
        start = pos + 3
    else:
        return None
    pos = start + n
    if pos + 1 >= end or raw[pos] != 0x1A:
        return None
    data = raw[start:pos]
    # seqno (3)
    n = raw[pos + 1]
    if n >= 0x80:
        return None
    start = pos + 2
    pos = start + n
    if pos + 1 >= end or raw[pos] != 0x22:
        return None
    seqno = raw[start:pos]
    # topic (4)
    n = raw[pos + 1]
    if n < 0x80:
        start = pos + 2
    elif pos + 2 < end and 0 < raw[pos + 2] < 0x80:
        n = (n & 0x7F) | (raw[pos + 2] << 7)
        start = pos + 3
    else:
        return None
    pos = start + n
    if pos + 1 >= end or raw[pos] != 0x2A:
        return None
    topic_bytes = raw[start:pos]
    # signature (5)
    cut = pos
    n = raw[pos + 1]
    if n >= 0x80:
        return None
    start = pos + 2
    pos = start + n
    if pos > end:
        return None
    signature = raw[start:pos]
    key: bytes | None = None
    if pos < end:  # key (6), the last field
        if raw[pos] != 0x32 or pos + 1 >= end:
            return None
        n = raw[pos + 1]
        if n < 0x80:
            start = pos + 2
        elif pos + 2 < end and 0 < raw[pos + 2] < 0x80:
            n = (n & 0x7F) | (raw[pos + 2] << 7)
            start = pos + 3
        else:
            return None
        pos = start + n
        if pos != end:
            return None
        key = raw[start:pos]
    try:
        topic = topic_bytes.decode()
    except UnicodeDecodeError:
        return None
    return from_, data, seqno, topic, signature, key, raw[:cut]


def publish_piece(raw: bytes) -> bytes:
    """``raw`` as one publish field of an RPC: tag, length, the message bytes."""
    return TAG_PUBLISH + encode_uvarint(len(raw)) + raw


def lone_message(frame: bytes) -> tuple[bytes, bytes | None] | None:
    """The message of an RPC frame that is one publish field and nothing else (what every
    implementation sends for a message alone; its length fits two bytes), and the frame itself
    if it is that field as :func:`publish_piece` makes it (a minimal length); None for any
    other frame."""
    size = len(frame)
    if size <= 2 or frame[0] != 0x12:
        return None
    length = frame[1]
    if length < 0x80:
        start = 2
    elif frame[2] < 0x80:
        length = (length & 0x7F) | (frame[2] << 7)
        start = 3
    else:
        return None
    if start + length != size:
        return None
    return frame[start:], frame if start == 2 or frame[2] else None
