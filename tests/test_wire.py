import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from memory_pipe import memory_pipe

from p2pnet.errors import IncompleteRead, MessageTooLargeError, ProtocolError
from p2pnet.wire.framing import (
    FrameDecoder,
    encode_length_prefixed,
    read_length_prefixed,
    read_length_prefixed_or_eof,
    write_length_prefixed,
)
from p2pnet.wire.varint import decode_uvarint, encode_uvarint


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (255, "ff01"),
        (300, "ac02"),
        (16384, "808001"),
        (2**63 - 1, "ffffffffffffffff7f"),
    ],
)
def test_varint_vectors(value: int, encoded: str) -> None:
    # Vectors from the multiformats unsigned-varint README.
    assert encode_uvarint(value).hex() == encoded
    assert decode_uvarint(bytes.fromhex(encoded)) == (value, len(encoded) // 2)


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_varint_roundtrip(value: int) -> None:
    enc = encode_uvarint(value)
    assert decode_uvarint(enc + b"tail") == (value, len(enc))
    assert decode_uvarint(enc[:-1]) is None


def test_varint_rejects_overlong_and_non_minimal() -> None:
    with pytest.raises(ProtocolError):
        decode_uvarint(b"\xff" * 9 + b"\x01")
    with pytest.raises(ProtocolError):
        decode_uvarint(b"\x81\x00")
    with pytest.raises(ValueError):
        encode_uvarint(-1)


@given(st.binary(max_size=40))
def test_varint_random_bytes_only_library_errors(data: bytes) -> None:
    try:
        decode_uvarint(data)
    except ProtocolError:
        pass


def test_decoder_splits_messages_fed_byte_by_byte() -> None:
    msgs = [b"", b"a", b"x" * 300, b"hello"]
    stream = b"".join(encode_length_prefixed(m) for m in msgs)
    dec = FrameDecoder(max_length=1000)
    out: list[bytes] = []
    for i in range(len(stream)):
        dec.feed(stream[i : i + 1])
        out += dec.frames()
    assert out == msgs
    assert dec.buffered == 0


def test_decoder_enforces_max_size_before_buffering() -> None:
    dec = FrameDecoder(max_length=10)
    dec.feed(encode_uvarint(11))
    with pytest.raises(MessageTooLargeError):
        dec.next_frame()


async def test_async_length_prefixed_roundtrip_and_limits() -> None:
    a, b = memory_pipe()
    await write_length_prefixed(a, b"abc")
    await write_length_prefixed(a, b"")
    await a.write(encode_uvarint(5000) + b"x")
    assert await read_length_prefixed(b) == b"abc"
    assert await read_length_prefixed(b) == b""
    with pytest.raises(MessageTooLargeError):
        await read_length_prefixed(b, max_size=4096)


async def test_async_truncated_message_and_clean_eof() -> None:
    a, b = memory_pipe()
    await a.write(encode_uvarint(10) + b"short")
    await a.close()
    with pytest.raises(IncompleteRead) as info:
        await read_length_prefixed(b)
    assert info.value.partial == b"short"

    c, d = memory_pipe()
    await write_length_prefixed(c, b"one")
    await c.close()
    assert await read_length_prefixed_or_eof(d) == b"one"
    assert await read_length_prefixed_or_eof(d) is None


async def test_chunk_reader_keeps_leftovers() -> None:
    a, b = memory_pipe()
    await a.write(b"0123456789")
    await a.write(b"abc")
    assert await b.read(3) == b"012"
    assert await b.readexactly(9) == b"3456789ab"
    assert await b.read() == b"c"
    await a.close()
    assert await b.read() == b""
    with pytest.raises(IncompleteRead):
        await b.readexactly(1)


def test_frame_decoder_refuses_an_oversized_prefix_before_it_ends() -> None:
    # limit 1000: after two continuation bytes the length is at least 2**14, too large already
    dec = FrameDecoder(max_length=1000)
    dec.feed(b"\x80")
    assert dec.next_frame() is None and dec.wanted == 1
    dec.feed(b"\x80")
    with pytest.raises(MessageTooLargeError):
        dec.next_frame()


def test_frame_decoder_wanted_never_reaches_past_the_frame() -> None:
    frame = encode_length_prefixed(b"x" * 300) + b"NEXT"
    dec = FrameDecoder()
    pos = 0
    while (got := dec.next_frame()) is None:
        n = dec.wanted
        dec.feed(frame[pos : pos + n])
        pos += n
    assert got == b"x" * 300
    assert frame[pos:] == b"NEXT" and dec.buffered == 0


@pytest.mark.parametrize("data", [b"\x80\x00", b"\xff" * 9 + b"\x01"])
def test_frame_decoder_refuses_bad_varints(data: bytes) -> None:
    dec = FrameDecoder(max_length=1 << 62)
    dec.feed(data)
    with pytest.raises(ProtocolError):
        dec.next_frame()


async def test_a_frame_must_complete_within_its_deadline_however_fast_each_byte_comes() -> None:
    """Issue 11: the timeout is for the whole frame, not for each read (a peer trickling a byte
    at a time cannot hold a frame and its buffer for ever)."""
    a, b = memory_pipe()

    async def trickle() -> None:
        await a.write(encode_uvarint(1000))
        for _ in range(1000):
            await a.write(b"x")
            await asyncio.sleep(0.01)  # the peer's pace: each byte well within the timeout

    sender = asyncio.ensure_future(trickle())
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        await read_length_prefixed(b, timeout=0.2)
    assert loop.time() - start < 1.0
    sender.cancel()
    # before the first byte of a frame, waiting is not bounded by it (an idle stream)
    c, d = memory_pipe()
    reader = asyncio.ensure_future(read_length_prefixed_or_eof(d, timeout=0.05))
    await asyncio.sleep(0.2)  # idle for longer than the frame deadline
    assert not reader.done()
    await write_length_prefixed(c, b"late but whole")
    assert await asyncio.wait_for(reader, 5) == b"late but whole"


def _split_all(dec: FrameDecoder, chunks: list[bytes]) -> list[bytes] | str:
    out: list[bytes] = []
    try:
        for chunk in chunks:
            out += dec.split(chunk)
    except (MessageTooLargeError, ProtocolError) as exc:
        return type(exc).__name__
    return out


def _feed_all(dec: FrameDecoder, chunks: list[bytes]) -> list[bytes] | str:
    out: list[bytes] = []
    try:
        for chunk in chunks:
            dec.feed(chunk)
            out += dec.frames()
    except (MessageTooLargeError, ProtocolError) as exc:
        return type(exc).__name__
    return out


@given(
    st.lists(st.binary(max_size=300), max_size=8),
    st.binary(max_size=6),
    st.lists(st.integers(min_value=0, max_value=3000), max_size=6),
)
def test_frame_decoder_split_equals_feed_then_frames(
    bodies: list[bytes], junk: bytes, cuts: list[int]
) -> None:
    """``split`` (frames cut straight from the chunk between frames) gives what feed + frames
    gives, for any chunking, and the same error for a bad or oversized prefix."""
    stream = b"".join(encode_uvarint(len(b)) + b for b in bodies) + junk
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    a, b = FrameDecoder(max_length=200), FrameDecoder(max_length=200)
    got = _split_all(a, chunks)
    assert got == _feed_all(b, chunks)
    if not isinstance(got, str):  # the same incomplete tail waits in both
        assert a.buffered == b.buffered


def test_frame_decoder_split_refuses_oversized_and_non_minimal_prefixes() -> None:
    with pytest.raises(MessageTooLargeError):
        FrameDecoder(max_length=100).split(b"\x03abc" + encode_uvarint(101) + bytes(101))
    with pytest.raises(ProtocolError):
        FrameDecoder(max_length=1000).split(b"\x03abc\x85\x00" + bytes(5))
    dec = FrameDecoder(max_length=1000)
    assert dec.split(b"\x03abc\x05ab") == [b"abc"]  # the rest waits in the buffer
    assert dec.buffered == 3
    assert dec.split(b"cde\x01") == [b"abcde"]
    assert dec.split(b"z") == [b"z"]
    assert dec.buffered == 0
