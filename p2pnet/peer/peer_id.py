"""Peer ids: multihashes of a peer's public key (specs peer-ids/peer-ids.md).

A peer id is the multihash of the deterministic protobuf encoding of the peer's public key:

* the *identity* multihash (code 0x00) when that encoding is at most 42 bytes, so the key itself
  is inside the id (Ed25519 -> ``12D3KooW...``, secp256k1 -> ``16Uiu2HA...``);
* the *sha2-256* multihash (code 0x12, 32-byte digest) otherwise (RSA, ECDSA -> ``Qm...``).

Text forms: the legacy base58btc multihash (what ``str()`` gives) and a CIDv1 with the
``libp2p-key`` multicodec (0x72) in multibase; we write base32 (``b...``) and read base32
(``b``/``B``), base36 (``k``/``K``) and base58btc (``z``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Final

import base58

from p2pnet.crypto.keys import PublicKey, unmarshal_public_key
from p2pnet.errors import CryptoError, InvalidPeerID, ProtocolError
from p2pnet.wire.varint import decode_uvarint, encode_uvarint

__all__ = ["LIBP2P_KEY_CODEC", "MAX_INLINE_KEY_LENGTH", "PeerID"]

#: Longest encoded public key that goes into an identity multihash.
MAX_INLINE_KEY_LENGTH: Final = 42
#: Multicodec ``libp2p-key`` used in CID peer ids.
LIBP2P_KEY_CODEC: Final = 0x72

_MH_IDENTITY: Final = 0x00
_MH_SHA2_256: Final = 0x12
_CID_V1: Final = 0x01
# Text longer than this cannot be a peer id (the longest, a CID in base32, is about 75 chars).
_MAX_TEXT: Final = 256
_BASE36_ALPHABET: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
_BASE36_INDEX: Final = {c: i for i, c in enumerate(_BASE36_ALPHABET)}


def _validate_multihash(data: bytes) -> None:
    """Check that ``data`` is an identity or sha2-256 multihash a peer id may be."""
    try:
        head = decode_uvarint(data, 0)
        if head is None:
            raise InvalidPeerID("peer id is empty or truncated")
        code, pos = head
        got = decode_uvarint(data, pos)
        if got is None:
            raise InvalidPeerID("peer id multihash is truncated")
        length, pos = got
    except ProtocolError as exc:
        raise InvalidPeerID(f"peer id multihash has a malformed varint: {exc}") from exc
    if len(data) - pos != length:
        raise InvalidPeerID(
            f"peer id multihash announces {length} digest bytes but has {len(data) - pos}"
        )
    if code == _MH_SHA2_256:
        if length != 32:
            raise InvalidPeerID(f"sha2-256 peer id must have a 32-byte digest, not {length}")
    elif code == _MH_IDENTITY:
        if not 0 < length <= MAX_INLINE_KEY_LENGTH:
            raise InvalidPeerID(
                f"identity peer id must inline 1..{MAX_INLINE_KEY_LENGTH} key bytes, not {length}"
            )
    else:
        raise InvalidPeerID(f"unsupported multihash code 0x{code:x} in peer id")


def _b58decode(text: str) -> bytes:
    try:
        out: bytes = base58.b58decode(text)
    except ValueError as exc:
        raise InvalidPeerID(f"invalid base58btc in peer id: {exc}") from exc
    return out


def _b32decode(text: str) -> bytes:
    if text.upper() != text and text.lower() != text:
        raise InvalidPeerID("base32 peer id mixes upper and lower case")
    padded = text.upper() + "=" * (-len(text) % 8)
    try:
        return base64.b32decode(padded)
    except (binascii.Error, ValueError) as exc:
        raise InvalidPeerID(f"invalid base32 in peer id: {exc}") from exc


def _b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _b36decode(text: str) -> bytes:
    text = text.lower()
    value = 0
    for ch in text:
        digit = _BASE36_INDEX.get(ch)
        if digit is None:
            raise InvalidPeerID(f"invalid base36 character {ch!r} in peer id")
        value = value * 36 + digit
    zeros = len(text) - len(text.lstrip("0"))
    body = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return b"\x00" * zeros + body


def _decode_cid(cid: bytes) -> bytes:
    """The multihash inside a binary CIDv1 with the libp2p-key codec."""
    try:
        version = decode_uvarint(cid, 0)
        if version is None:
            raise InvalidPeerID("truncated CID")
        if version[0] != _CID_V1:
            raise InvalidPeerID(f"peer id CID must be CIDv1, not version {version[0]}")
        codec = decode_uvarint(cid, version[1])
        if codec is None:
            raise InvalidPeerID("truncated CID")
    except ProtocolError as exc:
        raise InvalidPeerID(f"malformed CID varint: {exc}") from exc
    if codec[0] != LIBP2P_KEY_CODEC:
        raise InvalidPeerID(f"CID multicodec is 0x{codec[0]:x}, not libp2p-key (0x72)")
    return cid[codec[1] :]


class PeerID:
    """An immutable peer id, hashable and ordered by its bytes."""

    __slots__ = ("_b58", "_bytes")
    _bytes: bytes
    _b58: str | None

    def __init__(self, multihash: bytes) -> None:
        """Wrap the binary multihash ``multihash``, validating it (:class:`InvalidPeerID`)."""
        if not isinstance(multihash, (bytes, bytearray, memoryview)):
            raise InvalidPeerID(f"peer id must be bytes, not {type(multihash).__name__}")
        data = bytes(multihash)
        _validate_multihash(data)
        object.__setattr__(self, "_bytes", data)
        object.__setattr__(self, "_b58", None)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes) -> PeerID:
        """Parse a binary peer id (a multihash); :class:`InvalidPeerID` if malformed."""
        return cls(data)

    @classmethod
    def from_public_key(cls, public_key: PublicKey) -> PeerID:
        """The peer id of ``public_key`` (identity multihash if its encoding is <= 42 bytes)."""
        encoded = public_key.to_protobuf()
        if len(encoded) <= MAX_INLINE_KEY_LENGTH:
            mh = bytes((_MH_IDENTITY,)) + encode_uvarint(len(encoded)) + encoded
        else:
            mh = bytes((_MH_SHA2_256, 32)) + hashlib.sha256(encoded).digest()
        return cls(mh)

    @classmethod
    def from_base58(cls, text: str) -> PeerID:
        """Parse the legacy base58btc text form."""
        return cls(_b58decode(text))

    @classmethod
    def from_string(cls, text: str) -> PeerID:
        """Parse either text form: base58btc multihash (``Qm...``, ``1...``) or a CIDv1."""
        if not isinstance(text, str):
            raise InvalidPeerID(f"peer id text must be str, not {type(text).__name__}")
        if not text or len(text) > _MAX_TEXT:
            raise InvalidPeerID(f"peer id text of invalid length {len(text)}")
        if not (text.isascii() and text.isalnum()):
            raise InvalidPeerID("peer id text must be ASCII letters and digits only")
        if text[0] == "1" or text.startswith("Qm"):
            return cls.from_base58(text)
        prefix, body = text[0], text[1:]
        if prefix in "bB":
            cid = _b32decode(body)
        elif prefix in "kK":
            cid = _b36decode(body)
        elif prefix == "z":
            cid = _b58decode(body)
        else:
            raise InvalidPeerID(f"not a peer id: unsupported multibase prefix {prefix!r}")
        return cls(_decode_cid(cid))

    # -- encodings ---------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The binary multihash (what goes on the wire)."""
        return self._bytes

    def __bytes__(self) -> bytes:
        return self._bytes

    def to_base58(self) -> str:
        """The legacy base58btc text form, the one to display."""
        text = self._b58
        if text is None:
            text = base58.b58encode(self._bytes).decode("ascii")
            object.__setattr__(self, "_b58", text)
        return text

    def to_cid_string(self) -> str:
        """The CIDv1 (libp2p-key) text form in base32: ``b...``."""
        return "b" + _b32encode(bytes((_CID_V1, LIBP2P_KEY_CODEC)) + self._bytes)

    def __str__(self) -> str:
        return self.to_base58()

    def __repr__(self) -> str:
        return f"PeerID({self.to_base58()!r})"

    # -- keys --------------------------------------------------------------------------------

    @property
    def is_inline(self) -> bool:
        """``True`` when the public key is embedded (identity multihash)."""
        return self._bytes[0] == _MH_IDENTITY

    def extract_public_key(self) -> PublicKey | None:
        """The public key embedded in an identity peer id; ``None`` for a hashed one.

        Raises :class:`InvalidPeerID` if the embedded bytes are not a valid public key.
        """
        if self._bytes[0] != _MH_IDENTITY:
            return None
        got = decode_uvarint(self._bytes, 1)
        assert got is not None  # validated in __init__
        try:
            return unmarshal_public_key(self._bytes[got[1] :])
        except CryptoError as exc:
            raise InvalidPeerID(f"peer id embeds an invalid public key: {exc}") from exc

    def matches_public_key(self, public_key: PublicKey) -> bool:
        """``True`` iff this is the peer id of ``public_key``."""
        return PeerID.from_public_key(public_key)._bytes == self._bytes

    # -- value semantics ---------------------------------------------------------------------

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PeerID is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("PeerID is immutable")

    def __reduce__(self) -> tuple[type[PeerID], tuple[bytes]]:
        return (PeerID, (self._bytes,))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PeerID):
            return NotImplemented
        return self._bytes == other._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __lt__(self, other: PeerID) -> bool:
        if not isinstance(other, PeerID):
            return NotImplemented
        return self._bytes < other._bytes

    def __le__(self, other: PeerID) -> bool:
        if not isinstance(other, PeerID):
            return NotImplemented
        return self._bytes <= other._bytes

    def __gt__(self, other: PeerID) -> bool:
        if not isinstance(other, PeerID):
            return NotImplemented
        return self._bytes > other._bytes

    def __ge__(self, other: PeerID) -> bool:
        if not isinstance(other, PeerID):
            return NotImplemented
        return self._bytes >= other._bytes
