"""Identity keys (Ed25519, secp256k1, RSA, ECDSA) in the libp2p encoding, and Ethereum addresses."""

from p2pnet.crypto.keys import (
    KeyPair,
    KeyType,
    PrivateKey,
    PublicKey,
    unmarshal_private_key,
    unmarshal_public_key,
)

__all__ = [
    "KeyPair",
    "KeyType",
    "PrivateKey",
    "PublicKey",
    "unmarshal_private_key",
    "unmarshal_public_key",
]
