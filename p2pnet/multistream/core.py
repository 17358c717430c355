"""multistream-select 1.0, the sans-IO core: message encoding and the negotiation state machines.

No I/O, no clock: :class:`MultistreamDialer`, :class:`MultistreamListener` and
:class:`ProtocolLister` take bytes (:meth:`Negotiator.receive_data`), return events and queue
bytes (:meth:`Negotiator.data_to_send`). The limits and the wire layout are described in
:mod:`p2pnet.multistream`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from p2pnet.errors import (
    NegotiationError,
    P2PError,
    ProtocolError,
    ProtocolNotSupported,
)
from p2pnet.io import Bytes
from p2pnet.wire.framing import FrameDecoder, encode_length_prefixed

__all__ = [
    "LS",
    "MAX_LS_PROTOCOLS",
    "MAX_LS_REPLY_LENGTH",
    "MAX_MESSAGE_LENGTH",
    "MAX_NEGOTIATION_ATTEMPTS",
    "MAX_PROTOCOL_ID_LENGTH",
    "MULTISTREAM_PROTOCOL_ID",
    "NA",
    "MultistreamDialer",
    "MultistreamListener",
    "NegotiationEvent",
    "NegotiationState",
    "Negotiator",
    "ProtocolAgreed",
    "ProtocolLister",
    "ProtocolRefused",
    "ProtocolsListed",
    "decode_ls_reply",
    "decode_message",
    "decode_text",
    "encode_ls_reply",
    "encode_message",
    "encode_messages",
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

_NEWLINE: Final = 0x0A
_RESERVED: Final = frozenset((MULTISTREAM_PROTOCOL_ID, NA, LS))


# ---------------------------------------------------------------------------------------------
# messages


@lru_cache(maxsize=512)
def _encode_cached(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > MAX_PROTOCOL_ID_LENGTH:
        raise ValueError(
            f"multistream message of {len(data)} bytes exceeds {MAX_PROTOCOL_ID_LENGTH} bytes"
        )
    return encode_length_prefixed(data + b"\n")


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
LS_MESSAGE: Final = encode_message(LS)
_NA_PAYLOAD: Final = NA.encode()
_HEADER_LENGTH: Final = len(HEADER_MESSAGE)


def decode_text(payload: Bytes) -> str:
    """The text of a message payload; invalid UTF-8 is a :class:`ProtocolError`."""
    try:
        return bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"multistream message is not valid UTF-8: {exc.reason}") from None


def _strip_newline(frame: bytes) -> bytes:
    if not frame:
        raise ProtocolError("empty multistream message (no trailing newline)")
    if frame[-1] != _NEWLINE:
        raise ProtocolError("multistream message does not end with a newline")
    return frame[:-1]


def decode_message(frame: bytes) -> str:
    """The text of one framed message body (``text || "\\n"``)."""
    return decode_text(_strip_newline(frame))


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
    return encode_length_prefixed(body)


def decode_ls_reply(payload: Bytes) -> list[str]:
    """Parse the payload of an ``ls`` answer (outer newline already stripped) into ids."""
    decoder = FrameDecoder(MAX_MESSAGE_LENGTH)
    decoder.feed(payload)
    out: list[str] = []
    while (frame := decoder.next_frame()) is not None:
        if len(out) >= MAX_LS_PROTOCOLS:
            raise ProtocolError(f"ls answer lists more than {MAX_LS_PROTOCOLS} protocols")
        out.append(decode_message(frame))
    if decoder.buffered:
        raise ProtocolError("ls answer ends inside an entry")
    return out


def _show(payload: Bytes, limit: int = 64) -> str:
    """A short printable rendering of remote text for error messages."""
    text = bytes(payload[:limit]).decode("utf-8", "replace")
    return repr(text + ("..." if len(payload) > limit else ""))


# ---------------------------------------------------------------------------------------------
# sans-IO core: states, events, negotiators


class NegotiationState(enum.Enum):
    HEADER = "awaiting the remote's header"
    PROPOSAL = "awaiting a proposal"  # listener
    ANSWER = "awaiting the answer to a proposal"  # dialer
    LS_ANSWER = "awaiting the ls answer"  # dialer
    AGREED = "agreed"
    LISTED = "listed"  # ls answered; the header is exchanged
    FAILED = "failed"

    # members are singletons: identity hashing is correct and much cheaper than Enum's
    __hash__ = object.__hash__


_S = NegotiationState
#: Every legal transition; anything else is a bug in this module.
_TRANSITIONS: Final[dict[NegotiationState, frozenset[NegotiationState]]] = {
    _S.HEADER: frozenset({_S.PROPOSAL, _S.ANSWER, _S.LS_ANSWER, _S.FAILED}),
    _S.PROPOSAL: frozenset({_S.PROPOSAL, _S.AGREED, _S.FAILED}),
    _S.ANSWER: frozenset({_S.ANSWER, _S.AGREED, _S.FAILED}),
    _S.LS_ANSWER: frozenset({_S.LISTED, _S.FAILED}),
    _S.AGREED: frozenset(),
    _S.LISTED: frozenset(),
    _S.FAILED: frozenset(),
}
_FINISHED: Final = frozenset({_S.AGREED, _S.LISTED, _S.FAILED})


@dataclass(frozen=True, slots=True)
class ProtocolAgreed:
    protocol: str


@dataclass(frozen=True, slots=True)
class ProtocolRefused:
    """The listener answered ``na`` to one of the dialer's proposals."""

    protocol: str


