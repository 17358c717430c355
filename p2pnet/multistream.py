"""multistream-select 1.0: agree on the protocol spoken over a connection or stream.

Spec: https://github.com/multiformats/multistream-select (and libp2p specs connections/).

Every message is ``uvarint(len(text) + 1) || UTF-8 text || "\\n"``. Both sides start with the
header ``/multistream/1.0.0``; the dialer then proposes protocol ids one at a time and the listener
answers each with the same id (accepted) or ``na`` (refused). The dialer may also send ``ls``; the
listener then answers with the protocols it supports.

Layout:

* a sans-IO part: :func:`encode_message`, :class:`MessageDecoder` (feed bytes, pop messages),
  :func:`encode_ls_reply` / :func:`decode_ls_reply`;
* the asyncio part: :func:`negotiate_outbound` (dialer), :func:`negotiate_inbound` (listener) and
  :func:`list_protocols` (dialer-side ``ls``), each over a :class:`~p2pnet.io.ReadWriter`.

The async functions read a message as exactly its length prefix plus exactly the announced number
of bytes, so they never consume a byte past the negotiation: application data the remote sends in
the same segment as its last negotiation message stays in ``conn`` for the protocol handler.

Limits (checked against go-multistream ``lpReadBuf`` and js ``@libp2p/multistream-select``):

* :data:`MAX_MESSAGE_LENGTH` = 1024: the largest accepted length prefix, newline included. go
  refuses ``length > 1024`` and js uses ``maxDataLength: 1024``, so a protocol id may have at most
  1023 UTF-8 bytes. We neither send nor accept anything the reference stacks would refuse.
* :data:`MAX_LS_REPLY_LENGTH` = 16383 and :data:`MAX_LS_PROTOCOLS` = 1000: the bounds of an ``ls``
  answer (rust-libp2p caps frames at a 2-byte length prefix, i.e. 16383, and answers at 1000
  protocols); an ``ls`` answer is a list and so may exceed the per-message limit.
* :data:`MAX_NEGOTIATION_ATTEMPTS` = 32: how many proposals (and ``ls`` requests) a listener answers
  before it gives up. Real dialers propose one to four ids (gossipsub: meshsub 1.2/1.1/1.0 and
  floodsub), so 32 leaves room while stopping a peer that streams ``na``-bait at us.

``ls`` answers use the layout of js-libp2p and rust-libp2p: one outer message whose body is, per
protocol, ``uvarint(len(id) + 1) || id || "\\n"``, followed by the outer ``"\\n"``. (go-multistream
dropped ``ls`` and answers it with ``na``; :func:`list_protocols` reports that as
:class:`~p2pnet.errors.ProtocolNotSupported`.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from functools import lru_cache
from typing import Final, TypeVar

from p2pnet.errors import (
    MessageTooLargeError,
    NegotiationError,
    ProtocolError,
    ProtocolNotSupported,
)
from p2pnet.io import Bytes, ReadWriter
from p2pnet.wire.varint import decode_uvarint, encode_uvarint

__all__ = [
    "DEFAULT_TIMEOUT",
    "LS",
    "MAX_LS_PROTOCOLS",
    "MAX_LS_REPLY_LENGTH",
    "MAX_MESSAGE_LENGTH",
    "MAX_NEGOTIATION_ATTEMPTS",
    "MAX_PROTOCOL_ID_LENGTH",
    "MULTISTREAM_PROTOCOL_ID",
    "NA",
    "MessageDecoder",
    "decode_ls_reply",
    "decode_text",
    "encode_ls_reply",
    "encode_message",
    "encode_messages",
    "list_protocols",
    "negotiate_inbound",
    "negotiate_outbound",
]

logger = logging.getLogger("p2pnet.multistream")

MULTISTREAM_PROTOCOL_ID: Final = "/multistream/1.0.0"
NA: Final = "na"
LS: Final = "ls"

#: Largest accepted length prefix (text + newline), as in go-multistream and js.
MAX_MESSAGE_LENGTH: Final = 1024
#: Longest protocol id we send or accept, in UTF-8 bytes.
MAX_PROTOCOL_ID_LENGTH: Final = MAX_MESSAGE_LENGTH - 1
#: Largest accepted ``ls`` answer (the outer length prefix), as rust-libp2p's frame limit.
MAX_LS_REPLY_LENGTH: Final = (1 << 14) - 1
#: Most protocols accepted in (and sent in) an ``ls`` answer, as rust-libp2p.
MAX_LS_PROTOCOLS: Final = 1000
#: Proposals plus ``ls`` requests a listener answers before giving up.
MAX_NEGOTIATION_ATTEMPTS: Final = 32
#: Default bound, in seconds, on one whole negotiation.
DEFAULT_TIMEOUT: Final = 10.0

_NEWLINE: Final = 0x0A
_RESERVED: Final = frozenset((MULTISTREAM_PROTOCOL_ID, NA, LS))

_T = TypeVar("_T")


# ---------------------------------------------------------------------------------------------
# sans-IO: encoding and decoding


@lru_cache(maxsize=512)
def _encode_cached(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > MAX_PROTOCOL_ID_LENGTH:
        raise ValueError(
            f"multistream message of {len(data)} bytes exceeds {MAX_PROTOCOL_ID_LENGTH} bytes"
        )
    return encode_uvarint(len(data) + 1) + data + b"\n"


def encode_message(text: str) -> bytes:
    """One multistream message: ``uvarint(len + 1) || text || "\\n"``.

    Raises :class:`ValueError` if ``text`` has more than :data:`MAX_PROTOCOL_ID_LENGTH` UTF-8 bytes
    (a remote would refuse it) or is not encodable (lone surrogates).
    """
    try:
        return _encode_cached(text)
    except UnicodeEncodeError as exc:
        raise ValueError(f"multistream message is not encodable as UTF-8: {exc}") from None


def encode_messages(texts: Iterable[str]) -> bytes:
    """Several messages concatenated, to be sent in one write."""
    return b"".join(encode_message(t) for t in texts)


HEADER_MESSAGE: Final = encode_message(MULTISTREAM_PROTOCOL_ID)
NA_MESSAGE: Final = encode_message(NA)
_NA_PAYLOAD: Final = NA.encode()


def decode_text(payload: Bytes) -> str:
    """The text of a message payload; invalid UTF-8 is a :class:`ProtocolError`."""
    try:
        return bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"multistream message is not valid UTF-8: {exc.reason}") from None


def _check_length(length: int, max_length: int) -> None:
    if length == 0:
        raise ProtocolError("empty multistream message (no trailing newline)")
    if length > max_length:
        raise MessageTooLargeError(
            f"multistream message of {length} bytes exceeds the limit of {max_length}"
        )


def _strip_newline(frame: bytes) -> bytes:
    if frame[-1] != _NEWLINE:
        raise ProtocolError("multistream message does not end with a newline")
    return frame[:-1]


def _prefix_bytes(max_length: int) -> int:
    """How many varint bytes a length up to ``max_length`` needs."""
    return len(encode_uvarint(max_length))


def encode_ls_reply(protocols: Iterable[str]) -> bytes:
    """The complete ``ls`` answer message listing ``protocols``.

    Ids that cannot be sent (too long, reserved words) are skipped; the list stops at
    :data:`MAX_LS_PROTOCOLS` entries or when the message would exceed :data:`MAX_LS_REPLY_LENGTH`.
    """
    body = bytearray()
    count = 0
    for proto in protocols:
        if count >= MAX_LS_PROTOCOLS:
            break
        try:
            item = encode_message(proto)
        except ValueError:
            continue
        if len(body) + len(item) + 1 > MAX_LS_REPLY_LENGTH:
            logger.debug("ls answer truncated after %d protocols", count)
            break
        body += item
        count += 1
    body += b"\n"
    return encode_uvarint(len(body)) + bytes(body)


def decode_ls_reply(payload: Bytes) -> list[str]:
    """Parse the payload of an ``ls`` answer (outer newline already stripped) into ids."""
    buf = bytes(payload)
    out: list[str] = []
    pos = 0
    end = len(buf)
    while pos < end:
        if len(out) >= MAX_LS_PROTOCOLS:
            raise ProtocolError(f"ls answer lists more than {MAX_LS_PROTOCOLS} protocols")
        decoded = decode_uvarint(buf, pos)
        if decoded is None:
            raise ProtocolError("ls answer ends inside a length prefix")
        length, start = decoded
        _check_length(length, MAX_MESSAGE_LENGTH)
        if start + length > end:
            raise ProtocolError("ls answer entry runs past the end of the answer")
        item = _strip_newline(buf[start : start + length])
        out.append(decode_text(item))
        pos = start + length
    return out


class MessageDecoder:
    """Incremental decoder: :meth:`feed` bytes, :meth:`next_message` pops complete messages.

    Bytes after the last complete message stay buffered; :meth:`take_buffered` hands them over,
    e.g. to the protocol that was just agreed. Errors (:class:`ProtocolError`,
    :class:`MessageTooLargeError`) are raised by :meth:`next_message` as soon as the buffered bytes
    prove the stream bad; after an error the decoder should be discarded.
    """

    def __init__(self, max_length: int = MAX_MESSAGE_LENGTH) -> None:
        if max_length < 1:
            raise ValueError("max_length must be positive")
        self.max_length = max_length
        self._buf = bytearray()

    def feed(self, data: Bytes) -> None:
        self._buf += data

    def next_message(self, max_length: int | None = None) -> bytes | None:
        """The next payload (without its newline), or ``None`` if not complete yet.

        ``max_length`` overrides the decoder's limit for this one message (an ``ls`` answer).
        """
        limit = self.max_length if max_length is None else max_length
        buf = self._buf
        if not buf:
            return None
        decoded = decode_uvarint(buf)
        if decoded is None:
            if len(buf) >= _prefix_bytes(limit):
                raise MessageTooLargeError(
                    f"multistream length prefix exceeds the limit of {limit} bytes"
                )
            return None
        length, start = decoded
        _check_length(length, limit)
        if len(buf) - start < length:
            return None
        payload = _strip_newline(bytes(buf[start : start + length]))
        del buf[: start + length]
        return payload

    def next_text(self) -> str | None:
        """Like :meth:`next_message`, decoded as UTF-8."""
        payload = self.next_message()
        return None if payload is None else decode_text(payload)

    def messages(self) -> list[str]:
        """All complete messages currently buffered, as text."""
        out: list[str] = []
        while (text := self.next_text()) is not None:
            out.append(text)
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def take_buffered(self) -> bytes:
        """Remove and return the bytes not yet consumed as messages."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


