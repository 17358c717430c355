"""Ethereum addresses of secp256k1 identities."""

from __future__ import annotations

import pytest
from eth_keys.datatypes import PrivateKey as EthPrivateKey
from eth_utils.address import to_checksum_address as eth_utils_checksum
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnet.crypto import KeyPair, KeyType
from p2pnet.crypto.eth import (
    eth_address,
    eth_address_from_public_key,
    is_eth_address,
    to_checksum_address,
)
from p2pnet.crypto.keys import SECP256K1_N
from p2pnet.errors import CryptoError
from p2pnet.peer.peer_id import PeerID

# (private key, address) pairs published elsewhere:
KNOWN_PAIRS = [
    # The private key 1 (the generator point G): a common known-answer test, e.g. in the
    # ApeWorX/ape CLI account tests; cross-checked against eth-keys below.
    (
        "0x0000000000000000000000000000000000000000000000000000000000000001",
        "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf",
    ),
    # Hardhat / Anvil default development accounts #0 and #1, printed by `npx hardhat node`
    # and `anvil` (mnemonic "test test test test test test test test test test test junk").
    (
        "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    ),
    (
        "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    ),
    # The example of web3.js docs, web3.eth.accounts.privateKeyToAccount().
    (
        "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318",
        "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23",
    ),
]

# Checksummed addresses from EIP-55 itself (https://eips.ethereum.org/EIPS/eip-55).
EIP55_VECTORS = [
    "0x52908400098527886E0F7030069857D2E4169EE7",
    "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
    "0xde709f2102306220921060314715629080e2fb77",
    "0x27b1fdb04752bbc536007a920d24acb045561c26",
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]


@pytest.mark.parametrize(("private_key", "address"), KNOWN_PAIRS)
def test_known_pairs(private_key: str, address: str) -> None:
    kp = KeyPair.from_eth_private_key(private_key)
    assert eth_address_from_public_key(kp.public_key) == address
    pid = PeerID.from_public_key(kp.public_key)
    assert str(pid).startswith("16Uiu2HA")
    assert eth_address(pid) == address
    # through the text form only, as a remote peer would see it
    assert eth_address(PeerID.from_string(str(pid))) == address
    assert is_eth_address(address, strict=True)


def test_interop_secp256k1_peer_id() -> None:
    pid = PeerID.from_string("16Uiu2HAm3cuhhRL2msUuLF62KRSfneFDx94RsuouyW25Ho42cFMq")
    assert eth_address(pid) == "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=SECP256K1_N - 1))
def test_matches_eth_keys(scalar: int) -> None:
    secret = scalar.to_bytes(32, "big")
    expected = EthPrivateKey(secret).public_key.to_checksum_address()
    kp = KeyPair.from_secp256k1_secret(secret)
    assert eth_address_from_public_key(kp.public_key) == expected
    assert eth_address(PeerID.from_public_key(kp.public_key)) == expected


def test_eth_address_needs_secp256k1() -> None:
    ed = KeyPair.generate(KeyType.Ed25519)
    with pytest.raises(CryptoError, match="secp256k1"):
        eth_address_from_public_key(ed.public_key)
    with pytest.raises(CryptoError, match="Ed25519"):
        eth_address(PeerID.from_public_key(ed.public_key))
    hashed = PeerID.from_string("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
    with pytest.raises(CryptoError, match="does not embed"):
        eth_address(hashed)


@pytest.mark.parametrize("address", EIP55_VECTORS)
def test_eip55_vectors(address: str) -> None:
    assert to_checksum_address(address.lower()) == address
    assert to_checksum_address(bytes.fromhex(address[2:])) == address
    assert is_eth_address(address, strict=True)
    assert is_eth_address(address.lower())
    assert is_eth_address("0x" + address[2:].upper())
    swapped = address[:-1] + address[-1].swapcase() if address[-1].isalpha() else None
    if swapped is not None and swapped[2:] not in (swapped[2:].lower(), swapped[2:].upper()):
        assert not is_eth_address(swapped)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=20, max_size=20))
def test_checksum_matches_eth_utils(raw: bytes) -> None:
    expected = eth_utils_checksum(raw)
    assert to_checksum_address(raw) == expected
    assert to_checksum_address("0x" + raw.hex()) == expected
    assert is_eth_address(expected, strict=True)


def test_is_eth_address_rejects() -> None:
    good = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"
    assert is_eth_address(good)
    assert not is_eth_address(good.lower(), strict=True)
    assert not is_eth_address("0x7e5F4552091A69125d5DfCb7b8C2659029395Bdf")  # checksum broken
    assert not is_eth_address(good[2:])
    assert not is_eth_address(good + "0")
    assert not is_eth_address(good[:-1])
    assert not is_eth_address("0x" + "g" * 40)
    assert not is_eth_address(" " + good)
    assert not is_eth_address(bytes.fromhex(good[2:]))
    assert not is_eth_address(None)


def test_to_checksum_address_errors() -> None:
    with pytest.raises(CryptoError):
        to_checksum_address(b"\x00" * 19)
    with pytest.raises(CryptoError):
        to_checksum_address("0x1234")


# viem's documented signMessage example: Anvil account #0 signs "hello world"
# (viem docs, actions/wallet/signMessage; the same value is in viem's test suite).
_ANVIL0_SECRET = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
_HELLO_SIG = bytes.fromhex(
    "a461f509887bd19e312c0c58467ce8ff8e300d3c1a90b608a760c5b80318eaf1"
    "5fe57c96f9175d6cd4daad4663763baa7e78836e067d0163e9a2ccf2ff753f5b1b"
)


def test_personal_sign_matches_viem_vector() -> None:
    from p2pnet.crypto.eth import personal_sign, recover_personal_signer

    assert personal_sign(_ANVIL0_SECRET, b"hello world") == _HELLO_SIG
    signer = recover_personal_signer(b"hello world", _HELLO_SIG)
    assert signer == "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
    assert recover_personal_signer(b"hello world!", _HELLO_SIG) != signer


@pytest.mark.parametrize(
    "bad",
    [
        _HELLO_SIG[:64],  # too short
        _HELLO_SIG[:64] + b"\x01",  # v not 27/28
        b"\x00" * 32 + _HELLO_SIG[32:],  # r = 0
        _HELLO_SIG[:32] + (2**256 - 1).to_bytes(32, "big") + b"\x1b",  # high s
    ],
)
def test_recover_rejects_malformed_signatures(bad: bytes) -> None:
    from p2pnet.crypto.eth import recover_personal_signer

    with pytest.raises(CryptoError):
        recover_personal_signer(b"hello world", bad)
