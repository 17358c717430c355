"""Property and fuzz tests for multistream-select: round trips; garbage in, only p2pnet errors out.

The async negotiations are driven through a scripted connection: its input is a fixed byte string
split into arbitrary chunks, followed by EOF, so every example ends (in success or in an error)
without waiting on anything.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pnet.errors import P2PError, ProtocolNotSupported
from p2pnet.io import Bytes, ChunkReader
from p2pnet.multistream import (
    LS,
    MAX_LS_REPLY_LENGTH,
    MAX_MESSAGE_LENGTH,
    MULTISTREAM_PROTOCOL_ID,
    NA,
    MultistreamDialer,
    MultistreamListener,
    ProtocolAgreed,
    decode_ls_reply,
    decode_message,
    encode_ls_reply,
    encode_message,
    encode_messages,
    list_protocols,
    negotiate_inbound,
    negotiate_outbound,
)
from p2pnet.wire.framing import FrameDecoder

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class ScriptedConn(ChunkReader):
    """Reads ``chunks`` then EOF; records writes."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__()
        self._chunks = [c for c in chunks if c]
        self.written = bytearray()

    async def _read_chunk(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""

    async def write(self, data: Bytes) -> None:
        self.written += data

    async def close(self) -> None:
        pass


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


async def read_all(conn: ChunkReader) -> bytes:
    out = b""
    while chunk := await conn.read():
        out += chunk
    return out


# Any sendable id: no lone surrogates, not a keyword (40 chars stay below the 1023-byte limit).
protocol_ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40).filter(
    lambda t: t not in (NA, LS, MULTISTREAM_PROTOCOL_ID)
)
cut_lists = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few random byte flips, insertions, deletions or a truncation."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
        pos = draw(st.integers(min_value=0, max_value=max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= draw(st.integers(min_value=1, max_value=255))
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and buf:
            del buf[pos : pos + draw(st.integers(min_value=1, max_value=3))]
        elif op == "truncate":
            del buf[pos:]
        elif op == "dup" and buf:
            buf[pos:pos] = buf[pos : pos + draw(st.integers(min_value=1, max_value=8))]
    return bytes(buf)


# ---------------------------------------------------------------------------------------------
# sans-IO round trips


@given(st.lists(protocol_ids, max_size=8), st.binary(max_size=20), cut_lists)
def test_decoder_roundtrip_any_chunking(texts: list[str], tail: bytes, cuts: list[int]) -> None:
    wire = encode_messages(texts) + tail
    dec = FrameDecoder(MAX_MESSAGE_LENGTH)
    got: list[str] = []
    for chunk in split(wire, cuts):
        dec.feed(chunk)
        while True:
            try:
                frame = dec.next_frame()
                text = None if frame is None else decode_message(frame)
            except P2PError:
                # Only the arbitrary tail may be malformed, never the encoded messages.
                assert len(got) == len(texts)
                return
            if text is None:
                break
            got.append(text)
    assert got[: len(texts)] == texts


@given(st.lists(protocol_ids, max_size=30))
def test_ls_reply_roundtrip(protos: list[str]) -> None:
    dec = FrameDecoder(MAX_LS_REPLY_LENGTH)
    dec.feed(encode_ls_reply(protos))
    frame = dec.next_frame()
    assert frame is not None
    assert decode_ls_reply(frame[:-1]) == protos
    assert dec.buffered == 0


@given(st.binary(max_size=300), cut_lists)
def test_decoder_random_bytes_only_p2p_errors(data: bytes, cuts: list[int]) -> None:
    dec = FrameDecoder(MAX_MESSAGE_LENGTH)
    try:
        for chunk in split(data, cuts):
            dec.feed(chunk)
            while (frame := dec.next_frame()) is not None:
                decode_message(frame)
    except P2PError:
        pass


@given(st.binary(max_size=300))
def test_decode_ls_reply_random_bytes_only_p2p_errors(data: bytes) -> None:
    try:
        decode_ls_reply(data)
    except P2PError:
        pass


# ---------------------------------------------------------------------------------------------
# negotiations fed with valid, random and mutated transcripts


def dialer_transcript(proposals: list[str]) -> bytes:
    return encode_messages([MULTISTREAM_PROTOCOL_ID, *proposals])


def listener_transcript(refusals: int, accepted: str) -> bytes:
    return encode_messages([MULTISTREAM_PROTOCOL_ID] + [NA] * refusals + [accepted])


@FUZZ
@given(
    st.lists(protocol_ids, min_size=1, max_size=5, unique=True), st.binary(max_size=50), cut_lists
)
async def test_inbound_valid_transcript_keeps_app_data(
    proposals: list[str], app: bytes, cuts: list[int]
) -> None:
    conn = ScriptedConn(split(dialer_transcript(proposals) + app, cuts))
    accepted = proposals[-1]
    assert await negotiate_inbound(conn, {accepted}, timeout=5) == accepted
    assert await read_all(conn) == app
    n = len(proposals) - 1
    assert bytes(conn.written) == encode_messages([MULTISTREAM_PROTOCOL_ID] + [NA] * n + [accepted])


@FUZZ
@given(
    st.lists(protocol_ids, min_size=1, max_size=5, unique=True), st.binary(max_size=50), cut_lists
)
async def test_outbound_valid_transcript_keeps_app_data(
    protos: list[str], app: bytes, cuts: list[int]
) -> None:
    wire = listener_transcript(len(protos) - 1, protos[-1]) + app
    conn = ScriptedConn(split(wire, cuts))
    assert await negotiate_outbound(conn, protos, timeout=5) == protos[-1]
    assert await read_all(conn) == app
    assert bytes(conn.written) == encode_messages([MULTISTREAM_PROTOCOL_ID, *protos])


@st.composite
def inbound_inputs(draw: st.DrawFn) -> bytes:
    proposals = draw(st.lists(st.one_of(protocol_ids, st.just(LS)), min_size=1, max_size=4))
    valid = dialer_transcript(proposals) + draw(st.binary(max_size=10))
    return draw(st.one_of(st.binary(max_size=200), mutated(valid)))


@st.composite
def outbound_inputs(draw: st.DrawFn) -> bytes:
    valid = listener_transcript(draw(st.integers(0, 3)), draw(protocol_ids))
    ls = encode_message(MULTISTREAM_PROTOCOL_ID) + encode_ls_reply(
        draw(st.lists(protocol_ids, max_size=4))
    )
    return draw(st.one_of(st.binary(max_size=200), mutated(valid), mutated(ls)))


@FUZZ
@given(inbound_inputs(), cut_lists)
async def test_inbound_garbage_only_p2p_errors(data: bytes, cuts: list[int]) -> None:
    conn = ScriptedConn(split(data, cuts))
    try:
        proto = await negotiate_inbound(conn, lambda p: len(p) % 3 == 0, timeout=5)
    except P2PError:
        return
    assert len(proto) % 3 == 0


@FUZZ
@given(outbound_inputs(), st.lists(protocol_ids, min_size=1, max_size=4, unique=True), cut_lists)
async def test_outbound_garbage_only_p2p_errors(
    data: bytes, protos: list[str], cuts: list[int]
) -> None:
    conn = ScriptedConn(split(data, cuts))
    try:
        proto = await negotiate_outbound(conn, protos, timeout=5)
    except P2PError:
        return
    assert proto in protos


@FUZZ
@given(outbound_inputs(), cut_lists)
async def test_ls_garbage_only_p2p_errors(data: bytes, cuts: list[int]) -> None:
    conn = ScriptedConn(split(data, cuts))
    try:
        result = await list_protocols(conn, timeout=5)
    except P2PError:
        return
    assert all(isinstance(p, str) for p in result)


@given(
    st.lists(protocol_ids, min_size=1, max_size=5, unique=True),
    st.lists(protocol_ids, max_size=5),
    st.integers(min_value=1, max_value=40),
)
def test_core_pair_agrees_on_the_first_common_protocol(
    proposals: list[str], supported: list[str], chunk: int
) -> None:
    dialer = MultistreamDialer(proposals)
    listener = MultistreamListener(set(supported))
    to_listener = bytearray(dialer.data_to_send())
    to_dialer = bytearray(listener.data_to_send())
    common = [p for p in proposals if p in supported]
    agreed: list[object] = []
    try:
        while not dialer.finished and (to_listener or to_dialer):
            if to_listener and not listener.finished:
                agreed += listener.receive_data(bytes(to_listener[:chunk]))
                del to_listener[:chunk]
                to_dialer += listener.data_to_send()
            if to_dialer:
                agreed += dialer.receive_data(bytes(to_dialer[:chunk]))
                del to_dialer[:chunk]
                to_listener += dialer.data_to_send()
    except ProtocolNotSupported:
        assert not common
        return
    assert [e for e in agreed if isinstance(e, ProtocolAgreed)] == [ProtocolAgreed(common[0])] * 2
