"""Pubsub messages: building and signing, checking against the signature policy, message IDs.

The signature (pubsub/README.md, "Message Signing") covers ``"libp2p-pubsub:"`` followed by the
protobuf encoding of the message without its ``signature`` and ``key`` fields. ``key`` is only
sent when the peer ID does not inline the public key (RSA). ``seqno`` is 8 bytes big-endian; like
go and js we count up from the wall clock in nanoseconds so it keeps increasing across restarts.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
from collections import OrderedDict
from dataclasses import dataclass

from p2pnet.crypto.keys import KeyPair, PublicKey, unmarshal_public_key
from p2pnet.errors import CryptoError
from p2pnet.peer.peer_id import PeerID
from p2pnet.pubsub.errors import InvalidMessage
from p2pnet.pubsub.params import MsgIdFn, SignaturePolicy
from p2pnet.pubsub.rpc_wire import ParsedMessage, unsigned_encoding
from p2pnet.wire.pb import rpc_pb2

SIGN_PREFIX = b"libp2p-pubsub:"
SEQNO_LENGTH = 8


class ValidationResult(enum.Enum):
    """What a topic validator decides about a message (gossipsub v1.1 extended validators)."""

    #: Deliver and forward.
    ACCEPT = "accept"
    #: Invalid: drop, do not forward, and count against the sender (P4).
    REJECT = "reject"
    #: Drop and do not forward, without penalty.
    IGNORE = "ignore"


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What became of a message we published."""

    #: Its message ID.
    message_id: bytes
    #: The peers it was handed to for sending (flood publishing, mesh or fanout, direct peers).
    recipients: frozenset[PeerID]

    @property
    def peers(self) -> int:
        """How many peers it was sent to; 0 means nobody else will see it."""
        return len(self.recipients)


class ValidationFailure(enum.Enum):
    """A topic validator gave no verdict. The router decides what that means for the sender."""

    #: It did not answer within ``validate_timeout``.
    TIMEOUT = "timeout"
    #: It raised, or returned something that is not a verdict.
    ERROR = "error"


def as_verdict(value: object) -> ValidationResult | ValidationFailure:
    """A validator's return value as a verdict: a ValidationResult, or True/False for
    ACCEPT/REJECT; anything else is a broken validator (``ValidationFailure.ERROR``)."""
    if isinstance(value, ValidationResult):
        return value
    if value is True:
        return ValidationResult.ACCEPT
    if value is False:
        return ValidationResult.REJECT
    return ValidationFailure.ERROR


@dataclass(frozen=True, slots=True)
class Message:
    """A pubsub message as the application sees it.

    ``from_peer`` and ``seqno`` are None under StrictNoSign. ``received_from`` is the peer that
    forwarded it to us (our own ID for messages we published).
    """

    topic: str
    data: bytes
    from_peer: PeerID | None
    seqno: int | None
    id: bytes
    received_from: PeerID
    signature: bytes | None = None
    key: bytes | None = None

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, data={len(self.data)} bytes, from={self.from_peer}, "
            f"seqno={self.seqno}, id={self.id.hex()[:16]}...)"
        )


def get_from(msg: rpc_pb2.Message) -> bytes:
    """The ``from`` field (``from_`` in our .proto: ``from`` is a Python keyword)."""
    return msg.from_


# --------------------------------------------------------------------------------------------
# message IDs


def msg_id_from_seqno(msg: rpc_pb2.Message) -> bytes:
    """The spec's default ID: ``from ‖ seqno`` (go-libp2p-pubsub, py-libp2p).

    The ``from`` bytes are the binary peer ID. Raises InvalidMessage when either is missing.
    """
    return seqno_msg_id(
        get_from(msg) if msg.HasField("from_") else None,
        msg.seqno if msg.HasField("seqno") else None,
    )


def seqno_msg_id(from_: bytes | None, seqno: bytes | None) -> bytes:
    """:func:`msg_id_from_seqno` on the fields (None: absent)."""
    if from_ is None or seqno is None:
        raise InvalidMessage("missing_from_or_seqno", "default message ID needs from and seqno")
    return from_ + seqno


def msg_id_sha256(msg: rpc_pb2.Message) -> bytes:
    """SHA-256 of the data: the usual choice (and js's default) under StrictNoSign."""
    return hashlib.sha256(msg.data).digest()