@dataclass(frozen=True, slots=True)
class ProtocolsListed:
    protocols: list[str]


NegotiationEvent = ProtocolAgreed | ProtocolRefused | ProtocolsListed


class Negotiator:
    """What the dialer, listener and lister share: header check, framing, output, state.

    Feed bytes with :meth:`receive_data` (any slices; bytes past the end of the negotiation are
    kept for :meth:`take_unused`), send what :meth:`data_to_send` returns. Protocol violations
    raise :class:`NegotiationError` or :class:`~p2pnet.errors.ProtocolError` and leave the
    negotiator in :attr:`NegotiationState.FAILED`.
    """

    def __init__(
        self,
        after_header: NegotiationState,
        out: bytes,
        *,
        frame_limit: int = MAX_MESSAGE_LENGTH,
        header_exchanged: bool = False,
    ) -> None:
        self.state = NegotiationState.HEADER
        #: The state is AGREED, LISTED or FAILED (kept as a flag: it is read on every input).
        self.finished = False
        self._after_header = after_header
        self._header_seen = 0
        self._decoder = FrameDecoder(MAX_MESSAGE_LENGTH)
        self._frame_limit = frame_limit
        self._out = bytearray(out)
        self._unused = b""
        if header_exchanged:
            self._header_seen = _HEADER_LENGTH
            self._enter(after_header)

    # -- driving --------------------------------------------------------------------------------

    @property
    def bytes_wanted(self) -> int:
        """How many bytes to read next without reading past the negotiation (0 when finished).

        The header is a fixed message: its length byte first (so a wrong one is refused at once),
        then the rest plus the first byte of the next message, which always follows the header
        (the dialer's proposal, the listener's answer), so one read is saved. After it, what the
        frame decoder needs.
        """
        if self.finished:
            return 0
        seen = self._header_seen
        if seen < _HEADER_LENGTH:
            return 1 if seen == 0 else _HEADER_LENGTH - seen + 1
        return self._decoder.wanted

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    def take_unused(self) -> bytes:
        """Bytes received after the negotiation finished (application data)."""
        out, self._unused = self._unused, b""
        return out

    def receive_data(self, data: Bytes) -> list[NegotiationEvent]:
        if self.finished:
            raise RuntimeError(f"negotiation already {self.state.value}")
        if type(data) is not bytes:
            data = bytes(data)
        events: list[NegotiationEvent] = []
        try:
            if self._header_seen < _HEADER_LENGTH:
                used = self._match_header(data)
                if used == len(data):
                    return events
                data = data[used:]
            decoder = self._decoder
            decoder.feed(data)
            limit = self._frame_limit
            while (frame := decoder.next_frame(limit)) is not None:
                self._on_message(frame, events)
                if self.finished:
                    if decoder.buffered:
                        self._unused = decoder.take_buffered()
                    break
        except P2PError:
            self._enter(NegotiationState.FAILED)
            raise
        return events

    # -- for subclasses ---------------------------------------------------------------------------

    def _enter(self, state: NegotiationState) -> None:
        if state is not self.state and state not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"multistream: no transition from {self.state} to {state}")
        self.state = state
        self.finished = state in _FINISHED

    def _send(self, message: bytes) -> None:
        self._out += message

    def _on_message(self, frame: bytes, events: list[NegotiationEvent]) -> None:
        raise NotImplementedError

    def _match_header(self, data: bytes) -> int:
        seen = self._header_seen
        take = min(len(data), _HEADER_LENGTH - seen)
        if not HEADER_MESSAGE.startswith(data[:take] if take < len(data) else data, seen):
            if seen == 0:
                raise NegotiationError(
                    f"expected multistream header {MULTISTREAM_PROTOCOL_ID!r}, "
                    f"got a message starting with byte 0x{data[0]:02x}"
                )
            got = HEADER_MESSAGE[1:seen] + data[:take]
            raise NegotiationError(
                f"expected multistream header {MULTISTREAM_PROTOCOL_ID!r}, got {_show(got)}"
            )
        seen += take
        self._header_seen = seen
        if seen == _HEADER_LENGTH:
            self._enter(self._after_header)
        return take


