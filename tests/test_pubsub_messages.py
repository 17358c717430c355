"""Pubsub messages (signing, policies, IDs), the message and seen caches, PX peer records."""

from __future__ import annotations

import gc
import hashlib

import pytest
from multiaddr import Multiaddr

from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.record import InvalidPeerRecord, make_peer_record, verify_peer_record
from p2pnet.pubsub import (
    InvalidMessage,
    SignaturePolicy,
    msg_id_from_seqno,
    msg_id_js_strict_sign,
    msg_id_sha256,
)
from p2pnet.pubsub.mcache import MessageCache, TimeCache
from p2pnet.pubsub.messages import (
    SIGN_PREFIX,
    SeqnoCounter,
    SignatureVerifier,
    build_message,
    to_app_message,
)
from p2pnet.wire.pb import rpc_pb2

SIGN = SignaturePolicy.STRICT_SIGN


@pytest.mark.parametrize("key_type", [KeyType.Ed25519, KeyType.Secp256k1, KeyType.RSA])
def test_sign_and_verify(key_type: KeyType) -> None:
    key = KeyPair.generate(key_type)
    author = PeerID.from_public_key(key.public_key)
    msg = build_message("t", b"data", policy=SIGN, key=key, seqno=7)
    assert msg.from_ == author.to_bytes()
    assert msg.seqno == (7).to_bytes(8, "big")
    # the key travels only when the peer ID does not inline it
    assert msg.HasField("key") == (key_type == KeyType.RSA)
    unsigned = rpc_pb2.Message(from_=msg.from_, data=b"data", seqno=msg.seqno, topic="t")
    assert key.public_key.verify(SIGN_PREFIX + unsigned.SerializeToString(), msg.signature)
    # the wire bytes: fields 1..6 as the spec numbers them
    wire = msg.SerializeToString()
    assert wire[0] == 0x0A and wire[2 + wire[1]] == 0x12
    back = rpc_pb2.Message.FromString(wire)
    assert SignatureVerifier(SIGN).verify(back) == author


def test_empty_data_is_signed_as_present() -> None:
    key = KeyPair.generate()
    msg = build_message("t", b"", policy=SIGN, key=key, seqno=1)
    assert msg.HasField("data")
    back = rpc_pb2.Message.FromString(msg.SerializeToString())
    assert SignatureVerifier(SIGN).verify(back) is not None


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: m.ClearField("signature"), "missing_signature"),
        (lambda m: m.ClearField("from_"), "missing_from"),
        (lambda m: setattr(m, "seqno", b"\x00" * 7), "invalid_seqno"),
        (lambda m: setattr(m, "from_", b"\x00\x03abc"), "invalid_peer_id"),
        (lambda m: setattr(m, "key", b"garbage"), "invalid_key"),
        (lambda m: setattr(m, "topic", "other"), "invalid_signature"),
        (lambda m: setattr(m, "signature", b"\x00" * 64), "invalid_signature"),
    ],
)
def test_strict_sign_rejections(mutate: object, reason: str) -> None:
    msg = build_message("t", b"d", policy=SIGN, key=KeyPair.generate(), seqno=1)
    mutate(msg)  # type: ignore[operator]
    with pytest.raises(InvalidMessage) as info:
        SignatureVerifier(SIGN).verify(msg)
    assert info.value.reason == reason


def test_hashed_peer_id_needs_key_field() -> None:
    key = KeyPair.generate(KeyType.RSA)
    msg = build_message("t", b"d", policy=SIGN, key=key, seqno=1)
    msg.ClearField("key")
    with pytest.raises(InvalidMessage, match="missing_key"):
        SignatureVerifier(SIGN).verify(msg)
    other = KeyPair.generate(KeyType.RSA)
    msg.key = other.public_key.to_protobuf()
    with pytest.raises(InvalidMessage, match="invalid_key"):
        SignatureVerifier(SIGN).verify(msg)


def test_strict_no_sign() -> None:
    verifier = SignatureVerifier(SignaturePolicy.STRICT_NO_SIGN)
    bare = build_message("t", b"d", policy=SignaturePolicy.STRICT_NO_SIGN)
    assert verifier.verify(bare) is None
    for field, value in (
        ("from_", b"x"),
        ("seqno", b"\x00" * 8),
        ("signature", b"s"),
        ("key", b"k"),
    ):
        m = rpc_pb2.Message()
        m.CopyFrom(bare)
        setattr(m, field, value)
        with pytest.raises(InvalidMessage, match="unexpected"):
            verifier.verify(m)
    with pytest.raises(ValueError):
        build_message("t", b"d", policy=SIGN)


def test_message_ids() -> None:
    key = KeyPair.from_ed25519_seed(bytes(31) + b"\x01")
    author = PeerID.from_public_key(key.public_key)
    msg = build_message("t", b"data", policy=SIGN, key=key, seqno=0x0102)
    seq = (0x0102).to_bytes(8, "big")
    assert msg_id_from_seqno(msg) == author.to_bytes() + seq
    # js: protobuf public key + seqno, i.e. the identity peer ID minus its 2-byte multihash prefix
    assert msg_id_js_strict_sign(msg) == key.public_key.to_protobuf() + seq
    assert msg_id_js_strict_sign(msg) == author.to_bytes()[2:] + seq
    rsa = KeyPair.generate(KeyType.RSA)
    rmsg = build_message("t", b"data", policy=SIGN, key=rsa, seqno=1)
    assert msg_id_js_strict_sign(rmsg) == rsa.public_key.to_protobuf() + (1).to_bytes(8, "big")
    assert msg_id_sha256(msg) == hashlib.sha256(b"data").digest()
    with pytest.raises(InvalidMessage):
        msg_id_from_seqno(rpc_pb2.Message(data=b"x"))
    with pytest.raises(InvalidMessage):
        msg_id_js_strict_sign(rpc_pb2.Message(data=b"x"))


