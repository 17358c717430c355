"""multistream-select 1.0: wire format, dialer, listener, ls, limits, pipelining."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from memory_pipe import MemoryEnd

from p2pnet.errors import (
    ConnectionClosed,
    IncompleteRead,
    MessageTooLargeError,
    NegotiationError,
    ProtocolError,
    ProtocolNotSupported,
)
from p2pnet.io import Bytes
from p2pnet.multistream import (
    MAX_LS_PROTOCOLS,
    MAX_LS_REPLY_LENGTH,
    MAX_MESSAGE_LENGTH,
    MAX_NEGOTIATION_ATTEMPTS,
    MULTISTREAM_PROTOCOL_ID,
    MultistreamDialer,
    MultistreamListener,
    NegotiationState,
    Negotiator,
    ProtocolAgreed,
    ProtocolLister,
    ProtocolRefused,
    ProtocolsListed,
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
from p2pnet.wire.varint import encode_uvarint

HEADER = encode_message(MULTISTREAM_PROTOCOL_ID)
NA = encode_message("na")


class RecordingEnd(MemoryEnd):
    """A memory pipe end that remembers every write, to check batching."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    async def write(self, data: Bytes) -> None:
        self.writes.append(bytes(data))
        await super().write(data)


def pipe() -> tuple[RecordingEnd, RecordingEnd]:
    a, b = RecordingEnd(), RecordingEnd()
    a.peer, b.peer = b, a
    return a, b


async def feed(end: MemoryEnd, data: bytes) -> None:
    """Make ``end`` receive ``data`` as if its peer had written it."""
    end.inbox.put_nowait(data)


def eof(end: MemoryEnd) -> None:
    end.inbox.put_nowait(b"")


# ---------------------------------------------------------------------------------------------
# wire format


def test_message_vectors() -> None:
    # Examples from the spec: "na" -> 03 6e 61 0a; the header is 19 bytes + newline.
    assert encode_message("na") == bytes.fromhex("036e610a")
    assert HEADER == b"\x13/multistream/1.0.0\n"
    assert encode_messages(["/multistream/1.0.0", "/noise"]) == HEADER + b"\x07/noise\n"


def test_encode_limits() -> None:
    longest = "/" + "x" * (MAX_MESSAGE_LENGTH - 2)
    assert len(encode_message(longest)) == 2 + MAX_MESSAGE_LENGTH
    with pytest.raises(ValueError):
        encode_message(longest + "x")
    with pytest.raises(ValueError):
        encode_message("\ud800")  # lone surrogate: not encodable


def decode_one(data: bytes, max_length: int = MAX_MESSAGE_LENGTH) -> str | None:
    """The first message framed in ``data`` (None if incomplete), as the negotiators decode it."""
    dec = FrameDecoder(max_length)
    dec.feed(data)
    frame = dec.next_frame()
    return None if frame is None else decode_message(frame)