class MultistreamDialer(Negotiator):
    """The dialer: proposes ``protocols`` in order until the listener echoes one.

    The header and the first proposal are queued together (one write), so a listener that
    supports the first protocol costs one round trip; each ``na`` queues the next proposal.
    ``header_exchanged=True`` skips the header (after :class:`ProtocolLister` on the same
    connection). Raises :class:`ValueError` for an unusable ``protocols`` argument.

    ``early_data`` (only with a single protocol) is queued right after the proposal: the
    protocol's first bytes go out without waiting for the echo, as rust-libp2p's ``V1Lazy``
    and go-libp2p's lazy select do (the listener reads them once it agreed; one refusal ends
    the negotiation anyway, and a listener that refuses reads them as a malformed proposal and
    closes the stream). Same bytes on the wire, one round trip less.
    """

    def __init__(
        self,
        protocols: Sequence[str],
        *,
        header_exchanged: bool = False,
        early_data: bytes = b"",
    ) -> None:
        self.protocols = _proposals(protocols)
        if early_data and len(self.protocols) != 1:
            raise ValueError("early data needs a single proposed protocol")
        self._index = 0
        first = encode_message(self.protocols[0])
        out = first if header_exchanged else HEADER_MESSAGE + first
        super().__init__(
            NegotiationState.ANSWER, out + early_data, header_exchanged=header_exchanged
        )

    def _on_message(self, frame: bytes, events: list[NegotiationEvent]) -> None:
        payload = _strip_newline(frame)
        proto = self.protocols[self._index]
        if payload == _NA_PAYLOAD:
            logger.debug("remote refused %r", proto)
            events.append(ProtocolRefused(proto))
            self._index += 1
            if self._index == len(self.protocols):
                raise ProtocolNotSupported(f"remote supports none of {self.protocols!r}")
            self._send(encode_message(self.protocols[self._index]))
            return
        if decode_text(payload) != proto:
            raise NegotiationError(f"unexpected answer {_show(payload)} to proposal {proto!r}")
        logger.debug("negotiated %r", proto)
        self._enter(NegotiationState.AGREED)
        events.append(ProtocolAgreed(proto))


class ProtocolLister(Negotiator):
    """Dialer-side ``ls``: header + ``ls`` out, the listener's protocol list in.

    Afterwards the header has been exchanged: continue with
    ``MultistreamDialer(protos, header_exchanged=True)`` or close. A listener without ``ls``
    (go) answers ``na``: :class:`ProtocolNotSupported`.
    """

    def __init__(self) -> None:
        super().__init__(
            NegotiationState.LS_ANSWER,
            HEADER_MESSAGE + LS_MESSAGE,
            frame_limit=MAX_LS_REPLY_LENGTH,
        )

    def _on_message(self, frame: bytes, events: list[NegotiationEvent]) -> None:
        payload = _strip_newline(frame)
        if payload == _NA_PAYLOAD:
            raise ProtocolNotSupported("remote does not answer ls")
        protocols = decode_ls_reply(payload)
        self._enter(NegotiationState.LISTED)
        events.append(ProtocolsListed(protocols))


Supported = Collection[str] | Callable[[str], bool]


class MultistreamListener(Negotiator):
    """The listener: answers proposals with an echo (accepted), ``na`` or, for ``ls``, the list.

    ``supported`` is a collection of protocol ids (its order is the order of an ``ls`` answer) or
    a predicate (which cannot be listed: ``ls`` then gets an empty list). Our header is queued at
    once; the dialer's header must be its first message. After ``max_attempts`` refusals and
    ``ls`` answers the negotiation fails.
    """

    def __init__(
        self, supported: Supported, *, max_attempts: int = MAX_NEGOTIATION_ATTEMPTS
    ) -> None:
        super().__init__(NegotiationState.PROPOSAL, HEADER_MESSAGE)
        if isinstance(supported, str):
            supported = (supported,)
        if callable(supported):
            self._accepts: Callable[[str], bool] = supported
            self._listing: Collection[str] = ()
        else:
            self._accepts = supported.__contains__
            self._listing = supported
        self.max_attempts = max_attempts
        self._attempts = 0
        #: The protocol agreed on (None until then).
        self.agreed: str | None = None

    def _on_message(self, frame: bytes, events: list[NegotiationEvent]) -> None:
        text = decode_message(frame)
        if text == LS:
            self._send(encode_ls_reply(self._listing))
        elif text not in _RESERVED and self._accepts(text):
            self._send(_encode_cached(text))
            logger.debug("accepted %r", text)
            self.agreed = text
            self._enter(NegotiationState.AGREED)
            events.append(ProtocolAgreed(text))
            return
        else:
            self._send(NA_MESSAGE)
        self._attempts += 1
        if self._attempts >= self.max_attempts:
            raise NegotiationError(f"dialer made more than {self.max_attempts} proposals")


def _proposals(protocols: Sequence[str]) -> list[str]:
    protos = [protocols] if isinstance(protocols, str) else list(protocols)
    if not protos:
        raise ValueError("at least one protocol must be proposed")
    for proto in protos:
        if proto in _RESERVED:
            raise ValueError(f"{proto!r} is a multistream keyword, not a protocol id")
        encode_message(proto)  # raises ValueError if it cannot be sent
    return protos
