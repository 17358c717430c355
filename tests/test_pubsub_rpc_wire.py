"""The RPC frame at the byte level: splitting, signed bytes, forwarding the bytes received."""

from __future__ import annotations

import pytest
from test_pubsub_router import Harness, T, make_key, pid

from p2pnet.pubsub import SignaturePolicy
from p2pnet.pubsub.errors import InvalidRPC
from p2pnet.pubsub.messages import SignatureVerifier, build_message
from p2pnet.pubsub.rpc_wire import (
    MalformedRPC,
    publish_piece,
    split_rpc,
    unsigned_encoding,
)
from p2pnet.wire.pb import rpc_pb2
from p2pnet.wire.varint import encode_uvarint


def signed(i: int = 0, data: bytes = b"payload", seqno: int = 1) -> rpc_pb2.Message:
    key = make_key(i)
    return build_message(
        T, data, policy=SignaturePolicy.STRICT_SIGN, key=key, peer_id=pid(key), seqno=seqno
    )


def test_split_rpc_returns_the_encoded_parts_and_merges_controls() -> None:
    m1, m2 = signed(0), signed(1)
    rpc = rpc_pb2.RPC(
        subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=T)], publish=[m1, m2]
    )
    rpc.control.graft.add(topicID="a")
    second = rpc_pb2.RPC()
    second.control.prune.add(topicID="b")
    # an unknown varint field and an unknown fixed64 field are skipped, as protobuf does
    frame = rpc.SerializeToString() + second.SerializeToString() + b"\x20\x05" + b"\x29" + bytes(8)
    parts = split_rpc(frame)
    assert parts.publish == [m1.SerializeToString(), m2.SerializeToString()]
    assert [rpc_pb2.RPC.SubOpts.FromString(s).topicid for s in parts.subscriptions] == [T]
    assert parts.control is not None
    control = rpc_pb2.ControlMessage.FromString(parts.control)
    assert [g.topicID for g in control.graft] == ["a"]
    assert [p.topicID for p in control.prune] == ["b"]


@pytest.mark.parametrize(
    "frame",
    [
        b"\x12",  # a tag without a length
        b"\x12\x05abc",  # a body longer than the frame
        b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # an overlong varint
        b"\x0b",  # a group (wire type 3)
        b"\x02\x00",  # field number 0
        b"\x19\x00",  # fixed64 cut short
    ],
)
def test_split_rpc_refuses_malformed_frames(frame: bytes) -> None:
    with pytest.raises(MalformedRPC):
        split_rpc(frame)


def test_unsigned_encoding_equals_encoding_without_signature_and_key() -> None:
    msg = signed(2, data=bytes(300))  # a two-byte length
    msg.key = make_key(2).public_key.to_protobuf()
    raw = msg.SerializeToString()
    unsigned = rpc_pb2.Message()
    unsigned.CopyFrom(msg)
    unsigned.ClearField("signature")
    unsigned.ClearField("key")
    assert unsigned_encoding(raw) == unsigned.SerializeToString()


def test_unsigned_encoding_declines_non_canonical_bytes() -> None:
    msg = signed(3)
    fields = {
        "from": b"\x0a" + encode_uvarint(len(msg.from_)) + msg.from_,
        "data": b"\x12" + encode_uvarint(len(msg.data)) + msg.data,
        "sig": b"\x2a" + encode_uvarint(len(msg.signature)) + msg.signature,
    }
    # fields out of order, a repeated field, a padded length, an unknown field
    assert unsigned_encoding(fields["data"] + fields["from"]) is None
    assert unsigned_encoding(fields["from"] + fields["from"]) is None
    assert unsigned_encoding(b"\x12\x87\x00" + bytes(7)) is None
    assert unsigned_encoding(fields["from"] + b"\x3a\x00") is None
    # the verifier then encodes the decoded message itself, and the signature still holds
    reordered = fields["data"] + fields["from"] + msg.SerializeToString()[len(fields["from"]) :]
    decoded = rpc_pb2.Message.FromString(reordered)
    assert SignatureVerifier(SignaturePolicy.STRICT_SIGN).verify(decoded, reordered) is not None


def test_tampered_bytes_fail_verification_on_the_raw_path() -> None:
    raw = bytearray(signed(4, data=b"hello").SerializeToString())
    raw[raw.index(b"hello")] = ord("j")
    decoded = rpc_pb2.Message.FromString(bytes(raw))
    with pytest.raises(Exception, match="invalid_signature"):
        SignatureVerifier(SignaturePolicy.STRICT_SIGN).verify(decoded, bytes(raw))


def test_router_forwards_the_bytes_it_received_to_every_mesh_peer() -> None:
    h = Harness(d=4, d_lo=3, d_hi=6, d_out=1)
    h.r.join(T, h.now)
    a, b, c = h.add(3)  # all three join the mesh (below d_lo)
    h.sent()
    raw = signed(0).SerializeToString()  # a publishes (key 0 is a's key in the harness)
    h.r.handle_rpc(a, publish_piece(raw), h.now)
    out = dict(h.r.take_outgoing())
    assert set(out) == {b, c}  # not back to a
    assert out[b] == out[c] == publish_piece(raw)


def test_a_frame_with_one_broken_message_is_refused_whole() -> None:
    h = Harness()
    h.r.join(T, h.now)
    (a,) = h.add(1)
    good = signed(0).SerializeToString()
    frame = publish_piece(good) + b"\x12\x02\x0a\x09"  # the second message is truncated inside
    with pytest.raises(InvalidRPC):
        h.r.handle_rpc(a, frame, h.now)
    assert h.deliveries() == []
    assert h.r.stats["frame_undecodable"] == 1
