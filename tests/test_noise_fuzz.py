"""Property tests: whatever bytes arrive, the Noise core raises only p2pnet errors (or works)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pnet.crypto.keys import KeyPair, unmarshal_public_key
from p2pnet.errors import HandshakeError, P2PError, ProtocolError
from p2pnet.security.noise import NoiseHandshake, NoiseTransport, encode_payload
from p2pnet.wire.pb import noise_pb2

KEY_I = KeyPair.from_ed25519_seed(bytes(31) + b"\x01")
KEY_R = KeyPair.from_ed25519_seed(bytes(31) + b"\x02")
_X = [X25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i in range(4)]
I_STATIC, I_EPH, R_STATIC, R_EPH = _X

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def initiator() -> NoiseHandshake:
    return NoiseHandshake(KEY_I, initiator=True, static_key=I_STATIC, ephemeral_key=I_EPH)


def responder() -> NoiseHandshake:
    return NoiseHandshake(KEY_R, initiator=False, static_key=R_STATIC, ephemeral_key=R_EPH)


def _transcript() -> tuple[bytes, bytes, bytes, NoiseTransport, NoiseTransport]:
    """A deterministic valid handshake: (msg1, msg2, msg3) as framed bytes, and the ciphers."""
    i, r = initiator(), responder()
    m1 = i.data_to_send()
    r.receive_data(m1)
    m2 = r.data_to_send()
    i.receive_data(m2)
    m3 = i.data_to_send()
    r.receive_data(m3)
    return m1, m2, m3, i.result().transport, r.result().transport


M1, M2, M3, _, _ = _transcript()


def fresh_transports() -> tuple[NoiseTransport, NoiseTransport]:
    _, _, _, t_i, t_r = _transcript()
    return t_i, t_r


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bit flips, truncations, insertions or deletions."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        if op == "flip" and buf:
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del buf[draw(st.integers(0, len(buf))) :]
        elif op == "insert":
            i = draw(st.integers(0, len(buf)))
            buf[i:i] = draw(st.binary(min_size=1, max_size=40))
        elif op == "delete" and buf:
            i = draw(st.integers(0, len(buf) - 1))
            del buf[i : i + draw(st.integers(1, 40))]
        elif op == "set" and buf:
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    return bytes(buf)


def feed(hs: NoiseHandshake, chunks: list[bytes]) -> None:
    for c in chunks:
        if hs.complete:  # later bytes would be transport frames, not handshake input
            break
        hs.receive_data(c)


@FUZZ
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=5))
def test_random_bytes_into_handshake(data: bytes, cuts: list[int]) -> None:
    for make in (initiator, responder):
        hs = make()
        try:
            feed(hs, chunked(data, cuts))
        except P2PError:
            pass


@FUZZ
@given(msg=mutated(M2), cuts=st.lists(st.integers(0, 400), max_size=3))
def test_mutated_message2_into_initiator(msg: bytes, cuts: list[int]) -> None:
    hs = initiator()
    hs.data_to_send()
    try:
        feed(hs, chunked(msg, cuts))
    except HandshakeError:
        assert not hs.complete
        return
    if msg == M2:
        assert hs.complete
    elif hs.complete:  # only possible if the mutation left the first message intact
        assert msg.startswith(M2)


@FUZZ
@given(msg=mutated(M3), cuts=st.lists(st.integers(0, 400), max_size=3))
def test_mutated_message3_into_responder(msg: bytes, cuts: list[int]) -> None:
    hs = responder()
    hs.receive_data(M1)
    assert hs.data_to_send() == M2  # deterministic keys and signatures
    try:
        feed(hs, chunked(msg, cuts))
    except HandshakeError:
        assert not hs.complete
        return
    if hs.complete:
        assert msg.startswith(M3)


@FUZZ
@given(msg=mutated(M1))
def test_mutated_message1_into_responder(msg: bytes) -> None:
    hs = responder()
    try:
        hs.receive_data(msg)
    except HandshakeError:
        return


@FUZZ
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_random_bytes_into_frame_decoder(data: bytes, cuts: list[int]) -> None:
    _, t_r = fresh_transports()
    for chunk in chunked(data, cuts):
        try:
            t_r.decrypt(chunk)
        except ProtocolError:
            return


@FUZZ
@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
    data=st.data(),
)
def test_mutated_frames_into_decoder(
    payloads: list[bytes], cuts: list[int], data: st.DataObject
) -> None:
    t_i, t_r = fresh_transports()
    wire = b"".join(bytes(t_i.encrypt(p)) for p in payloads)
    bad = data.draw(mutated(wire))
    got: list[bytes] = []
    try:
        for chunk in chunked(bad, cuts):
            got += t_r.decrypt(chunk)
    except ProtocolError:
        pass
    # whatever did decrypt is authentic: a prefix of what was sent, frame by frame
    sent = [p for p in payloads if p]  # empty writes produce no frames
    assert got == sent[: len(got)]


@FUZZ
@given(
    payloads=st.lists(st.binary(max_size=70_000), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 250_000), max_size=8),
)
def test_any_chunking_round_trips(payloads: list[bytes], cuts: list[int]) -> None:
    t_i, t_r = fresh_transports()
    wire = b"".join(bytes(t_i.encrypt(p)) for p in payloads)
    got: list[bytes] = []
    for chunk in chunked(wire, cuts):
        got += t_r.decrypt(chunk)
    assert b"".join(got) == b"".join(payloads)
    assert t_r.buffered == 0


class PayloadResponder(NoiseHandshake):
    """A responder whose (correctly encrypted) payload is whatever the test chooses."""

    def __init__(self, payload: bytes) -> None:
        self._chosen = payload
        super().__init__(KEY_R, initiator=False, static_key=R_STATIC, ephemeral_key=R_EPH)

    def _payload(self) -> bytes:
        return self._chosen


VALID_PAYLOAD = encode_payload(KEY_R, R_STATIC.public_key().public_bytes_raw(), ["/yamux/1.0.0"])


@FUZZ
@given(payload=st.one_of(st.binary(max_size=300), mutated(VALID_PAYLOAD)))
def test_arbitrary_payload_in_message2(payload: bytes) -> None:
    i, r = initiator(), PayloadResponder(payload)
    r.receive_data(i.data_to_send())
    try:
        i.receive_data(r.data_to_send())
    except HandshakeError:
        assert not i.complete
        return
    # accepted: then it must carry a valid signature by some key over R's static key. The key
    # decoder accepts unknown fields, so compare the decoded keys, not the bytes on the wire.
    parsed = noise_pb2.NoiseHandshakePayload()
    parsed.ParseFromString(payload)
    sent_key = unmarshal_public_key(parsed.identity_key)
    assert i.result().remote_public_key.to_protobuf() == sent_key.to_protobuf()


def test_non_utf8_muxer_name_is_rejected() -> None:
    good = noise_pb2.NoiseHandshakePayload()
    good.ParseFromString(VALID_PAYLOAD)
    bad = good.SerializeToString() + b"\x22\x03\x12\x01\xff"  # extensions: muxer b"\xff"
    i, r = initiator(), PayloadResponder(bad)
    r.receive_data(i.data_to_send())
    try:
        i.receive_data(r.data_to_send())
    except HandshakeError as exc:
        assert "UTF-8" in str(exc)
    else:
        raise AssertionError("accepted a non-UTF-8 muxer name")


def test_valid_payload_is_accepted() -> None:
    i, r = initiator(), PayloadResponder(VALID_PAYLOAD)
    r.receive_data(i.data_to_send())
    i.receive_data(r.data_to_send())
    assert i.result().remote_stream_muxers == ["/yamux/1.0.0"]


def test_identity_key_with_unknown_field_is_accepted_as_the_same_key() -> None:
    # The example that made the fuzz test above depend on its seed: the key decoder ignores the
    # unknown field, so the key is the responder's although its bytes re-encode differently.
    payload = noise_pb2.NoiseHandshakePayload()
    payload.ParseFromString(VALID_PAYLOAD)
    payload.identity_key += b"\x18\x01"  # field 3, varint: unknown to the key schema
    i, r = initiator(), PayloadResponder(payload.SerializeToString())
    r.receive_data(i.data_to_send())
    i.receive_data(r.data_to_send())
    assert i.result().remote_public_key.to_protobuf() == KEY_R.public_key.to_protobuf()
    assert i.result().remote_public_key.to_protobuf() != payload.identity_key