def msg_id_js_strict_sign(msg: rpc_pb2.Message) -> bytes:
    """js @libp2p/gossipsub's StrictSign default: protobuf public key ‖ seqno.

    The key comes from the ``key`` field or, when absent, from the inlined peer ID. Use it on
    the p2pnet side to agree with js peers running their default message-ID function.
    """
    if not msg.HasField("from_") or not msg.HasField("seqno"):
        raise InvalidMessage("missing_from_or_seqno", "message ID needs from and seqno")
    if msg.HasField("key"):
        return msg.key + msg.seqno
    try:
        pub = PeerID.from_bytes(get_from(msg)).extract_public_key()
    except CryptoError as exc:
        raise InvalidMessage("invalid_peer_id", str(exc)) from exc
    if pub is None:
        raise InvalidMessage("missing_key", "peer ID does not inline its key and no key field")
    return pub.to_protobuf() + msg.seqno


def default_msg_id_fn(policy: SignaturePolicy) -> MsgIdFn:
    return msg_id_from_seqno if policy is SignaturePolicy.STRICT_SIGN else msg_id_sha256


# --------------------------------------------------------------------------------------------
# building and signing


class SeqnoCounter:
    """Monotonic 64-bit sequence numbers counting up from ``start``.

    go and js start from the wall clock in nanoseconds, so that a restarted node does not reuse
    the seqnos (and thus message IDs) of its previous run; the caller reads that clock.
    """

    def __init__(self, start: int) -> None:
        self._counter = itertools.count(start + 1)

    def next(self) -> int:
        return next(self._counter) & 0xFFFF_FFFF_FFFF_FFFF


def build_message(
    topic: str,
    data: bytes,
    *,
    policy: SignaturePolicy,
    key: KeyPair | None = None,
    peer_id: PeerID | None = None,
    seqno: int | None = None,
) -> rpc_pb2.Message:
    """A ready-to-send message: signed (StrictSign, needs ``key`` and ``seqno``) or bare."""
    msg = rpc_pb2.Message(data=bytes(data), topic=topic)
    if policy is SignaturePolicy.STRICT_NO_SIGN:
        return msg
    if key is None or seqno is None:
        raise ValueError("StrictSign needs a key and a seqno")
    author = peer_id or PeerID.from_public_key(key.public_key)
    msg.from_ = author.to_bytes()
    msg.seqno = seqno.to_bytes(SEQNO_LENGTH, "big")
    msg.signature = key.sign(SIGN_PREFIX + msg.SerializeToString())
    if not author.is_inline:
        msg.key = key.public_key.to_protobuf()
    return msg


# --------------------------------------------------------------------------------------------
# checking received messages


