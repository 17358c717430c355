"""libp2p identity keys: Ed25519 and secp256k1 (the fast paths), RSA and ECDSA.

Keys travel on the wire as the protobuf messages of the peer-ids spec
(https://github.com/libp2p/specs/blob/master/peer-ids/peer-ids.md)::

    message PublicKey  { required KeyType Type = 1; required bytes Data = 2; }
    message PrivateKey { required KeyType Type = 1; required bytes Data = 2; }

Encoding is deterministic (fields in tag order, minimal varints, no extra fields), so it is
written by hand here rather than through the generated protobuf module: that is faster, keeps
``import p2pnet.crypto.keys`` free of the protobuf runtime, and guarantees the exact bytes a peer
id is hashed from. Decoding accepts any valid protobuf encoding of the two fields.

The ``Data`` field per key type:

* Ed25519: public 32 raw bytes; private 64 bytes ``seed || public`` (the legacy 96-byte form
  ``seed || public || public`` is accepted on decode). Signature: plain Ed25519, 64 bytes.
* secp256k1: public 33-byte compressed point (65-byte uncompressed accepted on decode and
  normalised to compressed); private 32-byte scalar. Signature: DER ECDSA over SHA-256(data);
  we produce low-S signatures and accept high-S ones (as go-libp2p does).
* RSA: public DER SubjectPublicKeyInfo, 2048 to 8192 bits; private PKCS#1 DER. Signature:
  PKCS#1 v1.5 over SHA-256.
* ECDSA: public DER SubjectPublicKeyInfo (P-256, P-384, P-521); private SEC1 DER. Signature:
  DER over SHA-256.

RSA and ECDSA go through ``cryptography``, imported only when such a key is first met.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from enum import IntEnum
from typing import Any, Final, Self

import nacl.bindings as _sodium
from coincurve import PrivateKey as _CCPrivateKey
from coincurve import PublicKey as _CCPublicKey
from coincurve._libsecp256k1 import ffi as _secp_ffi
from coincurve._libsecp256k1 import lib as _secp_lib
from coincurve.context import GLOBAL_CONTEXT as _SECP_CTX

from p2pnet.errors import CryptoError, ProtocolError
from p2pnet.wire.varint import decode_uvarint, encode_uvarint

__all__ = [
    "ECDSAPrivateKey",
    "ECDSAPublicKey",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "KeyPair",
    "KeyType",
    "PrivateKey",
    "PublicKey",
    "RSAPrivateKey",
    "RSAPublicKey",
    "Secp256k1PrivateKey",
    "Secp256k1PublicKey",
    "unmarshal_private_key",
    "unmarshal_public_key",
]

#: Order of the secp256k1 group.
SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

#: RSA key sizes accepted (go-libp2p MinRsaKeyBits / maxRsaKeyBits).
RSA_MIN_BITS: Final = 2048
RSA_MAX_BITS: Final = 8192

#: Upper bounds for the Data field of an encoded key, checked before any parsing: the largest
#: legitimate public key is an 8192-bit RSA SubjectPublicKeyInfo (about 1.05 KB), the largest
#: private key an 8192-bit PKCS#1 RSA key (about 4.7 KB).
MAX_PUBLIC_KEY_DATA: Final = 2048
MAX_PRIVATE_KEY_DATA: Final = 8192


class KeyType(IntEnum):
    """The ``KeyType`` enum of the peer-ids spec."""

    RSA = 0
    Ed25519 = 1
    Secp256k1 = 2
    ECDSA = 3


# --------------------------------------------------------------------------------------------
# protobuf helpers (PublicKey / PrivateKey share one layout)


def _encode_key_message(key_type: KeyType, data: bytes) -> bytes:
    # field 1 (varint): tag 0x08; field 2 (bytes): tag 0x12. KeyType values are < 128.
    return b"\x08" + bytes((int(key_type),)) + b"\x12" + encode_uvarint(len(data)) + data


def _decode_key_message(buf: bytes, what: str, max_data: int) -> tuple[KeyType, bytes]:
    """Parse a PublicKey/PrivateKey message into ``(KeyType, Data)``, or raise CryptoError."""
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise CryptoError(f"{what} must be bytes, not {type(buf).__name__}")
    buf = bytes(buf)
    key_type: int | None = None
    data: bytes | None = None
    pos = 0
    end = len(buf)
    try:
        while pos < end:
            tag = decode_uvarint(buf, pos)
            if tag is None:
                raise CryptoError(f"truncated {what}")
            key, pos = tag
            field, wire_type = key >> 3, key & 7
            if field == 0:
                raise CryptoError(f"invalid field number 0 in {what}")
            if (field == 1 and wire_type != 0) or (field == 2 and wire_type != 2):
                raise CryptoError(f"field {field} of {what} has the wrong wire type")
            if wire_type == 0:
                got = decode_uvarint(buf, pos)
                if got is None:
                    raise CryptoError(f"truncated {what}")
                value, pos = got
                if field == 1:
                    key_type = value
            elif wire_type == 2:
                got = decode_uvarint(buf, pos)
                if got is None:
                    raise CryptoError(f"truncated {what}")
                length, pos = got
                if length > end - pos:
                    raise CryptoError(f"truncated {what}")
                if field == 2:
                    if length > max_data:
                        raise CryptoError(f"{what} Data field too long ({length} bytes)")
                    data = buf[pos : pos + length]
                pos += length
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            else:
                raise CryptoError(f"unsupported protobuf wire type {wire_type} in {what}")
            if pos > end:
                raise CryptoError(f"truncated {what}")
    except ProtocolError as exc:  # non-minimal or over-long varint
        raise CryptoError(f"malformed {what}: {exc}") from exc
    if key_type is None or data is None:
        raise CryptoError(f"{what} lacks a required field (Type and Data are required)")
    try:
        kt = KeyType(key_type)
    except ValueError:
        raise CryptoError(f"unknown key type {key_type} in {what}") from None
    return kt, data


# --------------------------------------------------------------------------------------------
# abstract interfaces


class PublicKey(ABC):
    """A public identity key. Equal and hashed by its protobuf encoding."""

    __slots__ = ("_pb",)
    key_type: KeyType
    _pb: bytes

    def _set_encoding(self) -> None:
        self._pb = _encode_key_message(self.key_type, self.to_bytes())

    @abstractmethod
    def to_bytes(self) -> bytes:
        """The raw ``Data`` field of the PublicKey message."""

    def to_protobuf(self) -> bytes:
        """The deterministic ``PublicKey`` protobuf encoding (what peer ids are made from)."""
        return self._pb

    @abstractmethod
    def verify(self, data: bytes, signature: bytes) -> bool:
        """``True`` iff ``signature`` is a valid signature of ``data``; never raises."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return self._pb == other._pb

    def __hash__(self) -> int:
        return hash(self._pb)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.to_bytes().hex()}>"