def test_seqno_counter_monotonic() -> None:
    c = SeqnoCounter(1_767_225_600 * 10**9)
    a, b = c.next(), c.next()
    assert (a, b) == (1_767_225_600 * 10**9 + 1, 1_767_225_600 * 10**9 + 2)
    wrap = SeqnoCounter(2**64 - 1)
    assert wrap.next() == 0  # 64 bits on the wire


def test_app_message_fields() -> None:
    key = KeyPair.generate()
    author = PeerID.from_public_key(key.public_key)
    msg = build_message("t", b"payload", policy=SIGN, key=key, seqno=42)
    app = to_app_message(msg, b"id", author, author)
    assert (app.topic, app.data, app.from_peer, app.seqno, app.id) == (
        "t",
        b"payload",
        author,
        42,
        b"id",
    )
    assert "seqno=42" in repr(app)


def test_message_cache_windows() -> None:
    mc = MessageCache(gossip=2, history=3)
    peer = PeerID.from_public_key(KeyPair.generate().public_key)
    mc.put(b"a", "t", b"A")
    mc.shift()
    mc.put(b"b", "t", b"B")
    mc.put(b"c", "u", b"C")
    assert mc.gossip_ids("t") == [b"b", b"a"] and mc.gossip_ids("u") == [b"c"]
    mc.shift()
    assert mc.gossip_ids("t") == [b"b"]  # a fell out of the gossip windows ...
    assert mc.get(b"a") == b"A"  # ... but is still served
    assert mc.get_for_peer(b"a", peer) == (b"A", "t", 1)
    assert mc.get_for_peer(b"a", peer) == (b"A", "t", 2)
    mc.shift()
    assert mc.get(b"a") is None and b"b" in mc and len(mc) == 2
    with pytest.raises(ValueError):
        MessageCache(gossip=4, history=3)


def test_time_cache() -> None:
    tc: TimeCache[bytes] = TimeCache(10.0)
    assert tc.add(b"x", 0.0)
    assert not tc.add(b"x", 5.0)
    tc.add(b"y", 5.0)
    assert tc.expire(9.0) == 0
    assert tc.expire(10.0) == 1
    assert b"x" not in tc and b"y" in tc and len(tc) == 1


def test_time_cache_batches_expire_in_insertion_order() -> None:
    """Keys added together (insert_new) or one by one at the same time share a batch; expiry
    forgets batches in insertion order, stopping at the first one not due (as the key-by-key
    cache did, even if a later key was added with an earlier expiry)."""
    tc: TimeCache[bytes] = TimeCache(10.0)
    tc.insert_new([b"a", b"b"], 10.0)
    tc.insert(b"c", 10.0)  # same expiry: same batch
    assert tc.add(b"d", 1.0)  # expiry 11
    tc.insert(b"e", 10.5)  # an earlier expiry after a later one: waits behind it
    assert list(tc.keys) == [b"a", b"b", b"c", b"d", b"e"]
    assert tc.expire(10.6) == 3
    assert list(tc.keys) == [b"d", b"e"]
    assert tc.expire(11.0) == 2 and len(tc) == 0
    assert tc.expire(100.0) == 0


def test_time_cache_keeps_no_container_per_insertion() -> None:
    """Every relayed message is remembered for the seen TTL: an insertion at a time of its own
    (one message per read, the usual case in a big network) must not leave a container behind
    for the cyclic garbage collector (a tuple and a list each, before)."""
    tc: TimeCache[bytes] = TimeCache(10.0)
    keys = [i.to_bytes(4, "big") for i in range(2000)]
    gc.collect()
    before = len(gc.get_objects())
    for i, key in enumerate(keys):
        tc.insert(key, float(i))
    assert len(gc.get_objects()) - before < 50
    assert tc.expire(999.5) == 1000 and len(tc) == 1000


def test_peer_record_roundtrip_and_tampering() -> None:
    key = KeyPair.generate()
    peer = PeerID.from_public_key(key.public_key)
    addrs = [Multiaddr("/ip4/127.0.0.1/tcp/4001"), Multiaddr("/ip4/10.0.0.1/tcp/1")]
    rec = make_peer_record(key, addrs, seq=5)
    got_peer, got_addrs = verify_peer_record(rec, peer)
    assert got_peer == peer and got_addrs == addrs
    other = PeerID.from_public_key(KeyPair.generate().public_key)
    with pytest.raises(InvalidPeerRecord, match="expected"):
        verify_peer_record(rec, other)
    tampered = bytearray(rec)
    tampered[-1] ^= 1
    with pytest.raises(InvalidPeerRecord):
        verify_peer_record(bytes(tampered))
    with pytest.raises(InvalidPeerRecord):
        verify_peer_record(b"\xff\xff")