def test_decoder_multibyte_text() -> None:
    assert decode_one(encode_message("/proto/\u00e9\u4e2d/1")) == "/proto/\u00e9\u4e2d/1"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x00", ProtocolError),  # empty message: no newline
        (b"\x03nax", ProtocolError),  # missing trailing newline
        (b"\x03\xff\xfe\n", ProtocolError),  # invalid UTF-8
        (encode_uvarint(MAX_MESSAGE_LENGTH + 1), MessageTooLargeError),
        (b"\x80\x80", MessageTooLargeError),  # prefix already longer than any allowed length
        (b"\x80\x00", ProtocolError),  # non-minimal varint
    ],
)
def test_decoder_rejects(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_one(data)


@pytest.mark.parametrize(
    "data",
    [b"\x00", b"\x03nax", encode_uvarint(MAX_MESSAGE_LENGTH + 1), b"\x80\x80", b"\x80\x00"],
)
def test_listener_core_fails_on_bad_proposal(data: bytes) -> None:
    listener = MultistreamListener({"/a"})
    with pytest.raises(ProtocolError):
        listener.receive_data(HEADER + data)
    assert listener.state is NegotiationState.FAILED
    assert listener.bytes_wanted == 0


def test_decoder_waits_for_incomplete_input() -> None:
    dec = FrameDecoder(MAX_MESSAGE_LENGTH)
    dec.feed(b"\x13/multi")
    assert dec.next_frame() is None
    assert dec.wanted == 19 - 6  # the rest of the body, not a byte more
    dec.feed(b"stream/1.0.0\n")
    assert dec.next_frame() == MULTISTREAM_PROTOCOL_ID.encode() + b"\n"
    dec.feed(b"\x88")  # first byte of a two-byte prefix
    assert dec.next_frame() is None
    assert dec.wanted == 1


# ---------------------------------------------------------------------------------------------
# the sans-IO core as an in-memory client/server pair


def run_pair(
    dialer: Negotiator, listener: Negotiator, chunk: int | None
) -> tuple[list[bytes], list[bytes]]:
    """Shuttle bytes between two cores, ``chunk`` bytes at a time (None: as written).

    Returns the writes of the dialer and of the listener, to check the exact wire bytes.
    """
    writes: tuple[list[bytes], list[bytes]] = ([], [])
    inboxes = (bytearray(), bytearray())  # bytes on their way to the listener, to the dialer
    sides = (dialer, listener)
    for _ in range(10_000):
        for i, side in enumerate(sides):
            if out := side.data_to_send():
                writes[i].append(out)
                inboxes[i].extend(out)
        if dialer.finished and listener.finished:
            break
        for side, inbox in ((listener, inboxes[0]), (dialer, inboxes[1])):
            if inbox and not side.finished:
                n = len(inbox) if chunk is None else min(chunk, len(inbox))
                side.receive_data(bytes(inbox[:n]))
                del inbox[:n]
    return writes


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_core_pair_fallback_at_the_byte_level(chunk: int | None) -> None:
    dialer = MultistreamDialer(["/a/2", "/a/1"])
    listener = MultistreamListener(["/b", "/a/1"])
    dialer_writes, listener_writes = run_pair(dialer, listener, chunk)
    assert dialer.state is listener.state is NegotiationState.AGREED
    # header + first proposal pipelined in one write, then the fallback
    assert dialer_writes == [HEADER + encode_message("/a/2"), encode_message("/a/1")]
    assert b"".join(listener_writes) == HEADER + NA + encode_message("/a/1")


def test_core_pair_ls_then_select() -> None:
    lister = ProtocolLister()
    listener = MultistreamListener(["/x", "/y"])
    listener.receive_data(lister.data_to_send())
    assert listener.data_to_send() == HEADER + encode_ls_reply(["/x", "/y"])
    events = lister.receive_data(HEADER + encode_ls_reply(["/x", "/y"]))
    assert events == [ProtocolsListed(["/x", "/y"])]
    assert lister.state is NegotiationState.LISTED
    dialer = MultistreamDialer(["/y"], header_exchanged=True)
    assert dialer.data_to_send() == encode_message("/y")
    assert listener.receive_data(encode_message("/y")) == [ProtocolAgreed("/y")]
    assert dialer.receive_data(listener.data_to_send()) == [ProtocolAgreed("/y")]


def test_core_keeps_bytes_past_the_negotiation() -> None:
    listener = MultistreamListener({"/echo/1"})
    events = listener.receive_data(HEADER + encode_message("/echo/1") + b"app data")
    assert events == [ProtocolAgreed("/echo/1")]
    assert listener.take_unused() == b"app data"
    with pytest.raises(RuntimeError):
        listener.receive_data(b"more")


def test_core_bytes_wanted_never_reads_past_the_negotiation() -> None:
    # Reading exactly bytes_wanted from a buffer leaves the application data untouched.
    incoming = HEADER + NA + encode_message("/b") + b"\x00\x01early"
    dialer = MultistreamDialer(["/a", "/b"])
    pos = 0
    events: list[object] = []
    while not dialer.finished:
        n = dialer.bytes_wanted
        events += dialer.receive_data(incoming[pos : pos + n])
        pos += n
    assert events == [ProtocolRefused("/a"), ProtocolAgreed("/b")]
    assert incoming[pos:] == b"\x00\x01early"
    assert dialer.take_unused() == b""


def test_core_header_refused_at_the_first_wrong_byte() -> None:
    listener = MultistreamListener({"/a"})
    assert listener.bytes_wanted == 1
    with pytest.raises(NegotiationError, match="0x16"):
        listener.receive_data(b"\x16")
    assert listener.state is NegotiationState.FAILED


def test_ls_reply_layout_matches_js_and_rust() -> None:
    # js handle.ts / rust Message::Protocols: outer prefix, then per protocol
    # uvarint(len+1) || id || "\n", then a final "\n".
    body = b"\x03/a\n" + b"\x05/b/c\n" + b"\n"
    assert encode_ls_reply(["/a", "/b/c"]) == encode_uvarint(len(body)) + body
    dec = FrameDecoder(MAX_LS_REPLY_LENGTH)
    dec.feed(encode_ls_reply(["/a", "/b/c"]))
    frame = dec.next_frame()
    assert frame is not None and frame.endswith(b"\n")
    assert decode_ls_reply(frame[:-1]) == ["/a", "/b/c"]
    assert encode_ls_reply([]) == b"\x01\n"
    assert decode_ls_reply(b"") == []


def test_ls_reply_is_bounded() -> None:
    many = [f"/p/{i}" for i in range(MAX_LS_PROTOCOLS + 50)]
    dec = FrameDecoder(1 << 14)
    dec.feed(encode_ls_reply(many))
    frame = dec.next_frame()
    assert frame is not None
    assert decode_ls_reply(frame[:-1]) == many[:MAX_LS_PROTOCOLS]
    # Large ids: stops before the 16383-byte frame limit.
    # Large ids (1004 bytes each on the wire): stops before the 16383-byte frame limit.
    big = ["/" + str(i % 10) * 1000 for i in range(30)]
    reply = encode_ls_reply(big)
    assert len(reply) <= 2 + (1 << 14) - 1
    dec = FrameDecoder(MAX_LS_REPLY_LENGTH)
    dec.feed(reply)
    frame = dec.next_frame()
    assert frame is not None
    assert decode_ls_reply(frame[:-1]) == big[:16]


@pytest.mark.parametrize(
    "payload",
    [
        b"\x05/a\n",  # entry longer than the answer
        b"\x03/ab",  # entry without newline
        b"\x80",  # truncated prefix
        b"\x03\xff\xfe\n",  # invalid UTF-8
        b"\x00",  # empty entry
    ],
)
def test_ls_reply_rejects(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_ls_reply(payload)


def test_ls_reply_rejects_too_many() -> None:
    payload = b"\x03/a\n" * (MAX_LS_PROTOCOLS + 1)
    with pytest.raises(ProtocolError):
        decode_ls_reply(payload)


# ---------------------------------------------------------------------------------------------
# negotiation over a memory pipe


async def test_negotiate_success_one_write_each_way() -> None:
    dialer, listener = pipe()
    out, inn = await asyncio.gather(
        negotiate_outbound(dialer, ["/noise"], timeout=5),
        negotiate_inbound(listener, {"/noise", "/tls/1.0.0"}, timeout=5),
    )
    assert out == inn == "/noise"
    assert dialer.writes == [HEADER + encode_message("/noise")]  # header + proposal pipelined
    assert listener.writes == [HEADER, encode_message("/noise")]
    assert dialer.inbox.empty() and listener.inbox.empty()


async def test_fallback_through_na_in_order() -> None:
    dialer, listener = pipe()
    out, inn = await asyncio.gather(
        negotiate_outbound(dialer, ["/a/2", "/a/1", "/b"], timeout=5),
        negotiate_inbound(listener, ["/b", "/a/1"], timeout=5),
    )
    assert out == inn == "/a/1"
    assert dialer.writes == [HEADER + encode_message("/a/2"), encode_message("/a/1")]
    assert listener.writes == [HEADER, NA, encode_message("/a/1")]


async def test_predicate_listener() -> None:
    dialer, listener = pipe()
    out, inn = await asyncio.gather(
        negotiate_outbound(dialer, ["/x", "/kad/7"], timeout=5),
        negotiate_inbound(listener, lambda p: p.startswith("/kad/"), timeout=5),
    )
    assert out == inn == "/kad/7"


async def test_single_string_arguments() -> None:
    # A str is a Sequence/Collection of str; it must mean one protocol, not its characters.
    dialer, listener = pipe()
    out, inn = await asyncio.gather(
        negotiate_outbound(dialer, "/ping", timeout=5),
        negotiate_inbound(listener, "/ping", timeout=5),
    )
    assert out == inn == "/ping"


async def test_protocol_not_supported() -> None:
    dialer, listener = pipe()
    task = asyncio.create_task(negotiate_inbound(listener, {"/c"}, timeout=5))
    with pytest.raises(ProtocolNotSupported):
        await negotiate_outbound(dialer, ["/a", "/b"], timeout=5)
    await dialer.close()  # what a dialer does after failing
    with pytest.raises(IncompleteRead):
        await task
    assert listener.writes == [HEADER, NA, NA]


async def test_longest_protocol_id_negotiates() -> None:
    longest = "/" + "y" * (MAX_MESSAGE_LENGTH - 2)
    dialer, listener = pipe()
    out, inn = await asyncio.gather(
        negotiate_outbound(dialer, [longest], timeout=5),
        negotiate_inbound(listener, {longest}, timeout=5),
    )
    assert out == inn == longest


@pytest.mark.parametrize("bad", [[], ["na"], ["ls"], [MULTISTREAM_PROTOCOL_ID], ["/" + "z" * 2000]])
async def test_outbound_rejects_unusable_arguments(bad: list[str]) -> None:
    dialer, _ = pipe()
    with pytest.raises(ValueError):
        await negotiate_outbound(dialer, bad)
    assert dialer.writes == []


async def test_listener_answers_na_to_keywords_and_unknown() -> None:
    _, listener = pipe()
    await feed(
        listener,
        HEADER + encode_messages(["na", MULTISTREAM_PROTOCOL_ID, "", "/nope", "/yes"]),
    )
    assert await negotiate_inbound(listener, {"/yes", "na", "ls"}, timeout=5) == "/yes"
    assert listener.writes == [HEADER, NA, NA, NA, NA, encode_message("/yes")]


async def test_listener_bounds_attempts() -> None:
    _, listener = pipe()
    proposals = [f"/nope/{i}" for i in range(MAX_NEGOTIATION_ATTEMPTS + 1)]
    await feed(listener, HEADER + encode_messages(proposals))
    with pytest.raises(NegotiationError, match="proposals"):
        await negotiate_inbound(listener, {"/yes"}, timeout=5)
    assert listener.writes.count(NA) == MAX_NEGOTIATION_ATTEMPTS


async def test_listener_custom_attempt_bound_counts_ls() -> None:
    _, listener = pipe()
    await feed(listener, HEADER + encode_messages(["ls", "ls", "/yes"]))
    with pytest.raises(NegotiationError):
        await negotiate_inbound(listener, {"/yes"}, timeout=5, max_attempts=2)


# garbage instead of the header ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (encode_message("/multistream/2.0.0"), NegotiationError),
        (encode_message("/noise"), NegotiationError),  # proposal without header
        # A wrong length byte is refused at once, before any body arrives.
        (b"\x16GET / HTTP/1.1\r\nHost: x", NegotiationError),
        (b"\x00", NegotiationError),
        (b"\xff\xff\xff", NegotiationError),
    ],
)
async def test_listener_garbage_header(data: bytes, error: type[Exception]) -> None:
    _, listener = pipe()
    await feed(listener, data)
    with pytest.raises(error):
        await negotiate_inbound(listener, {"/noise"}, timeout=5)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (encode_message("/multistream/2.0.0"), NegotiationError),
        (NA, NegotiationError),  # answer before the header
        (encode_message("/noise"), NegotiationError),
        (b"\x13/multistream/1.0.0X", NegotiationError),
        (b"\x03\xc3\x28\n", NegotiationError),  # invalid UTF-8: not the header
    ],
)
async def test_dialer_garbage_header(data: bytes, error: type[Exception]) -> None:
    dialer, _ = pipe()
    await feed(dialer, data)
    with pytest.raises(error):
        await negotiate_outbound(dialer, ["/noise"], timeout=5)