class SignatureVerifier:
    """Checks received messages against the signature policy; caches decoded author keys."""

    def __init__(self, policy: SignaturePolicy, cache_size: int = 4096) -> None:
        self.policy = policy
        self._cache_size = cache_size
        self._keys: OrderedDict[bytes, tuple[PeerID, PublicKey | None]] = OrderedDict()

    def _author(self, from_bytes: bytes) -> tuple[PeerID, PublicKey | None]:
        hit = self._keys.get(from_bytes)
        if hit is not None:
            self._keys.move_to_end(from_bytes)
            return hit
        try:
            peer = PeerID.from_bytes(from_bytes)
            pub = peer.extract_public_key()
        except CryptoError as exc:
            raise InvalidMessage("invalid_peer_id", str(exc)) from exc
        entry = (peer, pub)
        self._keys[from_bytes] = entry
        if len(self._keys) > self._cache_size:
            self._keys.popitem(last=False)
        return entry

    def verify(self, msg: rpc_pb2.Message, raw: bytes | None = None) -> PeerID | None:
        """Return the author (None under StrictNoSign) or raise :class:`InvalidMessage`.

        ``raw``: the bytes ``msg`` was decoded from, if at hand; the signed bytes are then cut
        from them instead of encoding the message again (when they are in canonical form)."""
        from_, _, seqno, _, signature, key, signed = message_fields(msg, raw)
        return self.verify_fields(from_, seqno, signature, key, signed, msg)

    def verify_fields(
        self,
        from_: bytes | None,
        seqno: bytes | None,
        signature: bytes | None,
        key: bytes | None,
        signed: bytes | None,
        msg: rpc_pb2.Message | None = None,
    ) -> PeerID | None:
        """:meth:`verify` on a message's fields (None: absent), as :func:`rpc_wire.parse_message`
        reads them. ``signed``: the encoding the signature covers, or None to encode ``msg``
        (the decoded message) without its signature and key."""
        if self.policy is SignaturePolicy.STRICT_NO_SIGN:
            for name, value in (
                ("signature", signature),
                ("key", key),
                ("seqno", seqno),
                ("from", from_),
            ):
                if value is not None:
                    raise InvalidMessage("unexpected_" + name, "StrictNoSign forbids it")
            return None
        if signature is None:
            raise InvalidMessage("missing_signature")
        if from_ is None:
            raise InvalidMessage("missing_from")
        if seqno is None or len(seqno) != SEQNO_LENGTH:
            raise InvalidMessage("invalid_seqno", "seqno must be 8 bytes")
        hit = self._keys.get(from_)  # _author's cache hit, inlined: once per message
        if hit is not None:
            self._keys.move_to_end(from_)
            author, pub = hit
        else:
            author, pub = self._author(from_)
        if key is not None:
            try:
                pub = unmarshal_public_key(key)
            except CryptoError as exc:
                raise InvalidMessage("invalid_key", str(exc)) from exc
            if not author.matches_public_key(pub):
                raise InvalidMessage("invalid_key", "key does not match the from peer ID")
        if pub is None:
            raise InvalidMessage("missing_key", "from peer ID does not inline its key")
        if signed is None:
            if msg is None:
                raise ValueError("verify_fields needs the signed bytes or the decoded message")
            unsigned = rpc_pb2.Message()
            unsigned.CopyFrom(msg)
            unsigned.ClearField("signature")
            unsigned.ClearField("key")
            signed = unsigned.SerializeToString()
        if not pub.verify(SIGN_PREFIX + signed, signature):
            raise InvalidMessage("invalid_signature")
        return author


def message_fields(msg: rpc_pb2.Message, raw: bytes | None = None) -> ParsedMessage:
    """A decoded message's fields as :func:`rpc_wire.parse_message` gives them. The signed
    bytes are cut from ``raw`` (the bytes ``msg`` was decoded from) when it is in canonical
    form; else they are None, and :meth:`SignatureVerifier.verify_fields` encodes ``msg``."""
    return (
        get_from(msg) if msg.HasField("from_") else None,
        msg.data,
        msg.seqno if msg.HasField("seqno") else None,
        # (a topic that is not UTF-8 decodes as bytes: no subscription matches it)
        msg.topic if msg.HasField("topic") else None,
        msg.signature if msg.HasField("signature") else None,
        msg.key if msg.HasField("key") else None,
        None if raw is None else unsigned_encoding(raw),
    )


def seqno_int(msg: rpc_pb2.Message) -> int | None:
    return int.from_bytes(msg.seqno, "big") if msg.HasField("seqno") else None


def to_app_message(
    msg: rpc_pb2.Message, msg_id: bytes, author: PeerID | None, received_from: PeerID
) -> Message:
    return app_message(
        msg.topic,
        msg.data,
        author,
        seqno_int(msg),
        msg_id,
        received_from,
        msg.signature if msg.HasField("signature") else None,
        msg.key if msg.HasField("key") else None,
    )


_new_object = object.__new__
_MESSAGE_SLOTS = tuple(
    getattr(Message, name).__set__
    for name in (
        "topic",
        "data",
        "from_peer",
        "seqno",
        "id",
        "received_from",
        "signature",
        "key",
    )
)


def app_message(
    topic: str,
    data: bytes,
    from_peer: PeerID | None,
    seqno: int | None,
    msg_id: bytes,
    received_from: PeerID,
    signature: bytes | None,
    key: bytes | None,
) -> Message:
    """``Message(topic, data, ...)`` for every message a node delivers: a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__`` (about 1.7 µs for these eight);
    the slots' own setters do the same in a third of that."""
    m = _new_object(Message)
    s_topic, s_data, s_from, s_seqno, s_id, s_received, s_signature, s_key = _MESSAGE_SLOTS
    s_topic(m, topic)
    s_data(m, data)
    s_from(m, from_peer)
    s_seqno(m, seqno)
    s_id(m, msg_id)
    s_received(m, received_from)
    s_signature(m, signature)
    s_key(m, key)
    return m