# ---------------------------------------------------------------------------------------------
# asyncio adapter


async def _read_payload(conn: ReadWriter, max_length: int = MAX_MESSAGE_LENGTH) -> bytes:
    """Read exactly one message (prefix, then body) and return its payload."""
    prefix = await conn.readexactly(1)
    if prefix[0] < 0x80:
        length = prefix[0]
    else:
        limit = _prefix_bytes(max_length)
        buf = bytearray(prefix)
        while True:
            if len(buf) >= limit:
                raise MessageTooLargeError(
                    f"multistream length prefix exceeds the limit of {max_length} bytes"
                )
            buf += await conn.readexactly(1)
            decoded = decode_uvarint(buf)
            if decoded is not None:
                length = decoded[0]
                break
    _check_length(length, max_length)
    return _strip_newline(await conn.readexactly(length))


def _show(payload: Bytes, limit: int = 64) -> str:
    """A short printable rendering of remote text for error messages."""
    text = bytes(payload[:limit]).decode("utf-8", "replace")
    return repr(text + ("..." if len(payload) > limit else ""))


async def _expect_header(conn: ReadWriter) -> None:
    # The header is one fixed message, so a wrong length byte is refused at once instead of
    # waiting for a body that may never come (an HTTP client, a port scanner, another protocol).
    expected = encode_message(MULTISTREAM_PROTOCOL_ID)
    first = await conn.readexactly(1)
    if first[0] != expected[0]:
        raise NegotiationError(
            f"expected multistream header {MULTISTREAM_PROTOCOL_ID!r}, "
            f"got a message starting with byte 0x{first[0]:02x}"
        )
    payload = first + await conn.readexactly(len(expected) - 1)
    if payload != expected:
        raise NegotiationError(
            f"expected multistream header {MULTISTREAM_PROTOCOL_ID!r}, got {_show(payload[1:])}"
        )