async def test_dialer_unexpected_answer() -> None:
    dialer, _ = pipe()
    await feed(dialer, HEADER + encode_message("/tls/1.0.0"))
    with pytest.raises(NegotiationError, match="unexpected answer"):
        await negotiate_outbound(dialer, ["/noise"], timeout=5)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"\x07/noise", IncompleteRead),  # EOF before the newline
        (b"\x07/noise\r", ProtocolError),  # complete, but "\r" instead of the newline
        (b"\x07/noisex", ProtocolError),  # missing newline
        (b"\x07/n\xffise\n", ProtocolError),  # invalid UTF-8
        (encode_uvarint(MAX_MESSAGE_LENGTH + 1) + b"/x\n", MessageTooLargeError),
        (b"\x88", IncompleteRead),  # EOF inside the length prefix
        (b"", IncompleteRead),
    ],
)
async def test_dialer_bad_answer(answer: bytes, error: type[Exception]) -> None:
    dialer, _ = pipe()
    await feed(dialer, HEADER + answer)
    eof(dialer)
    with pytest.raises(error):
        await negotiate_outbound(dialer, ["/noise"], timeout=5)


async def test_listener_eof_midway() -> None:
    _, listener = pipe()
    await feed(listener, HEADER + b"\x07/noi")
    eof(listener)
    with pytest.raises(IncompleteRead):
        await negotiate_inbound(listener, {"/noise"}, timeout=5)