class PrivateKey(ABC):
    """A private identity key able to sign."""

    __slots__ = ()
    key_type: KeyType

    @abstractmethod
    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` the way libp2p does for this key type."""

    @abstractmethod
    def public_key(self) -> PublicKey:
        """The matching public key."""

    @abstractmethod
    def to_bytes(self) -> bytes:
        """The raw ``Data`` field of the PrivateKey message."""

    def to_protobuf(self) -> bytes:
        """The ``PrivateKey`` protobuf encoding (for storing an identity on disk)."""
        return _encode_key_message(self.key_type, self.to_bytes())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivateKey):
            return NotImplemented
        return self.key_type == other.key_type and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash((self.key_type, self.to_bytes()))

    def __repr__(self) -> str:
        # Never print secret material.
        return f"<{type(self).__name__} public={self.public_key().to_bytes().hex()}>"


# --------------------------------------------------------------------------------------------
# Ed25519 (libsodium through pynacl)


class Ed25519PublicKey(PublicKey):
    __slots__ = ("_raw",)
    key_type = KeyType.Ed25519

    def __init__(self, raw: bytes) -> None:
        raw = bytes(raw)
        if len(raw) != 32:
            raise CryptoError(f"Ed25519 public key must be 32 bytes, got {len(raw)}")
        self._raw = raw
        self._set_encoding()

    def to_bytes(self) -> bytes:
        return self._raw

    def verify(self, data: bytes, signature: bytes) -> bool:
        # crypto_sign_open takes signature||message, so the length must be checked here.
        if not isinstance(signature, (bytes, bytearray)) or len(signature) != 64:
            return False
        try:
            _sodium.crypto_sign_open(bytes(signature) + bytes(data), self._raw)
        except Exception:
            return False
        return True


class Ed25519PrivateKey(PrivateKey):
    __slots__ = ("_public", "_sk")
    key_type = KeyType.Ed25519

    def __init__(self, seed: bytes) -> None:
        seed = bytes(seed)
        if len(seed) != 32:
            raise CryptoError(f"Ed25519 seed must be 32 bytes, got {len(seed)}")
        pk, sk = _sodium.crypto_sign_seed_keypair(seed)
        self._sk: bytes = sk  # 64 bytes: seed || public
        self._public = Ed25519PublicKey(pk)

    @classmethod
    def generate(cls) -> Ed25519PrivateKey:
        return cls(os.urandom(32))

    @classmethod
    def from_bytes(cls, data: bytes) -> Ed25519PrivateKey:
        """Decode the Data field: 64 bytes ``seed || public`` or legacy 96 bytes."""
        data = bytes(data)
        if len(data) == 96:
            if data[64:] != data[32:64]:
                raise CryptoError("legacy 96-byte Ed25519 private key: public key copies differ")
            data = data[:64]
        if len(data) != 64:
            raise CryptoError(f"Ed25519 private key must be 64 bytes, got {len(data)}")
        key = cls(data[:32])
        if key._public.to_bytes() != data[32:]:
            raise CryptoError("Ed25519 private key: embedded public key does not match the seed")
        return key

    @property
    def seed(self) -> bytes:
        return self._sk[:32]

    def sign(self, data: bytes) -> bytes:
        signed: bytes = _sodium.crypto_sign(bytes(data), self._sk)
        return signed[:64]

    def public_key(self) -> Ed25519PublicKey:
        return self._public

    def to_bytes(self) -> bytes:
        return self._sk


# --------------------------------------------------------------------------------------------
# secp256k1 (libsecp256k1 through coincurve)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Secp256k1PublicKey(PublicKey):
    __slots__ = ("_cc", "_raw")
    key_type = KeyType.Secp256k1

    def __init__(self, raw: bytes) -> None:
        raw = bytes(raw)
        if len(raw) not in (33, 65) or raw[0] not in (2, 3, 4):
            raise CryptoError(
                "secp256k1 public key must be a 33-byte compressed or 65-byte uncompressed point"
            )
        try:
            self._cc = _CCPublicKey(raw)
        except Exception as exc:
            raise CryptoError(f"invalid secp256k1 public key: {exc}") from exc
        self._raw: bytes = self._cc.format(compressed=True)
        self._set_encoding()

    @classmethod
    def _from_cc(cls, cc: _CCPublicKey) -> Secp256k1PublicKey:
        return cls(cc.format(compressed=True))

    def to_bytes(self) -> bytes:
        return self._raw

    def to_uncompressed(self) -> bytes:
        """The 65-byte SEC1 uncompressed point ``04 || X || Y``."""
        out: bytes = self._cc.format(compressed=False)
        return out

    def verify(self, data: bytes, signature: bytes) -> bool:
        if not isinstance(signature, (bytes, bytearray)) or not 8 <= len(signature) <= 72:
            return False
        try:
            sig = _secp_ffi.new("secp256k1_ecdsa_signature *")
            sig_bytes = bytes(signature)
            if not _secp_lib.secp256k1_ecdsa_signature_parse_der(
                _SECP_CTX.ctx, sig, sig_bytes, len(sig_bytes)
            ):
                return False
            # libsecp256k1 only verifies low-S signatures; go-libp2p (btcec) accepts high-S as
            # well, so normalise first to interoperate with both.
            _secp_lib.secp256k1_ecdsa_signature_normalize(_SECP_CTX.ctx, sig, sig)
            ok = _secp_lib.secp256k1_ecdsa_verify(
                _SECP_CTX.ctx, sig, _sha256(bytes(data)), self._cc.public_key
            )
        except Exception:
            return False
        return bool(ok)


class Secp256k1PrivateKey(PrivateKey):
    __slots__ = ("_cc", "_public", "_secret")
    key_type = KeyType.Secp256k1

    def __init__(self, secret: bytes) -> None:
        secret = bytes(secret)
        if len(secret) != 32:
            raise CryptoError(f"secp256k1 private key must be 32 bytes, got {len(secret)}")
        k = int.from_bytes(secret, "big")
        if not 1 <= k < SECP256K1_N:
            raise CryptoError("secp256k1 private key out of range (need 1 <= k < n)")
        self._secret = secret
        self._cc = _CCPrivateKey(secret)
        self._public = Secp256k1PublicKey._from_cc(self._cc.public_key)

    @classmethod
    def generate(cls) -> Secp256k1PrivateKey:
        while True:
            secret = os.urandom(32)
            if 1 <= int.from_bytes(secret, "big") < SECP256K1_N:
                return cls(secret)

    def sign(self, data: bytes) -> bytes:
        # DER ECDSA over SHA-256(data), deterministic (RFC 6979) and low-S.
        sig: bytes = self._cc.sign(bytes(data), hasher=_sha256)
        return sig

    def public_key(self) -> Secp256k1PublicKey:
        return self._public

    def to_bytes(self) -> bytes:
        return self._secret


# --------------------------------------------------------------------------------------------
# RSA and ECDSA through `cryptography` (imported lazily: rarely needed)


def _load_der_public(der: bytes, what: str) -> tuple[Any, bytes]:
    """A `cryptography` public key from DER PKIX bytes, and its canonical DER encoding."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_der_public_key(bytes(der))
    except Exception as exc:
        raise CryptoError(f"invalid {what} public key (DER PKIX expected): {exc}") from exc
    raw: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, raw


def _load_der_private(der: bytes, what: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_der_private_key(bytes(der), password=None)
    except Exception as exc:
        raise CryptoError(f"invalid {what} private key (DER expected): {exc}") from exc


def _der_private_bytes(key: Any) -> bytes:
    """The private key as libp2p carries it: PKCS#1 DER for RSA, SEC1 DER for ECDSA."""
    from cryptography.hazmat.primitives import serialization

    der: bytes = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return der


def _public_der(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    der: bytes = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


class RSAPublicKey(PublicKey):
    __slots__ = ("_key", "_raw")
    key_type = KeyType.RSA

    def __init__(self, der: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        key, raw = _load_der_public(der, "RSA")
        if not isinstance(key, rsa.RSAPublicKey):
            raise CryptoError("key of type RSA is not an RSA public key")
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise CryptoError(
                f"RSA key of {key.key_size} bits (allowed {RSA_MIN_BITS}..{RSA_MAX_BITS})"
            )
        self._key: Any = key
        self._raw = raw
        self._set_encoding()

    def to_bytes(self) -> bytes:
        return self._raw

    def verify(self, data: bytes, signature: bytes) -> bool:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            self._key.verify(bytes(signature), bytes(data), padding.PKCS1v15(), hashes.SHA256())
        except Exception:
            return False
        return True


class ECDSAPublicKey(PublicKey):
    __slots__ = ("_key", "_raw")
    key_type = KeyType.ECDSA

    def __init__(self, der: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        key, raw = _load_der_public(der, "ECDSA")
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CryptoError("key of type ECDSA is not an elliptic-curve public key")
        if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            raise CryptoError(f"unsupported ECDSA curve {key.curve.name}")
        self._key: Any = key
        self._raw = raw
        self._set_encoding()

    def to_bytes(self) -> bytes:
        return self._raw

    def verify(self, data: bytes, signature: bytes) -> bool:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            self._key.verify(bytes(signature), bytes(data), ec.ECDSA(hashes.SHA256()))
        except Exception:
            return False
        return True


class RSAPrivateKey(PrivateKey):
    """An RSA private key (Data: PKCS#1 DER). Supported for completeness; Ed25519 is the default."""

    __slots__ = ("_key", "_public")
    key_type = KeyType.RSA

    def __init__(self, key: Any) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        if not isinstance(key, rsa.RSAPrivateKey):
            raise CryptoError("not an RSA private key")
        self._key: Any = key
        self._public = RSAPublicKey(_public_der(key))

    @classmethod
    def generate(cls, bits: int = RSA_MIN_BITS) -> RSAPrivateKey:
        from cryptography.hazmat.primitives.asymmetric import rsa

        if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS:
            raise CryptoError(f"RSA key size must be {RSA_MIN_BITS}..{RSA_MAX_BITS} bits")
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=bits))

    @classmethod
    def from_bytes(cls, der: bytes) -> RSAPrivateKey:
        """Decode a PKCS#1 DER RSA private key."""
        return cls(_load_der_private(der, "RSA"))

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        sig: bytes = self._key.sign(bytes(data), padding.PKCS1v15(), hashes.SHA256())
        return sig

    def public_key(self) -> RSAPublicKey:
        return self._public

    def to_bytes(self) -> bytes:
        return _der_private_bytes(self._key)


class ECDSAPrivateKey(PrivateKey):
    """An ECDSA private key (Data: SEC1 DER, as go's x509.MarshalECPrivateKey writes it)."""

    __slots__ = ("_key", "_public")
    key_type = KeyType.ECDSA

    def __init__(self, key: Any) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CryptoError("not an elliptic-curve private key")
        self._key: Any = key
        self._public = ECDSAPublicKey(_public_der(key))

    @classmethod
    def generate(cls) -> ECDSAPrivateKey:
        """A fresh P-256 key (the curve go-libp2p and js-libp2p default to)."""
        from cryptography.hazmat.primitives.asymmetric import ec

        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_bytes(cls, der: bytes) -> ECDSAPrivateKey:
        """Decode a SEC1 (or PKCS#8) DER EC private key."""
        return cls(_load_der_private(der, "ECDSA"))

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        sig: bytes = self._key.sign(bytes(data), ec.ECDSA(hashes.SHA256()))
        return sig

    def public_key(self) -> ECDSAPublicKey:
        return self._public

    def to_bytes(self) -> bytes:
        return _der_private_bytes(self._key)


# --------------------------------------------------------------------------------------------
# decoding entry points


def unmarshal_public_key(data: bytes) -> PublicKey:
    """Decode a protobuf ``PublicKey``; :class:`CryptoError` if malformed or unsupported."""
    key_type, raw = _decode_key_message(data, "PublicKey", max_data=MAX_PUBLIC_KEY_DATA)
    if key_type is KeyType.Ed25519:
        return Ed25519PublicKey(raw)
    if key_type is KeyType.Secp256k1:
        return Secp256k1PublicKey(raw)
    if key_type is KeyType.RSA:
        return RSAPublicKey(raw)
    return ECDSAPublicKey(raw)


def unmarshal_private_key(data: bytes) -> PrivateKey:
    """Decode a protobuf ``PrivateKey``; :class:`CryptoError` if malformed or unsupported.

    RSA and ECDSA private keys need the ``cryptography`` package (imported on first use).
    """
    key_type, raw = _decode_key_message(data, "PrivateKey", max_data=MAX_PRIVATE_KEY_DATA)
    if key_type is KeyType.Ed25519:
        return Ed25519PrivateKey.from_bytes(raw)
    if key_type is KeyType.Secp256k1:
        return Secp256k1PrivateKey(raw)
    if key_type is KeyType.RSA:
        return RSAPrivateKey.from_bytes(raw)
    return ECDSAPrivateKey.from_bytes(raw)


# --------------------------------------------------------------------------------------------
# key pairs


class KeyPair:
    """A private key and its public key: a node's identity."""

    __slots__ = ("private_key", "public_key")
    private_key: PrivateKey
    public_key: PublicKey

    def __init__(self, private_key: PrivateKey, public_key: PublicKey | None = None) -> None:
        derived = private_key.public_key()
        if public_key is not None and public_key != derived:
            raise CryptoError("public key does not belong to the private key")
        self.private_key = private_key
        self.public_key = derived

    @property
    def key_type(self) -> KeyType:
        return self.private_key.key_type

    @classmethod
    def generate(cls, key_type: KeyType = KeyType.Ed25519) -> Self:
        """A fresh random key pair (RSA keys have 2048 bits, ECDSA keys use P-256)."""
        if key_type == KeyType.Ed25519:
            return cls(Ed25519PrivateKey.generate())
        if key_type == KeyType.Secp256k1:
            return cls(Secp256k1PrivateKey.generate())
        if key_type == KeyType.RSA:
            return cls(RSAPrivateKey.generate())
        if key_type == KeyType.ECDSA:
            return cls(ECDSAPrivateKey.generate())
        raise CryptoError(f"unknown key type {key_type!r}")

    @classmethod
    def from_ed25519_seed(cls, seed: bytes) -> Self:
        """The Ed25519 key pair of a 32-byte seed."""
        return cls(Ed25519PrivateKey(seed))

    @classmethod
    def from_secp256k1_secret(cls, secret: bytes) -> Self:
        """The secp256k1 key pair of a 32-byte big-endian scalar ``1 <= k < n``."""
        return cls(Secp256k1PrivateKey(secret))

    @classmethod
    def from_eth_private_key(cls, key: str) -> Self:
        """The secp256k1 key pair of an Ethereum private key: 64 hex digits, optional ``0x``."""
        if not isinstance(key, str):
            raise CryptoError("Ethereum private key must be a hex string")
        text = key.strip()
        if text[:2] in ("0x", "0X"):
            text = text[2:]
        if len(text) != 64:
            raise CryptoError(
                f"Ethereum private key must be 64 hex digits (32 bytes), got {len(text)} characters"
            )
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            raise CryptoError("Ethereum private key is not valid hex") from None
        return cls(Secp256k1PrivateKey(secret))

    @classmethod
    def from_protobuf(cls, data: bytes) -> Self:
        """The key pair of a protobuf ``PrivateKey`` (as written by :meth:`to_protobuf`)."""
        return cls(unmarshal_private_key(data))

    def to_protobuf(self) -> bytes:
        """The protobuf ``PrivateKey`` encoding of the private key."""
        return self.private_key.to_protobuf()

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyPair):
            return NotImplemented
        return self.private_key == other.private_key

    def __hash__(self) -> int:
        return hash(self.private_key)

    def __repr__(self) -> str:
        return f"<KeyPair {self.key_type.name} public={self.public_key.to_bytes().hex()}>"
