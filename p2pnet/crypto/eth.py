"""Ethereum addresses of secp256k1 identities.

An Ethereum address is the last 20 bytes of keccak-256 over the 64-byte uncompressed public key
(``X || Y``, without the ``04`` prefix), written as ``0x`` + 40 hex digits with the EIP-55
mixed-case checksum (https://eips.ethereum.org/EIPS/eip-55).

A secp256k1 libp2p identity has an address, and its peer id (``16Uiu2HA...``) embeds the key in
an identity multihash, so the address follows from the peer id alone.

keccak-256 comes from ``eth-hash`` (with its ``pycryptodome`` backend), imported on first use:
the rest of the eth-utils suite costs over 100 ms to import and is not needed here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from p2pnet.crypto.keys import PublicKey, Secp256k1PublicKey
from p2pnet.errors import CryptoError

if TYPE_CHECKING:
    from p2pnet.peer.peer_id import PeerID

__all__ = [
    "eth_address",
    "eth_address_from_public_key",
    "is_eth_address",
    "personal_sign",
    "recover_personal_signer",
    "to_checksum_address",
]

_HEX_ADDRESS = re.compile(r"0[xX][0-9a-fA-F]{40}")
_keccak_fn: Callable[[bytes], bytes] | None = None


def _keccak256(data: bytes) -> bytes:
    global _keccak_fn
    if _keccak_fn is None:
        try:
            from eth_hash.auto import keccak
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise CryptoError(f"keccak-256 is unavailable: {exc}") from exc
        _keccak_fn = keccak
    return _keccak_fn(data)


def _checksum(hex40: str) -> str:
    """EIP-55: uppercase each letter whose nibble in keccak(lowercase hex) is >= 8."""
    lower = hex40.lower()
    digest = _keccak256(lower.encode("ascii")).hex()
    return "0x" + "".join(
        ch.upper() if ch.isalpha() and int(digest[i], 16) >= 8 else ch for i, ch in enumerate(lower)
    )


def to_checksum_address(address: str | bytes) -> str:
    """The EIP-55 form of a 20-byte address given as bytes or as ``0x`` + 40 hex digits."""
    if isinstance(address, (bytes, bytearray)):
        if len(address) != 20:
            raise CryptoError(f"Ethereum address must be 20 bytes, got {len(address)}")
        return _checksum(bytes(address).hex())
    if not isinstance(address, str) or not _HEX_ADDRESS.fullmatch(address):
        raise CryptoError(f"not an Ethereum address: {address!r}")
    return _checksum(address[2:])


def eth_address_from_public_key(public_key: PublicKey) -> str:
    """The EIP-55 checksummed address of a secp256k1 public key."""
    if not isinstance(public_key, Secp256k1PublicKey):
        raise CryptoError(
            f"only secp256k1 keys have an Ethereum address, not {public_key.key_type.name}"
        )
    digest = _keccak256(public_key.to_uncompressed()[1:])
    return _checksum(digest[-20:].hex())


def eth_address(peer_id: PeerID) -> str:
    """The Ethereum address of a secp256k1 peer, derived from its peer id alone."""
    key = peer_id.extract_public_key()
    if key is None:
        raise CryptoError(f"peer id {peer_id} does not embed its public key (hashed key)")
    if not isinstance(key, Secp256k1PublicKey):
        raise CryptoError(
            f"peer id {peer_id} has a {key.key_type.name} key; "
            "only secp256k1 peers have an Ethereum address"
        )
    return eth_address_from_public_key(key)


def is_eth_address(value: object, *, strict: bool = False) -> bool:
    """``True`` for ``0x`` + 40 hex digits whose letter case is valid.

    All-lowercase or all-uppercase digits carry no checksum and are accepted unless ``strict``;
    mixed case must match the EIP-55 checksum. Never raises.
    """
    if not isinstance(value, str) or not _HEX_ADDRESS.fullmatch(value):
        return False
    body = value[2:]
    if not strict and (body == body.lower() or body == body.upper()):
        return True
    return _checksum(body)[2:] == body


# -- EIP-191 personal_sign -------------------------------------------------------------------

#: Bytes of a ``personal_sign`` signature: r (32) || s (32) || v (1, 27 or 28).
PERSONAL_SIGNATURE_SIZE = 65
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def personal_digest(message: bytes) -> bytes:
    """keccak256("\\x19Ethereum Signed Message:\\n" + len(message) + message) (EIP-191)."""
    prefix = b"\x19Ethereum Signed Message:\n" + str(len(message)).encode("ascii")
    return _keccak256(prefix + message)


def personal_sign(secret: bytes, message: bytes) -> bytes:
    """Sign ``message`` as Ethereum wallets' ``personal_sign`` does (low s, v in {27, 28})."""
    from coincurve import PrivateKey

    sig: bytes = PrivateKey(secret).sign_recoverable(personal_digest(message), hasher=None)
    return sig[:64] + bytes([27 + sig[64]])


def recover_personal_signer(message: bytes, signature: bytes) -> str:
    """The lowercase ``0x`` address that produced ``signature`` over ``message``.

    Raises :class:`CryptoError` for a malformed signature (wrong size, v not 27/28, high s).
    """
    from coincurve import PublicKey

    if len(signature) != PERSONAL_SIGNATURE_SIZE:
        raise CryptoError(f"personal_sign signature must be 65 bytes, got {len(signature)}")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28) or not 0 < r < _SECP256K1_N or not 0 < s <= _SECP256K1_N // 2:
        raise CryptoError("malformed personal_sign signature (need r||s||v, low s, v 27/28)")
    try:
        pub = PublicKey.from_signature_and_message(
            signature[:64] + bytes([v - 27]), personal_digest(message), hasher=None
        )
    except Exception as exc:  # coincurve raises plain Exception for unrecoverable input
        raise CryptoError(f"signature does not recover a public key: {exc}") from None
    return "0x" + _keccak256(pub.format(compressed=False)[1:])[-20:].hex()