async def test_too_long_prefix_fails_without_waiting_for_the_body() -> None:
    # Only the prefix arrives and the connection stays open: the error must come at once,
    # not after the timeout.
    dialer, listener = pipe()
    await feed(listener, HEADER + b"\x80\x80")
    with pytest.raises(MessageTooLargeError):
        await negotiate_inbound(listener, {"/a"}, timeout=30)
    dialer, _ = pipe()
    await feed(dialer, HEADER + encode_uvarint(5000))
    with pytest.raises(MessageTooLargeError):
        await negotiate_outbound(dialer, ["/a"], timeout=30)


async def test_write_after_close_is_a_p2p_error() -> None:
    dialer, _ = pipe()
    await dialer.close()
    with pytest.raises(ConnectionClosed):
        await negotiate_outbound(dialer, ["/a"], timeout=5)


# timeouts -----------------------------------------------------------------------------------


async def test_dialer_timeout() -> None:
    dialer, _ = pipe()  # the listener never answers
    with pytest.raises(NegotiationError, match="timed out") as info:
        await negotiate_outbound(dialer, ["/noise"], timeout=0.05)
    assert isinstance(info.value.__cause__, TimeoutError)


async def test_listener_timeout_after_header() -> None:
    _, listener = pipe()
    await feed(listener, HEADER)  # the dialer sends the header, then nothing
    with pytest.raises(NegotiationError, match="timed out"):
        await negotiate_inbound(listener, {"/noise"}, timeout=0.05)