async def _bounded(aw: Awaitable[_T], timeout: float, what: str) -> _T:
    try:
        async with asyncio.timeout(timeout):
            return await aw
    except TimeoutError as exc:
        raise NegotiationError(f"multistream {what} timed out after {timeout:g} s") from exc


def _proposals(protocols: Sequence[str]) -> list[str]:
    protos = [protocols] if isinstance(protocols, str) else list(protocols)
    if not protos:
        raise ValueError("at least one protocol must be proposed")
    for proto in protos:
        if proto in _RESERVED:
            raise ValueError(f"{proto!r} is a multistream keyword, not a protocol id")
        encode_message(proto)  # raises ValueError if it cannot be sent
    return protos


async def negotiate_outbound(
    conn: ReadWriter,
    protocols: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    header_exchanged: bool = False,
) -> str:
    """Dialer side: propose ``protocols`` in order and return the first one the listener accepts.

    The header and the first proposal go out in one write, so a listener that supports the first
    protocol costs one round trip. On ``na`` the next protocol is proposed.

    ``header_exchanged=True`` skips the header (used after :func:`list_protocols` on the same
    connection).

    Raises :class:`ProtocolNotSupported` if every protocol was refused, :class:`NegotiationError`
    if the listener answers something else than the header / the echo / ``na`` or the whole
    negotiation takes longer than ``timeout`` seconds, :class:`ProtocolError` on malformed
    messages, :class:`~p2pnet.errors.IncompleteRead` if the connection closes midway, and
    :class:`ValueError` for an unusable ``protocols`` argument.
    """
    protos = _proposals(protocols)
    return await _bounded(_select(conn, protos, header_exchanged), timeout, "dial negotiation")


