"""Keys: libp2p protobuf encodings, signatures, malformed input."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnet.crypto import KeyPair, KeyType
from p2pnet.crypto.keys import (
    SECP256K1_N,
    ECDSAPublicKey,
    Ed25519PrivateKey,
    Ed25519PublicKey,
    PrivateKey,
    PublicKey,
    RSAPublicKey,
    Secp256k1PrivateKey,
    Secp256k1PublicKey,
    unmarshal_private_key,
    unmarshal_public_key,
)
from p2pnet.errors import CryptoError, P2PError

# Test vectors from the libp2p peer-ids spec (github.com/libp2p/specs, peer-ids/peer-ids.md,
# "Test vectors"): hex of the protobuf PrivateKey / PublicKey messages; each public key belongs
# to the private key next to it.
SPEC_VECTORS: dict[str, tuple[str, str]] = {
    "ECDSA": (
        "08031279307702010104203E5B1FE9712E6C314942A750BD67485DE3C1EFE85B1BFB520AE8F9AE3DFA4A4C"
        "A00A06082A8648CE3D030107A14403420004DE3D300FA36AE0E8F5D530899D83ABAB44ABF3161F162A4BC9"
        "01D8E6ECDA020E8B6D5F8DA30525E71D6851510C098E5C47C646A597FB4DCEC034E9F77C409E62",
        "0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004de3d300fa36ae0e8f5d53089"
        "9d83abab44abf3161f162a4bc901d8e6ecda020e8b6d5f8da30525e71d6851510c098e5c47c646a597fb4d"
        "cec034e9f77c409e62",
    ),
    "Ed25519": (
        "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d1ed1e8fae2c4a1"
        "44b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e",
        "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e",
    ),
    "Secp256k1": (
        "0802122053DADF1D5A164D6B4ACDB15E24AA4C5B1D3461BDBD42ABEDB0A4404D56CED8FB",
        "08021221037777e994e452c21604f91de093ce415f5432f701dd8cd1a7a6fea0e630bfca99",
    ),
    "RSA": (
        "080012ae123082092a0201000282020100e1beab071d08200bde24eef00d049449b07770ff9910257b2d7d"
        "5dda242ce8f0e2f12e1af4b32d9efd2c090f66b0f29986dbb645dae9880089704a94e5066d594162ae6ee8"
        "892e6ec70701db0a6c445c04778eb3de1293aa1a23c3825b85c6620a2bc3f82f9b0c309bc0ab3aeb187328"
        "2bebd3da03c33e76c21e9beb172fd44c9e43be32e2c99827033cf8d0f0c606f4579326c930eb4e854395ad"
        "941256542c793902185153c474bed109d6ff5141ebf9cd256cf58893a37f83729f97e7cb435ec679d2e339"
        "01d27bb35aa0d7e20561da08885ef0abbf8e2fb48d6a5487047a9ecb1ad41fa7ed84f6e3e8ecd5d98b3982"
        "d2a901b4454991766da295ab78822add5612a2df83bcee814cf50973e80d7ef38111b1bd87da2ae92438a2"
        "c8cbcc70b31ee319939a3b9c761dbc13b5c086d6b64bf7ae7dacc14622375d92a8ff9af7eb962162bbddeb"
        "f90acb32adb5e4e4029f1c96019949ecfbfeffd7ac1e3fbcc6b6168c34be3d5a2e5999fcbb39bba7adbca7"
        "8eab09b9bc39f7fa4b93411f4cc175e70c0a083e96bfaefb04a9580b4753c1738a6a760ae1afd851a1a4bd"
        "ad231cf56e9284d832483df215a46c1c21bdf0c6cfe951c18f1ee4078c79c13d63edb6e14feaeffabc90ad"
        "317e4875fe648101b0864097e998f0ca3025ef9638cd2b0caecd3770ab54a1d9c6ca959b0f5dcbc90caeef"
        "c4135baca6fd475224269bbe1b02030100010282020100a472ffa858efd8588ce59ee264b957452f3673ac"
        "df5631d7bfd5ba0ef59779c231b0bc838a8b14cae367b6d9ef572c03c7883b0a3c652f5c24c316b1ccfd97"
        "9f13d0cd7da20c7d34d9ec32dfdc81ee7292167e706d705efde5b8f3edfcba41409e642f8897357df5d320"
        "d21c43b33600a7ae4e505db957c1afbc189d73f0b5d972d9aaaeeb232ca20eebd5de6fe7f29d0147035441"
        "3cc9a0af1154b7af7c1029adcd67c74b4798afeb69e09f2cb387305e73a1b5f450202d54f0ef096fe1bde3"
        "40219a1194d1ac9026e90b366cce0c59b239d10e4888f52ca1780824d39ae01a6b9f4dd6059191a7f12b2a"
        "3d8db3c2868cd4e5a5862b8b625a4197d52c6ac77710116ebd3ced81c4d91ad5fdfbed68312ebce7eea45c"
        "1833ca3acf7da2052820eacf5c6b07d086dabeb893391c71417fd8a4b1829ae2cf60d1749d0e25da19530d"
        "889461c21da3492a8dc6ccac7de83ac1c2185262c7473c8cc42f547cc9864b02a8073b6aa54a037d8c0de3"
        "914784e6205e83d97918b944f11b877b12084c0dd1d36592f8a4f8b8da5bb404c3d2c079b22b6ceabfbcb6"
        "37c0dbe0201f0909d533f8bf308ada47aee641a012a494d31b54c974e58b87f140258258bb82f31692659d"
        "b7aa07e17a5b2a0832c24e122d3a8babcc9ee74cbb07d3058bb85b15f6f6b2674aba9fd34367be9782d444"
        "335fbed31e3c4086c652597c27104938b47fa10282010100e9fdf843c1550070ca711cb8ff28411466198f"
        "0e212511c3186623890c0071bf6561219682fe7dbdfd81176eba7c4faba21614a20721e0fcd63768e6d925"
        "688ecc90992059ac89256e0524de90bf3d8a052ce6a9f6adafa712f3107a016e20c80255c9e37d8206d1bc"
        "327e06e66eb24288da866b55904fd8b59e6b2ab31bc5eab47e597093c63fab7872102d57b4c589c66077f5"
        "34a61f5f65127459a33c91f6db61fc431b1ae90be92b4149a3255291baf94304e3efb77b1107b5a3bda911"
        "359c40a53c347ff9100baf8f36dc5cd991066b5bdc28b39ed644f404afe9213f4d31c9d4e40f3a5f5e3c39"
        "bebeb244e84137544e1a1839c1c8aaebf0c78a7fad590282010100f6fa1f1e6b803742d5490b7441152f50"
        "0970f46feb0b73a6e4baba2aaf3c0e245ed852fc31d86a8e46eb48e90fac409989dfee45238f97e8f1f8e8"
        "3a136488c1b04b8a7fb695f37b8616307ff8a8d63e8cfa0b4fb9b9167ffaebabf111aa5a4344afbabd002a"
        "e8961c38c02da76a9149abdde93eb389eb32595c29ba30d8283a7885218a5a9d33f7f01dbdf85f3aad016c"
        "071395491338ec318d39220e1c7bd69d3d6b520a13a30d745c102b827ad9984b0dd6aed73916ffa82a06c1"
        "c111e7047dcd2668f988a0570a71474992eecf416e068f029ec323d5d635fd24694fc9bf96973c255d26c7"
        "72a95bf8b7f876547a5beabf86f06cd21b67994f944e7a5493028201010095b02fd30069e547426a8bea58"
        "e8a2816f33688dac6c6f6974415af8402244a22133baedf34ce499d7036f3f19b38eb00897c18949b0c5a2"
        "5953c71aeeccfc8f6594173157cc854bd98f16dffe8f28ca13b77eb43a2730585c49fc3f608cd811bb54b0"
        "3b84bddaa8ef910988567f783012266199667a546a18fd88271fbf63a45ae4fd4884706da8befb9117c0a4"
        "d73de5172f8640b1091ed8a4aea3ed4641463f5ff6a5e3401ad7d0c92811f87956d1fd5f9a1d15c7f3839a"
        "08698d9f35f9d966e5000f7cb2655d7b6c4adcd8a9d950ea5f61bb7c9a33c17508f9baa313eecfee4ae493"
        "249ebe05a5d7770bbd3551b2eeb752e3649e0636de08e3d672e66cb90282010100ad93e4c31072b063fc5a"
        "b5fe22afacece775c795d0efdf7c704cfc027bde0d626a7646fc905bb5a80117e3ca49059af14e0160089f"
        "9190065be9bfecf12c3b2145b211c8e89e42dd91c38e9aa23ca73697063564f6f6aa6590088a738722df05"
        "6004d18d7bccac62b3bafef6172fc2a4b071ea37f31eff7a076bcab7dd144e51a9da8754219352aef2c734"
        "78971539fa41de4759285ea626fa3c72e7085be47d554d915bbb5149cb6ef835351f231043049cd941506a"
        "034bf2f8767f3e1e42ead92f91cb3d75549b57ef7d56ac39c2d80d67f6a2b4ca192974bfc5060e2dd17121"
        "7971002193dba12e7e4133ab201f07500a90495a38610279b13a48d54f0c99028201003e3a1ac0c2b67d54"
        "ed5c4bbe04a7db99103659d33a4f9d35809e1f60c282e5988dddc964527f3b05e6cc890eab3dcb571d66de"
        "bf3a5527704c87264b3954d7265f4e8d2c637dd89b491b9cf23f264801f804b90454d65af0c4c830d1aef7"
        "6f597ef61b26ca857ecce9cb78d4f6c2218c00d2975d46c2b013fbf59b750c3b92d8d3ed9e6d1fd0ef1ec0"
        "91a5c286a3fe2dead292f40f380065731e2079ebb9f2a7ef2c415ecbb488da98f3a12609ca1b6ec8c73403"
        "2c8bd513292ff842c375d4acd1b02dfb206b24cd815f8e2f9d4af8e7dea0370b19c1b23cc531d78b40e06e"
        "1119ee2e08f6f31c6e2e8444c568d13c5d451a291ae0c9f1d4f27d23b3a00d60ad",
        "080012a60430820222300d06092a864886f70d01010105000382020f003082020a0282020100e1beab071d"
        "08200bde24eef00d049449b07770ff9910257b2d7d5dda242ce8f0e2f12e1af4b32d9efd2c090f66b0f299"
        "86dbb645dae9880089704a94e5066d594162ae6ee8892e6ec70701db0a6c445c04778eb3de1293aa1a23c3"
        "825b85c6620a2bc3f82f9b0c309bc0ab3aeb1873282bebd3da03c33e76c21e9beb172fd44c9e43be32e2c9"
        "9827033cf8d0f0c606f4579326c930eb4e854395ad941256542c793902185153c474bed109d6ff5141ebf9"
        "cd256cf58893a37f83729f97e7cb435ec679d2e33901d27bb35aa0d7e20561da08885ef0abbf8e2fb48d6a"
        "5487047a9ecb1ad41fa7ed84f6e3e8ecd5d98b3982d2a901b4454991766da295ab78822add5612a2df83bc"
        "ee814cf50973e80d7ef38111b1bd87da2ae92438a2c8cbcc70b31ee319939a3b9c761dbc13b5c086d6b64b"
        "f7ae7dacc14622375d92a8ff9af7eb962162bbddebf90acb32adb5e4e4029f1c96019949ecfbfeffd7ac1e"
        "3fbcc6b6168c34be3d5a2e5999fcbb39bba7adbca78eab09b9bc39f7fa4b93411f4cc175e70c0a083e96bf"
        "aefb04a9580b4753c1738a6a760ae1afd851a1a4bdad231cf56e9284d832483df215a46c1c21bdf0c6cfe9"
        "51c18f1ee4078c79c13d63edb6e14feaeffabc90ad317e4875fe648101b0864097e998f0ca3025ef9638cd"
        "2b0caecd3770ab54a1d9c6ca959b0f5dcbc90caeefc4135baca6fd475224269bbe1b0203010001",
    ),
}

ONE = bytes(31) + b"\x01"


def _spec_pair(name: str) -> tuple[PrivateKey, PublicKey, bytes, bytes]:
    priv_hex, pub_hex = SPEC_VECTORS[name]
    priv_pb, pub_pb = bytes.fromhex(priv_hex), bytes.fromhex(pub_hex)
    return unmarshal_private_key(priv_pb), unmarshal_public_key(pub_pb), priv_pb, pub_pb


# --- spec vectors ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPEC_VECTORS))
def test_spec_vectors_roundtrip(name: str) -> None:
    priv, pub, priv_pb, pub_pb = _spec_pair(name)
    assert priv.key_type == pub.key_type == KeyType[name]
    # "Implementations SHOULD check that they can produce the provided public key."
    assert priv.public_key() == pub
    assert priv.public_key().to_protobuf() == pub_pb
    assert pub.to_protobuf() == pub_pb
    assert priv.to_protobuf() == priv_pb
    sig = priv.sign(b"libp2p")
    assert pub.verify(b"libp2p", sig)
    assert not pub.verify(b"libp2P", sig)
    assert KeyPair(priv).public_key == pub


def test_key_classes_per_type() -> None:
    assert isinstance(_spec_pair("Ed25519")[1], Ed25519PublicKey)
    assert isinstance(_spec_pair("Secp256k1")[1], Secp256k1PublicKey)
    assert isinstance(_spec_pair("RSA")[1], RSAPublicKey)
    assert isinstance(_spec_pair("ECDSA")[1], ECDSAPublicKey)


# --- Ed25519 -----------------------------------------------------------------------------------


def test_ed25519_rfc8032_vector() -> None:
    # RFC 8032 section 7.1, TEST 1 (empty message).
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    kp = KeyPair.from_ed25519_seed(seed)
    assert kp.public_key.to_bytes().hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    sig = kp.sign(b"")
    assert sig.hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e3970"
        "1cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert kp.public_key.verify(b"", sig)


def test_ed25519_encodings() -> None:
    kp = KeyPair.from_ed25519_seed(ONE)
    pub = kp.public_key.to_bytes()
    assert len(pub) == 32
    assert kp.public_key.to_protobuf() == b"\x08\x01\x12\x20" + pub
    assert kp.private_key.to_bytes() == ONE + pub
    assert kp.to_protobuf() == b"\x08\x01\x12\x40" + ONE + pub
    assert KeyPair.from_protobuf(kp.to_protobuf()) == kp


def test_ed25519_legacy_96_byte_private_key() -> None:
    kp = KeyPair.from_ed25519_seed(ONE)
    pub = kp.public_key.to_bytes()
    legacy = b"\x08\x01\x12\x60" + ONE + pub + pub
    assert unmarshal_private_key(legacy) == kp.private_key
    bad_copy = b"\x08\x01\x12\x60" + ONE + pub + bytes(32)
    with pytest.raises(CryptoError, match="differ"):
        unmarshal_private_key(bad_copy)


def test_ed25519_private_key_with_wrong_public_half() -> None:
    with pytest.raises(CryptoError, match="does not match"):
        unmarshal_private_key(b"\x08\x01\x12\x40" + ONE + bytes(32))
    with pytest.raises(CryptoError):
        Ed25519PrivateKey.from_bytes(bytes(63))


def test_ed25519_interoperates_with_cryptography() -> None:
    theirs = ed25519.Ed25519PrivateKey.from_private_bytes(ONE)
    ours = KeyPair.from_ed25519_seed(ONE)
    raw_pub = theirs.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert ours.public_key.to_bytes() == raw_pub
    assert ours.public_key.verify(b"m", theirs.sign(b"m"))
    theirs.public_key().verify(ours.sign(b"m"), b"m")


def test_ed25519_verify_rejects_bad_signatures() -> None:
    kp = KeyPair.generate()
    sig = kp.sign(b"data")
    pub = kp.public_key
    assert pub.verify(b"data", sig)
    assert pub.verify(b"data", bytearray(sig))  # type: ignore[arg-type]
    assert not pub.verify(b"data", sig[:-1])
    assert not pub.verify(b"data", sig + b"\x00")
    assert not pub.verify(b"data", b"")
    # signature||message concatenation ambiguity must not be exploitable
    assert not pub.verify(b"ta", sig + b"da")
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not pub.verify(b"data", flipped)
    assert not pub.verify(b"data", "not bytes")  # type: ignore[arg-type]
    assert not KeyPair.generate().public_key.verify(b"data", sig)


def test_ed25519_bad_sizes() -> None:
    with pytest.raises(CryptoError):
        KeyPair.from_ed25519_seed(bytes(31))
    with pytest.raises(CryptoError):
        unmarshal_public_key(b"\x08\x01\x12\x1f" + bytes(31))


# --- secp256k1 ---------------------------------------------------------------------------------


def _secp_public_via_cryptography(pub: PublicKey) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), pub.to_bytes())


def test_secp256k1_generator_point() -> None:
    kp = KeyPair.from_secp256k1_secret(ONE)
    # the compressed generator point G
    assert kp.public_key.to_bytes().hex() == (
        "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
    )
    assert kp.public_key.to_protobuf() == b"\x08\x02\x12\x21" + kp.public_key.to_bytes()
    assert kp.private_key.to_bytes() == ONE
    assert kp.to_protobuf() == b"\x08\x02\x12\x20" + ONE


def test_secp256k1_signature_is_der_low_s_over_sha256() -> None:
    kp = KeyPair.from_secp256k1_secret(hashlib.sha256(b"k").digest())
    for i in range(20):
        msg = b"message %d" % i
        sig = kp.sign(msg)
        assert sig[0] == 0x30 and sig[1] == len(sig) - 2
        _r, s = decode_dss_signature(sig)
        assert s <= SECP256K1_N // 2
        assert kp.sign(msg) == sig  # RFC 6979: deterministic
        # an independent implementation verifies it as ECDSA(SHA-256)
        _secp_public_via_cryptography(kp.public_key).verify(sig, msg, ec.ECDSA(hashes.SHA256()))


def test_secp256k1_accepts_foreign_and_high_s_signatures() -> None:
    secret = hashlib.sha256(b"x").digest()
    kp = KeyPair.from_secp256k1_secret(secret)
    theirs = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256K1())
    for i in range(16):
        msg = b"m%d" % i
        sig = theirs.sign(msg, ec.ECDSA(hashes.SHA256()))
        assert kp.public_key.verify(msg, sig)
        r, s = decode_dss_signature(sig)
        # the same signature with S negated: one of the two is high-S
        other = encode_dss_signature(r, SECP256K1_N - s)
        assert kp.public_key.verify(msg, other)
        assert not kp.public_key.verify(msg + b"!", other)


def test_secp256k1_verify_rejects_junk() -> None:
    kp = KeyPair.generate(KeyType.Secp256k1)
    sig = kp.sign(b"data")
    pub = kp.public_key
    assert not pub.verify(b"data", sig[:-1])
    assert not pub.verify(b"data", sig + b"\x00")
    assert not pub.verify(b"data", b"")
    assert not pub.verify(b"data", b"\x30" * 80)
    assert not pub.verify(b"data", bytes(64))
    r, s = decode_dss_signature(sig)
    assert not pub.verify(b"data", encode_dss_signature(r, 0))
    assert not pub.verify(b"data", encode_dss_signature(r, SECP256K1_N + s))
    assert not KeyPair.generate(KeyType.Secp256k1).public_key.verify(b"data", sig)


def test_secp256k1_uncompressed_public_key_is_normalised() -> None:
    kp = KeyPair.from_secp256k1_secret(ONE)
    assert isinstance(kp.public_key, Secp256k1PublicKey)
    uncompressed = kp.public_key.to_uncompressed()
    assert len(uncompressed) == 65 and uncompressed[0] == 4
    decoded = unmarshal_public_key(b"\x08\x02\x12\x41" + uncompressed)
    assert decoded == kp.public_key
    assert decoded.to_protobuf() == kp.public_key.to_protobuf()


def test_secp256k1_invalid_points_and_scalars() -> None:
    # x = 5 is not on the curve (5^3 + 7 = 132 is not a square mod p)
    with pytest.raises(CryptoError):
        Secp256k1PublicKey(b"\x02" + (5).to_bytes(32, "big"))
    with pytest.raises(CryptoError):
        Secp256k1PublicKey(b"\x05" + bytes(32))
    with pytest.raises(CryptoError):
        Secp256k1PublicKey(bytes(20))
    for bad in (bytes(32), SECP256K1_N.to_bytes(32, "big"), b"\xff" * 32, bytes(31)):
        with pytest.raises(CryptoError):
            KeyPair.from_secp256k1_secret(bad)
    top = KeyPair.from_secp256k1_secret((SECP256K1_N - 1).to_bytes(32, "big"))
    # -1 * G has the same x as G and the other y parity
    assert top.public_key.to_bytes()[0] == 3
    with pytest.raises(CryptoError):
        Secp256k1PrivateKey(bytes(33))


# --- RSA / ECDSA ---------------------------------------------------------------------------------


def test_rsa_small_keys_rejected() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    der = small.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(CryptoError, match="1024 bits"):
        RSAPublicKey(der)


def test_type_mismatch_in_der_keys() -> None:
    ecdsa_der = _spec_pair("ECDSA")[1].to_bytes()
    rsa_der = _spec_pair("RSA")[1].to_bytes()
    with pytest.raises(CryptoError):
        RSAPublicKey(ecdsa_der)
    with pytest.raises(CryptoError):
        ECDSAPublicKey(rsa_der)
    with pytest.raises(CryptoError):
        ECDSAPublicKey(b"\x30\x03\x02\x01\x01")


def test_ecdsa_and_rsa_generation() -> None:
    for key_type in (KeyType.ECDSA, KeyType.RSA):
        kp = KeyPair.generate(key_type)
        assert kp.key_type == key_type
        sig = kp.sign(b"x")
        assert kp.public_key.verify(b"x", sig)
        assert not kp.public_key.verify(b"y", sig)
        assert not kp.public_key.verify(b"x", b"garbage")
        again = KeyPair.from_protobuf(kp.to_protobuf())
        assert again == kp and again.public_key == kp.public_key


# --- KeyPair -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", [KeyType.Ed25519, KeyType.Secp256k1])
def test_keypair_generate(key_type: KeyType) -> None:
    a, b = KeyPair.generate(key_type), KeyPair.generate(key_type)
    assert a.key_type == key_type == a.public_key.key_type
    assert a != b and a.public_key != b.public_key
    assert a.public_key.verify(b"x", a.sign(b"x"))
    assert a.private_key.public_key() == a.public_key
    assert KeyPair.from_protobuf(a.to_protobuf()) == a
    assert len({a, b, KeyPair.from_protobuf(a.to_protobuf())}) == 2


def test_keypair_default_is_ed25519() -> None:
    assert KeyPair.generate().key_type == KeyType.Ed25519


def test_keypair_rejects_foreign_public_key() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    with pytest.raises(CryptoError):
        KeyPair(a.private_key, b.public_key)
    assert KeyPair(a.private_key, a.public_key) == a


def test_keypair_from_eth_private_key_forms() -> None:
    expected = KeyPair.from_secp256k1_secret(ONE)
    hexkey = ONE.hex()
    for text in (hexkey, "0x" + hexkey, "0X" + hexkey, hexkey.upper(), f"  0x{hexkey}\n"):
        assert KeyPair.from_eth_private_key(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0x",
        "0x" + "00" * 31,
        "0x" + "00" * 33,
        "0x" + "zz" * 32,
        "0x" + "00" * 32,  # zero scalar
        "0x" + SECP256K1_N.to_bytes(32, "big").hex(),
        "0x0x" + "11" * 31,
    ],
)
def test_keypair_from_eth_private_key_errors(text: str) -> None:
    with pytest.raises(CryptoError):
        KeyPair.from_eth_private_key(text)


def test_keypair_from_eth_private_key_non_str() -> None:
    with pytest.raises(CryptoError):
        KeyPair.from_eth_private_key(ONE)  # type: ignore[arg-type]


def test_private_key_repr_hides_secret() -> None:
    kp = KeyPair.from_secp256k1_secret(b"\xab" * 32)
    assert "abab" not in repr(kp.private_key)
    assert "abab" not in repr(kp)
    kp2 = KeyPair.from_ed25519_seed(b"\xcd" * 32)
    assert "cdcd" not in repr(kp2.private_key) + repr(kp2)


# --- protobuf decoding -------------------------------------------------------------------------


def test_public_key_equality_and_hash() -> None:
    a = KeyPair.from_ed25519_seed(ONE).public_key
    b = unmarshal_public_key(a.to_protobuf())
    assert a == b and hash(a) == hash(b)
    assert a != KeyPair.from_secp256k1_secret(ONE).public_key
    assert a != a.to_protobuf()


def test_decoding_tolerates_field_order_and_unknown_fields() -> None:
    pub = KeyPair.from_ed25519_seed(ONE).public_key
    raw = pub.to_bytes()
    reordered = b"\x12\x20" + raw + b"\x08\x01"
    assert unmarshal_public_key(reordered) == pub
    # unknown varint field 3 and bytes field 4 are skipped; the encoding is canonical again
    extra = pub.to_protobuf() + b"\x18\x05" + b"\x22\x02ab"
    decoded = unmarshal_public_key(extra)
    assert decoded == pub and decoded.to_protobuf() == pub.to_protobuf()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x08\x01",  # no Data
        b"\x12\x20" + bytes(32),  # no Type
        b"\x08\x01\x12\x21" + bytes(32),  # truncated Data
        b"\x08\x01\x12",  # truncated length
        b"\x08",  # truncated varint field
        b"\x08\x80",  # unterminated varint
        b"\x08\x81\x00\x12\x20" + bytes(32),  # non-minimal varint
        b"\x08\x05\x12\x20" + bytes(32),  # unknown key type
        b"\x0a\x01\x01\x12\x20" + bytes(32),  # Type with the wrong wire type
        b"\x10\x01\x12\x20" + bytes(32),  # Data with the wrong wire type
        b"\x08\x01\x12\x20" + bytes(32) + b"\x08",  # trailing garbage
        b"\x08\x01\x12\x20" + bytes(32) + b"\x1b",  # wire type 3 (groups)
        b"\x08\x01\x12\x20" + bytes(32) + b"\x00",  # field number 0
        b"\x08\x02\x12\x21" + b"\x02" + bytes(32),  # secp256k1 x = 0 is not on the curve
        b"\x08\x00\x12\x03abc",  # RSA garbage
        b"\x08\x03\x12\x03abc",  # ECDSA garbage
        b"\x08\x00\x12\x80\x40" + bytes(8192),  # oversized Data
    ],
)
def test_unmarshal_public_key_malformed(data: bytes) -> None:
    with pytest.raises(CryptoError):
        unmarshal_public_key(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x08\x01\x12\x20" + bytes(32),  # 32-byte Ed25519 private key
        b"\x08\x02\x12\x21" + bytes(33),
        b"\x08\x00\x12\x03abc",
        b"\x08\x03\x12\x03abc",
        b"\x08\x07\x12\x01a",
    ],
)
def test_unmarshal_private_key_malformed(data: bytes) -> None:
    with pytest.raises(CryptoError):
        unmarshal_private_key(data)


def test_unmarshal_rejects_non_bytes() -> None:
    with pytest.raises(CryptoError):
        unmarshal_public_key("0801")  # type: ignore[arg-type]


def test_crypto_error_is_p2p_error() -> None:
    assert issubclass(CryptoError, P2PError)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_unmarshal_public_key(data: bytes) -> None:
    try:
        key = unmarshal_public_key(data)
    except CryptoError:
        return
    assert unmarshal_public_key(key.to_protobuf()) == key


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([0, 1, 2, 3]), st.binary(max_size=70))
def test_fuzz_unmarshal_typed(key_type: int, data: bytes) -> None:
    msg = bytes((8, key_type, 0x12, len(data))) + data
    for fn in (unmarshal_public_key, unmarshal_private_key):
        try:
            fn(msg)
        except CryptoError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=100))
def test_fuzz_verify_never_raises(data: bytes, junk: bytes) -> None:
    for kp in (_ED, _SECP):
        assert kp.public_key.verify(data, kp.sign(data))
        assert not kp.public_key.verify(data, junk)


_ED = KeyPair.from_ed25519_seed(ONE)
_SECP = KeyPair.from_secp256k1_secret(ONE)