async def test_outer_cancellation_is_not_turned_into_a_timeout() -> None:
    dialer, _ = pipe()
    task = asyncio.create_task(negotiate_outbound(dialer, ["/noise"], timeout=30))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ls ----------------------------------------------------------------------------------------


async def test_ls_then_select() -> None:
    dialer, listener = pipe()
    task = asyncio.create_task(negotiate_inbound(listener, ["/a", "/b/1.0.0"], timeout=5))
    assert await list_protocols(dialer, timeout=5) == ["/a", "/b/1.0.0"]
    assert dialer.writes == [HEADER + encode_message("ls")]
    proto = await negotiate_outbound(dialer, ["/c", "/b/1.0.0"], timeout=5, header_exchanged=True)
    assert proto == await task == "/b/1.0.0"
    assert dialer.writes[1:] == [encode_message("/c"), encode_message("/b/1.0.0")]
    assert listener.writes == [
        HEADER,
        encode_ls_reply(["/a", "/b/1.0.0"]),
        NA,
        encode_message("/b/1.0.0"),
    ]


async def test_ls_with_predicate_is_empty() -> None:
    dialer, listener = pipe()
    task = asyncio.create_task(negotiate_inbound(listener, lambda p: p == "/a", timeout=5))
    assert await list_protocols(dialer, timeout=5) == []
    await dialer.close()
    with pytest.raises(IncompleteRead):
        await task


async def test_ls_answered_with_na_by_go_style_listener() -> None:
    dialer, _ = pipe()
    await feed(dialer, HEADER + NA)
    with pytest.raises(ProtocolNotSupported):
        await list_protocols(dialer, timeout=5)


async def test_ls_accepts_answers_above_the_message_limit() -> None:
    protos = [f"/proto/{i:04d}/" + "q" * 80 for i in range(60)]  # about 5.8 kB
    reply = encode_ls_reply(protos)
    assert len(reply) > MAX_MESSAGE_LENGTH
    dialer, _ = pipe()
    await feed(dialer, HEADER + reply)
    assert await list_protocols(dialer, timeout=5) == protos


# pipelining: no byte past the negotiation is consumed ----------------------------------------


async def test_listener_keeps_app_data_sent_with_the_proposal() -> None:
    _, listener = pipe()
    await feed(listener, HEADER + encode_message("/echo/1") + b"hello, app")
    assert await negotiate_inbound(listener, {"/echo/1"}, timeout=5) == "/echo/1"
    assert await listener.readexactly(10) == b"hello, app"


