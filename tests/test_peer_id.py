"""Peer ids: derivation from keys, binary and text forms, validation."""

from __future__ import annotations

import copy
import hashlib
import pickle

import base58
import multibase  # type: ignore[import-untyped]
import multihash  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnet.crypto import KeyPair, KeyType
from p2pnet.crypto.keys import unmarshal_public_key
from p2pnet.errors import CryptoError, InvalidPeerID, P2PError
from p2pnet.peer.peer_id import PeerID

ONE = bytes(31) + b"\x01"

# From /work/shared/INTEROP-NOTES.md, checked against js-libp2p.
ED25519_SEED_ONE_ID = "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
SECP256K1_ONE_ID = "16Uiu2HAm3cuhhRL2msUuLF62KRSfneFDx94RsuouyW25Ho42cFMq"

# Examples from the peer-ids spec, section "String representation / Decoding".
SPEC_CID = "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe"
SPEC_QM = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
SPEC_ED25519 = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"

# Public keys of the peer-ids spec test vectors (protobuf hex); see tests/test_keys.py.
SPEC_ED25519_PUB = "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
SPEC_SECP256K1_PUB = "08021221037777e994e452c21604f91de093ce415f5432f701dd8cd1a7a6fea0e630bfca99"
SPEC_ECDSA_PUB = (
    "0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004de3d300fa36ae0e8f5d530899d83ab"
    "ab44abf3161f162a4bc901d8e6ecda020e8b6d5f8da30525e71d6851510c098e5c47c646a597fb4dcec034e9f77c"
    "409e62"
)


def test_interop_vectors() -> None:
    ed = PeerID.from_public_key(KeyPair.from_ed25519_seed(ONE).public_key)
    assert str(ed) == ED25519_SEED_ONE_ID
    secp = PeerID.from_public_key(KeyPair.from_secp256k1_secret(ONE).public_key)
    assert str(secp) == SECP256K1_ONE_ID


def _independent_peer_id(pub_pb: bytes) -> str:
    """The peer id text computed with py-multihash and base58 (a separate implementation)."""
    if len(pub_pb) <= 42:
        mh = multihash.encode(pub_pb, 0x00)
    else:
        mh = multihash.encode(hashlib.sha256(pub_pb).digest(), 0x12)
    return base58.b58encode(mh).decode()


@pytest.mark.parametrize(
    ("pub_hex", "inline", "prefix"),
    [
        (SPEC_ED25519_PUB, True, "12D3KooW"),
        (SPEC_SECP256K1_PUB, True, "16Uiu2HA"),
        (SPEC_ECDSA_PUB, False, "Qm"),
    ],
)
def test_spec_keys_to_peer_ids(pub_hex: str, inline: bool, prefix: str) -> None:
    pub_pb = bytes.fromhex(pub_hex)
    key = unmarshal_public_key(pub_pb)
    pid = PeerID.from_public_key(key)
    assert str(pid) == _independent_peer_id(pub_pb)
    assert str(pid).startswith(prefix)
    assert pid.is_inline is inline
    assert pid.matches_public_key(key)
    assert pid.extract_public_key() == (key if inline else None)


def test_rsa_peer_id_is_sha256() -> None:
    kp = KeyPair.generate(KeyType.RSA)
    pid = PeerID.from_public_key(kp.public_key)
    assert pid.to_bytes()[:2] == b"\x12\x20"
    assert pid.to_bytes()[2:] == hashlib.sha256(kp.public_key.to_protobuf()).digest()
    assert str(pid).startswith("Qm")
    assert pid.extract_public_key() is None
    assert pid.matches_public_key(kp.public_key)
    assert not pid.matches_public_key(KeyPair.generate().public_key)


def test_spec_text_examples() -> None:
    cid = PeerID.from_string(SPEC_CID)
    qm = PeerID.from_string(SPEC_QM)
    assert cid == qm
    assert cid.to_cid_string() == SPEC_CID
    assert qm.to_base58() == SPEC_QM
    ed = PeerID.from_string(SPEC_ED25519)
    assert str(ed) == SPEC_ED25519
    key = ed.extract_public_key()
    assert key is not None and key.key_type == KeyType.Ed25519
    assert ed.matches_public_key(key)
    assert PeerID.from_string(ed.to_cid_string()) == ed


@pytest.mark.parametrize("seed", [ONE, b"\x07" * 32])
def test_cid_forms(seed: bytes) -> None:
    pid = PeerID.from_public_key(KeyPair.from_ed25519_seed(seed).public_key)
    cid_bytes = b"\x01\x72" + pid.to_bytes()
    text = pid.to_cid_string()
    assert text == multibase.encode("base32", cid_bytes).decode()
    assert text.startswith("bafz")
    assert PeerID.from_string(text) == pid
    assert PeerID.from_string(multibase.encode("base32upper", cid_bytes).decode()) == pid
    assert PeerID.from_string(multibase.encode("base36", cid_bytes).decode()) == pid
    assert PeerID.from_string(multibase.encode("base36upper", cid_bytes).decode()) == pid
    assert PeerID.from_string(multibase.encode("base58btc", cid_bytes).decode()) == pid


