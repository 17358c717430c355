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

__all__ = ["eth_address", "eth_address_from_public_key", "is_eth_address", "to_checksum_address"]

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