async def _select(conn: ReadWriter, protos: list[str], header_exchanged: bool) -> str:
    first = encode_message(protos[0])
    if header_exchanged:
        await conn.write(first)
    else:
        await conn.write(HEADER_MESSAGE + first)
        await _expect_header(conn)
    for i, proto in enumerate(protos):
        if i:
            await conn.write(encode_message(proto))
        payload = await _read_payload(conn)
        if payload == _NA_PAYLOAD:
            logger.debug("remote refused %r", proto)
            continue
        if decode_text(payload) == proto:
            logger.debug("negotiated %r", proto)
            return proto
        raise NegotiationError(f"unexpected answer {_show(payload)} to proposal {proto!r}")
    raise ProtocolNotSupported(f"remote supports none of {protos!r}")


async def list_protocols(conn: ReadWriter, *, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """Dialer-side ``ls``: send the header and ``ls``, return the listener's protocol list.

    Afterwards the header has been exchanged; propose with
    ``negotiate_outbound(conn, protos, header_exchanged=True)`` or close ``conn``. A listener
    without ``ls`` support (go) answers ``na``: :class:`ProtocolNotSupported`.
    """
    return await _bounded(_ls(conn), timeout, "ls")


async def _ls(conn: ReadWriter) -> list[str]:
    await conn.write(HEADER_MESSAGE + encode_message(LS))
    await _expect_header(conn)
    payload = await _read_payload(conn, MAX_LS_REPLY_LENGTH)
    if payload == _NA_PAYLOAD:
        raise ProtocolNotSupported("remote does not answer ls")
    return decode_ls_reply(payload)


Supported = Collection[str] | Callable[[str], bool]


async def negotiate_inbound(
    conn: ReadWriter,
    supported: Supported,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_attempts: int = MAX_NEGOTIATION_ATTEMPTS,
) -> str:
    """Listener side: answer the dialer's proposals and return the protocol agreed on.

    ``supported`` is a collection of protocol ids (a set or dict is fastest; its order is the
    order of an ``ls`` answer) or a predicate; a predicate cannot be listed, so ``ls`` then gets an
    empty list. Our header is sent at once; the dialer's header must be its first message.
    Unsupported proposals get ``na``, ``ls`` gets the list; after ``max_attempts`` of those the
    negotiation fails.

    Raises :class:`NegotiationError` (wrong header, too many attempts, timeout),
    :class:`ProtocolError` on malformed messages, :class:`~p2pnet.errors.IncompleteRead` if the
    dialer closes midway.
    """
    if isinstance(supported, str):
        supported = (supported,)
    return await _bounded(_handle(conn, supported, max_attempts), timeout, "listen negotiation")


async def _handle(conn: ReadWriter, supported: Supported, max_attempts: int) -> str:
    if callable(supported):
        accepts: Callable[[str], bool] = supported
        listing: Collection[str] = ()
    else:
        accepts = supported.__contains__
        listing = supported
    await conn.write(HEADER_MESSAGE)
    await _expect_header(conn)
    for _ in range(max_attempts):
        payload = await _read_payload(conn)
        text = decode_text(payload)
        if text == LS:
            await conn.write(encode_ls_reply(listing))
            continue
        if text not in _RESERVED and accepts(text):
            await conn.write(encode_uvarint(len(payload) + 1) + payload + b"\n")
            logger.debug("accepted %r", text)
            return text
        await conn.write(NA_MESSAGE)
    raise NegotiationError(f"dialer made more than {max_attempts} proposals")