def test_binary_roundtrip_and_value_semantics() -> None:
    pid = PeerID.from_string(ED25519_SEED_ONE_ID)
    assert PeerID.from_bytes(pid.to_bytes()) == pid
    assert PeerID(pid.to_bytes()) == pid
    assert bytes(pid) == pid.to_bytes()
    assert PeerID.from_base58(ED25519_SEED_ONE_ID) == pid
    assert repr(pid) == f"PeerID('{ED25519_SEED_ONE_ID}')"
    assert hash(pid) == hash(PeerID.from_bytes(pid.to_bytes()))
    assert pid != ED25519_SEED_ONE_ID
    assert pid != pid.to_bytes()
    assert pickle.loads(pickle.dumps(pid)) == pid
    assert copy.deepcopy(pid) == pid
    assert len({pid, PeerID.from_string(pid.to_cid_string())}) == 1


def test_immutable() -> None:
    pid = PeerID.from_string(ED25519_SEED_ONE_ID)
    with pytest.raises(AttributeError):
        pid._bytes = b""
    with pytest.raises(AttributeError):
        del pid._bytes
    with pytest.raises(AttributeError):
        pid.foo = 1


def test_ordering_by_bytes() -> None:
    ids = [PeerID.from_public_key(KeyPair.generate().public_key) for _ in range(10)]
    ids += [PeerID.from_string(SPEC_QM), PeerID.from_string(SECP256K1_ONE_ID)]
    assert sorted(ids) == sorted(ids, key=lambda p: p.to_bytes())
    a, b = sorted(ids)[:2]
    assert a < b and a <= b and b > a and b >= a and a <= a and a >= a
    with pytest.raises(TypeError):
        _ = a < b"x"  # type: ignore[operator]


def test_matches_public_key() -> None:
    kp = KeyPair.from_ed25519_seed(ONE)
    pid = PeerID.from_public_key(kp.public_key)
    assert pid.matches_public_key(kp.public_key)
    assert not pid.matches_public_key(KeyPair.from_secp256k1_secret(ONE).public_key)


def test_extract_invalid_embedded_key() -> None:
    junk = b"\x00\x05" + b"\x08\x01\x12\x01a"  # identity multihash of an invalid Ed25519 key
    pid = PeerID.from_bytes(junk)
    with pytest.raises(InvalidPeerID):
        pid.extract_public_key()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x12",
        b"\x12\x20" + bytes(31),  # short digest
        b"\x12\x20" + bytes(33),  # trailing byte
        b"\x12\x14" + bytes(20),  # sha2-256 with a 20-byte digest
        b"\x11\x14" + bytes(20),  # sha1
        b"\x13\x40" + bytes(64),  # sha2-512
        b"\x00\x00",  # empty identity
        b"\x00\x2b" + bytes(43),  # identity longer than 42 bytes
        b"\x80",  # unterminated varint
        b"\x80\x00\x20" + bytes(32),  # non-minimal varint
        b"\x01\x72\x12\x20" + bytes(32),  # a binary CID, not a multihash
    ],
)
def test_from_bytes_invalid(data: bytes) -> None:
    with pytest.raises(InvalidPeerID):
        PeerID.from_bytes(data)


def test_from_bytes_type_error_is_invalid_peer_id() -> None:
    with pytest.raises(InvalidPeerID):
        PeerID.from_bytes("12D3Koo")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Qm",
        "1",
        "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDE",  # one character short
        "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp1",  # one too many
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx50",  # '0' is not base58
        "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqx",  # truncated
        "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqx1",  # '1' is not base32
        "bafzBeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe",  # mixed case
        # dag-pb (0x70) CID of the same multihash
        "bafybeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe",
        "k!!",
        "f01721220",  # base16 multibase is not supported
        "mAXI",  # base64 multibase is not supported
        "é" * 10,
        SPEC_QM + " ",  # base58 libraries tend to strip whitespace; we must not
        SPEC_QM + "\n",
        " " + SPEC_QM,
        "b" + "a" * 300,
        "b",
        "k",
    ],
)
def test_from_string_invalid(text: str) -> None:
    with pytest.raises(InvalidPeerID):
        PeerID.from_string(text)


def test_from_string_rejects_cid_v0_and_non_str() -> None:
    mh = PeerID.from_string(SPEC_QM).to_bytes()
    with pytest.raises(InvalidPeerID, match="CIDv1"):
        PeerID.from_string(multibase.encode("base32", b"\x00\x72" + mh).decode())
    with pytest.raises(InvalidPeerID):
        PeerID.from_string(b"Qm")  # type: ignore[arg-type]


def test_invalid_peer_id_hierarchy() -> None:
    assert issubclass(InvalidPeerID, CryptoError)
    assert issubclass(InvalidPeerID, P2PError)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=50))
def test_fuzz_from_bytes(data: bytes) -> None:
    try:
        pid = PeerID.from_bytes(data)
    except InvalidPeerID:
        return
    assert PeerID.from_string(str(pid)) == pid
    assert PeerID.from_string(pid.to_cid_string()) == pid
    try:
        pid.extract_public_key()
    except InvalidPeerID:
        pass


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_from_string(text: str) -> None:
    try:
        PeerID.from_string(text)
    except InvalidPeerID:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_identity_roundtrip_any_ed25519_key(seed: bytes) -> None:
    kp = KeyPair.from_ed25519_seed(seed)
    pid = PeerID.from_public_key(kp.public_key)
    assert str(pid).startswith("12D3KooW")
    assert PeerID.from_string(str(pid)) == pid
    assert PeerID.from_string(pid.to_cid_string()) == pid
    assert pid.extract_public_key() == kp.public_key
