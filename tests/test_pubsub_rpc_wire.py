"""The RPC frame at the byte level: splitting, signed bytes, forwarding the bytes received."""

from __future__ import annotations

import random

import pytest
from test_pubsub_router import Harness, T, make_key, pid

from p2pnet.pubsub import SignaturePolicy
from p2pnet.pubsub.errors import InvalidRPC
from p2pnet.pubsub.messages import SignatureVerifier, build_message, message_fields
from p2pnet.pubsub.router import DeliverMessage
from p2pnet.pubsub.rpc_wire import (
    MalformedRPC,
    _parse_general,
    _parse_signed,
    lone_message,
    parse_message,
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


# -- parse_message: a message's fields read from its bytes, agreeing with a decoder ----------


def _field(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + encode_uvarint(len(value)) + value


def test_parse_message_agrees_with_decoding_for_canonical_messages() -> None:
    with_key = signed(5, data=bytes(300))  # a two-byte data length
    with_key.key = make_key(5).public_key.to_protobuf()
    unsigned_msg = rpc_pb2.Message(data=b"", topic="")  # empty fields are present ones
    for msg in (signed(4), signed(6, data=b""), with_key, unsigned_msg, rpc_pb2.Message()):
        raw = msg.SerializeToString()
        parsed = parse_message(raw)
        assert parsed is not None
        assert parsed == message_fields(rpc_pb2.Message.FromString(raw), raw)
        stripped = rpc_pb2.Message()
        stripped.CopyFrom(msg)
        stripped.ClearField("signature")
        stripped.ClearField("key")
        assert parsed[6] == stripped.SerializeToString()  # the bytes the signature covers


@pytest.mark.parametrize(
    "raw",
    [
        _field(0x12, b"d") + _field(0x0A, b"f"),  # out of order
        _field(0x0A, b"f") + _field(0x0A, b"g"),  # a field twice (a decoder keeps the last)
        _field(0x0A, b"f") + _field(0x3A, b"x"),  # an unknown field
        b"\x08\x01",  # an unknown varint field
        b"\x12\x81\x00" + b"x",  # a padded length
        b"\x12\x05abc",  # a body longer than the message
        b"\x12",  # a tag without a length
        _field(0x22, b"\xff\xfe"),  # a topic that is not UTF-8 (a decoder gives bytes)
        _field(0x22, b"\xed\xa0\x80"),  # an encoded surrogate
    ],
)
def test_parse_message_leaves_other_forms_to_the_decoder(raw: bytes) -> None:
    assert parse_message(raw) is None


def test_parse_message_on_mutated_bytes_never_disagrees_with_a_decoder() -> None:
    rng = random.Random(11)
    base = [signed(i, data=bytes(rng.randrange(200))).SerializeToString() for i in range(4)]
    agreed = 0
    for _ in range(3000):
        raw = bytearray(rng.choice(base))
        for _ in range(rng.randrange(1, 4)):
            what = rng.randrange(3)
            pos = rng.randrange(len(raw) + 1)
            if what == 0 and pos < len(raw):
                raw[pos] = rng.randrange(256)
            elif what == 1:
                raw[pos:pos] = bytes([rng.randrange(256)])
            else:
                del raw[pos : pos + rng.randrange(1, 8)]
        data = bytes(raw)
        parsed = parse_message(data)
        if parsed is None:
            continue
        decoded = rpc_pb2.Message.FromString(data)  # never raises on what parse_message took
        assert parsed == message_fields(decoded, data)
        agreed += 1
    assert agreed > 100  # (the mutations kept many messages in canonical form)


def test_a_message_in_another_form_takes_the_decoding_path_with_the_same_outcome() -> None:
    h = Harness()
    h.r.join(T, h.now)
    a, b = h.add(2)
    h.sent()
    msg = signed(0, data=b"reordered")
    raw = msg.SerializeToString()
    from_field = _field(0x0A, msg.from_)
    data_field = _field(0x12, msg.data)
    assert raw.startswith(from_field + data_field)
    other_form = data_field + from_field + raw[len(from_field + data_field) :]
    assert parse_message(other_form) is None
    h.r.handle_rpc(a, publish_piece(other_form), h.now)
    events = h.r.take_events()
    assert [e.message.data for e in events if isinstance(e, DeliverMessage)] == [b"reordered"]
    delivered = next(e.message for e in events if isinstance(e, DeliverMessage))
    assert delivered.id == msg.from_ + msg.seqno and delivered.from_peer == a
    assert delivered.seqno == 1 and delivered.signature == msg.signature
    assert dict(h.r.take_outgoing())[b] == publish_piece(other_form)  # forwarded as received
    # the canonical bytes of the same message are a duplicate now, scored as one
    h.r.handle_rpc(b, publish_piece(raw), h.now)
    assert h.r.stats["msg_duplicate"] == 1 and h.deliveries() == []


def test_an_application_message_id_function_gets_the_decoded_message() -> None:
    seen: list[rpc_pb2.Message] = []

    def by_data(m: rpc_pb2.Message) -> bytes:
        seen.append(m)
        return b"id:" + m.data

    h = Harness(msg_id_fn=by_data)
    h.r.join(T, h.now)
    (a,) = h.add(1)
    h.r.handle_rpc(a, publish_piece(signed(0, data=b"x").SerializeToString()), h.now)
    events = h.r.take_events()
    assert [e.message.id for e in events if isinstance(e, DeliverMessage)] == [b"id:x"]
    assert len(seen) == 1 and seen[0].data == b"x"


def test_the_unrolled_signed_message_parse_answers_as_the_general_one() -> None:
    """``_parse_signed`` (the usual message, unrolled) either declines or gives exactly what the
    general loop gives, on canonical messages (with a key, two-byte lengths, a long topic) and
    on thousands of mutations of them."""
    rng = random.Random(12)
    with_key = signed(5, data=bytes(300))
    with_key.key = make_key(5).public_key.to_protobuf()
    long_topic = rpc_pb2.Message()
    long_topic.CopyFrom(signed(3))
    long_topic.topic = "t" * 200  # a two-byte topic length
    base = [
        m.SerializeToString()
        for m in (signed(0), signed(1, data=b""), signed(2, data=bytes(150)), with_key, long_topic)
    ]
    for raw in base:
        assert _parse_signed(raw) is not None
        assert _parse_signed(raw) == _parse_general(raw)
    answered = 0
    for _ in range(4000):
        raw = bytearray(rng.choice(base))
        for _ in range(rng.randrange(1, 3)):
            pos = rng.randrange(len(raw) + 1)
            what = rng.randrange(3)
            if what == 0 and pos < len(raw):
                raw[pos] = rng.choice((rng.randrange(256), 0x80, 0x00, 0x7F, 0x32, 0x2A))
            elif what == 1:
                raw[pos:pos] = bytes([rng.randrange(256)])
            else:
                del raw[pos : pos + rng.randrange(1, 4)]
        data = bytes(raw)
        fast = _parse_signed(data)
        if fast is not None:
            assert fast == _parse_general(data)
            answered += 1
    assert answered > 200  # (many mutations, in the payloads, keep the usual form)


def test_lone_message_takes_exactly_the_frames_of_one_publish_field() -> None:
    raw = signed(0).SerializeToString()
    assert 0x80 <= len(raw) < 0x4000  # a two-byte length, as on the usual path
    frame = publish_piece(raw)
    assert lone_message(frame) == (raw, frame)
    short = b"\x0a\x01x"
    assert lone_message(publish_piece(short)) == (short, publish_piece(short))
    # a non-minimal length: the message, but not the frame as the piece to forward
    padded = b"\x12" + bytes([(len(short) & 0x7F) | 0x80, 0]) + short
    assert lone_message(padded) == (short, None)
    two = rpc_pb2.RPC(publish=[signed(0), signed(1)]).SerializeToString()
    with_sub = rpc_pb2.RPC(
        subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=T)], publish=[signed(0)]
    ).SerializeToString()
    long_length = b"\x12" + encode_uvarint(0x4000) + bytes(0x4000)
    for other in (
        b"",
        b"\x12",
        b"\x12\x00",
        two,
        with_sub,
        frame[:-1],
        frame + b"\x00",
        long_length,
    ):
        assert lone_message(other) is None