async def test_dialer_keeps_app_data_sent_with_the_echo() -> None:
    dialer, _ = pipe()
    await feed(dialer, HEADER + NA + encode_message("/b") + b"\x00\x01early data")
    assert await negotiate_outbound(dialer, ["/a", "/b"], timeout=5) == "/b"
    assert await dialer.read() == b"\x00\x01early data"


async def test_early_data_goes_with_the_proposal_in_one_write() -> None:
    dialer, listener = pipe()
    out, inn = await asyncio.gather(
        negotiate_outbound(dialer, ["/kad/1"], timeout=5, early_data=b"\x03req"),
        negotiate_inbound(listener, {"/kad/1"}, timeout=5),
    )
    assert out == inn == "/kad/1"
    assert dialer.writes == [HEADER + encode_message("/kad/1") + b"\x03req"]
    # the listener left the request for the protocol handler
    assert await listener.readexactly(4) == b"\x03req"


async def test_early_data_needs_a_single_protocol() -> None:
    with pytest.raises(ValueError, match="single"):
        MultistreamDialer(["/a", "/b"], early_data=b"x")
    dialer, _ = pipe()
    with pytest.raises(ValueError, match="single"):
        await negotiate_outbound(dialer, ["/a", "/b"], timeout=5, early_data=b"x")
    assert dialer.writes == []


async def test_early_data_refused_is_protocol_not_supported() -> None:
    # a listener without the protocol answers na; the early data then reads as a malformed
    # proposal there, while the dialer reports the refusal
    dialer, listener = pipe()
    results = await asyncio.gather(
        negotiate_outbound(dialer, ["/kad/1"], timeout=5, early_data=b"\x03req"),
        negotiate_inbound(listener, {"/other/1"}, timeout=5),
        return_exceptions=True,
    )
    assert isinstance(results[0], ProtocolNotSupported)
    assert isinstance(results[1], (NegotiationError, ProtocolError))


async def test_simultaneous_pipelining_both_directions() -> None:
    # The dialer sends header + proposal + application data before hearing anything; the
    # listener answers and both sides then exchange application data.
    dialer, listener = pipe()
    await dialer.write(HEADER + encode_message("/chat/1") + b"ping?")
    assert await negotiate_inbound(listener, {"/chat/1"}, timeout=5) == "/chat/1"
    assert await listener.readexactly(5) == b"ping?"
    await listener.write(b"pong!")
    expected = HEADER + encode_message("/chat/1") + b"pong!"
    got = b""
    while len(got) < len(expected):
        got += await dialer.read()
    assert got == expected


# loopback TCP ------------------------------------------------------------------------------


class StreamConn:
    """ReadWriter over an asyncio stream pair (what a TCP transport hands over)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, n: int = -1) -> bytes:
        return await self._reader.read(n if n >= 0 else 65536)

    async def readexactly(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            raise IncompleteRead(exc.partial, n) from None

    async def write(self, data: Bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


@pytest.fixture
async def tcp_pair() -> AsyncIterator[tuple[StreamConn, StreamConn]]:
    accepted: asyncio.Queue[StreamConn] = asyncio.Queue()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.put_nowait(StreamConn(r, w))

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    client = StreamConn(r, w)
    srv = await asyncio.wait_for(accepted.get(), 5)
    try:
        yield client, srv
    finally:
        await client.close()
        await srv.close()
        server.close()
        await server.wait_closed()


async def test_tcp_loopback_negotiation_and_data(tcp_pair: tuple[StreamConn, StreamConn]) -> None:
    client, srv = tcp_pair

    async def serve() -> str:
        proto = await negotiate_inbound(srv, ["/noise", "/echo/1.0.0"], timeout=5)
        data = await srv.readexactly(4)
        await srv.write(data[::-1])
        return proto

    async def dial() -> bytes:
        proto = await negotiate_outbound(client, ["/other", "/echo/1.0.0"], timeout=5)
        assert proto == "/echo/1.0.0"
        await client.write(b"abcd")
        return await client.readexactly(4)

    proto, answer = await asyncio.gather(serve(), dial())
    assert proto == "/echo/1.0.0"
    assert answer == b"dcba"


async def test_tcp_pipelined_app_data(tcp_pair: tuple[StreamConn, StreamConn]) -> None:
    client, srv = tcp_pair
    await client.write(HEADER + encode_message("/p/1") + b"x" * 3000)
    assert await negotiate_inbound(srv, {"/p/1"}, timeout=5) == "/p/1"
    assert await srv.readexactly(3000) == b"x" * 3000
