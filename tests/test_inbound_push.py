"""Inbound streams served without a task (host/inbound.py, kad/inbound.py, identify's push
paths) and the deadline queue they share: the happy path, malformed input, deadlines, and the
fallback to a task when a write must wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest

from p2pnet.crypto.keys import KeyPair
from p2pnet.deadlines import DeadlineQueue
from p2pnet.errors import MessageTooLargeError, P2PError, ProtocolNotSupported, StreamReset
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.host.reply import ReplyReader
from p2pnet.kad import messages as m
from p2pnet.kad.config import KadConfig, Mode
from p2pnet.kad.dht import KadDHT
from p2pnet.kad.inbound import REQUESTS_PER_TURN
from p2pnet.multistream import (
    HEADER_MESSAGE,
    NA,
    MultistreamDialer,
    encode_message,
    list_protocols,
    negotiate_outbound,
)
from p2pnet.mux.yamux_connection import YamuxStream
from p2pnet.protocols.identify import PROTOCOL_ID as IDENTIFY
from p2pnet.protocols.identify import IdentifyService
from p2pnet.security.plaintext import PlaintextSecurity
from p2pnet.stream import Direction, Stream
from p2pnet.transport.memory import MemoryNetwork
from p2pnet.wire.framing import encode_length_prefixed, read_length_prefixed

T = 5.0
ECHO = "/test/echo/1.0.0"
KAD = "/ipfs/kad/1.0.0"


async def echo(stream: Stream) -> None:
    while data := await stream.read():
        await stream.write(data)


@asynccontextmanager
async def two_hosts(**config: Any) -> AsyncIterator[tuple[Host, Host]]:
    network = MemoryNetwork()

    def host() -> Host:
        return Host(
            KeyPair.generate(),
            HostConfig(listen_addrs=["/memory/0"], **config),
            transports=[network.transport()],
            security=[PlaintextSecurity()],
        )

    async with host() as a, host() as b:
        yield a, b


async def raw_stream(a: Host, b: Host) -> Stream:
    """A stream from ``a`` to ``b`` on which nothing was negotiated yet."""
    conn = await a.connect(b.p2p_addrs()[0])
    return await conn.muxed.open_stream()


async def wait_reset(stream: Stream) -> None:
    async with asyncio.timeout(T):
        with pytest.raises(StreamReset):
            while await stream.read():
                pass


def handler_tasks(host: Host) -> int:
    return sum(len(c.muxed._handler_tasks) for c in host.connections())  # type: ignore[attr-defined]


@contextmanager
def inbound_writes_wait() -> Iterator[None]:
    """Every write on an inbound stream must wait (as behind a remote that does not read):
    what was answered from ``data_received`` must then go through a task."""
    original = YamuxStream.write_nowait

    def write_nowait(self: YamuxStream, data: Any) -> bool:
        if self.direction is Direction.INBOUND:
            return False
        return original(self, data)

    YamuxStream.write_nowait = write_nowait  # type: ignore[method-assign]
    try:
        yield
    finally:
        YamuxStream.write_nowait = original  # type: ignore[method-assign]


# -- the deadline queue ----------------------------------------------------------------------


async def test_deadline_queue_fires_in_order_and_skips_cancelled() -> None:
    queue = DeadlineQueue(0.05)
    fired: list[int] = []
    first = queue.add(lambda: fired.append(1))
    queue.add(lambda: fired.append(2))
    first.cancel()
    queue.add(lambda: fired.append(3))
    assert not first.active
    await asyncio.sleep(0.2)
    assert fired == [2, 3]
    assert len(queue) == 0
    later = queue.add(lambda: fired.append(4))  # the queue re-arms after going empty
    await asyncio.sleep(0.2)
    assert fired == [2, 3, 4] and not later.active
    queue.add(lambda: fired.append(5))
    queue.clear()
    await asyncio.sleep(0.1)
    assert fired == [2, 3, 4]


async def test_deadline_queue_survives_a_failing_callback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = DeadlineQueue(0.01)
    fired: list[int] = []

    def boom() -> None:
        raise RuntimeError("boom")

    queue.add(boom)
    queue.add(lambda: fired.append(1))
    await asyncio.sleep(0.1)
    assert fired == [1]
    assert "deadline callback failed" in caplog.text


async def test_queued_timeout_is_asyncio_timeout_on_the_queues_timer() -> None:
    queue = DeadlineQueue(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with queue.timeout() as cm:
            await asyncio.sleep(10)
    assert cm.expired() and 0.04 <= loop.time() - started < 1.0
    async with queue.timeout() as cm:  # ends in time: no error, its deadline dropped
        await asyncio.sleep(0)
    assert not cm.expired()
    await asyncio.sleep(0.1)
    assert len(queue) == 0
    # a cancellation from elsewhere stays a cancellation, and the task can go on afterwards
    entered = asyncio.Event()

    async def body() -> str:
        try:
            async with queue.timeout():
                entered.set()
                await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "cancelled"
        return "not cancelled"

    task = asyncio.ensure_future(body())
    await entered.wait()
    task.cancel()
    assert await task == "cancelled"
    # nested in a shorter asyncio.timeout: the outer one's expiry is its own
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01) as outer:
            async with queue.timeout() as inner:
                await asyncio.sleep(10)
    assert outer.expired() and not inner.expired()
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0


def test_reply_reader_takes_the_negotiation_then_one_frame_in_any_slices() -> None:
    class FakeStream:
        protocol: str | None = None

    stream = FakeStream()
    reader = ReplyReader(stream, 16, MultistreamDialer([KAD]))  # type: ignore[arg-type]
    wire = HEADER_MESSAGE + encode_message(KAD) + encode_length_prefixed(b"answer")
    got = [reader.feed(wire[i : i + 1]) for i in range(len(wire))]
    assert got[-1] == b"answer" and got[:-1] == [None] * (len(wire) - 1)
    assert stream.protocol == KAD
    at_once = ReplyReader(stream, 16, MultistreamDialer([KAD]))  # type: ignore[arg-type]
    assert at_once.feed(wire + b"more") == b"answer"
    assert at_once.decoder.take_buffered() == b"more"  # bytes past the reply stay
    refused = ReplyReader(stream, 16, MultistreamDialer([KAD]))  # type: ignore[arg-type]
    with pytest.raises(ProtocolNotSupported):
        refused.feed(HEADER_MESSAGE + encode_message(NA))
    too_large = ReplyReader(stream, 4)  # type: ignore[arg-type]
    with pytest.raises(MessageTooLargeError):
        too_large.feed(encode_length_prefixed(b"answer"))


# -- the listener's negotiation ----------------------------------------------------------------


async def test_negotiation_refusal_ls_and_agreement_without_a_task_until_needed() -> None:
    async with two_hosts() as (a, b):
        b.set_stream_handler(ECHO, echo)
        stream = await raw_stream(a, b)
        assert sorted(await list_protocols(stream, timeout=T)) == b.protocols
        agreed = await negotiate_outbound(
            stream, ["/nope/1.0.0", ECHO], timeout=T, header_exchanged=True
        )
        assert agreed == ECHO
        await stream.write(b"ping")
        assert await stream.readexactly(4) == b"ping"
        assert handler_tasks(b) == 1  # the echo handler: a task only once agreed


async def test_data_sent_with_the_proposal_reaches_the_handler() -> None:
    async with two_hosts() as (a, b):
        b.set_stream_handler(ECHO, echo)
        stream = await raw_stream(a, b)
        await stream.write(HEADER_MESSAGE + encode_message(ECHO) + b"early bytes")
        await stream.readexactly(len(HEADER_MESSAGE) + len(encode_message(ECHO)))
        assert await stream.readexactly(11) == b"early bytes"


@pytest.mark.parametrize(
    "garbage",
    [b"\x05hello", b"\xff\xff\xff\xff\xff\xff", HEADER_MESSAGE + b"\x03abc"],
    ids=["wrong header", "bad varint", "no newline"],
)
async def test_malformed_negotiation_resets_the_stream(garbage: bytes) -> None:
    async with two_hosts() as (a, b):
        b.set_stream_handler(ECHO, echo)
        stream = await raw_stream(a, b)
        await stream.write(garbage)
        await wait_reset(stream)
        assert handler_tasks(b) == 0


async def test_a_dialer_that_closes_midway_gets_reset() -> None:
    async with two_hosts() as (a, b):
        stream = await raw_stream(a, b)
        await stream.write(HEADER_MESSAGE)
        await stream.close()
        await wait_reset(stream)


async def test_a_silent_dialer_is_reset_after_the_negotiate_timeout() -> None:
    async with two_hosts(negotiate_timeout=0.2) as (a, b):
        b.set_stream_handler(ECHO, echo)
        loop = asyncio.get_running_loop()
        started = loop.time()
        stream = await raw_stream(a, b)
        # (the listener's header goes out with its first answer, as go-multistream's does:
        # a dialer that sends nothing gets nothing before the reset)
        with pytest.raises(StreamReset):
            await stream.read()
        assert 0.15 <= loop.time() - started < 2.0
        assert handler_tasks(b) == 0


async def test_the_listeners_header_goes_out_with_its_first_answer() -> None:
    async with two_hosts() as (a, b):
        b.set_stream_handler(ECHO, echo)
        stream = await raw_stream(a, b)
        await stream.write(HEADER_MESSAGE + encode_message("/nope/1.0.0"))
        # header and ``na`` in one frame, hence one chunk
        assert await stream.read() == HEADER_MESSAGE + encode_message(NA)
        await stream.write(encode_message(ECHO) + b"hi")
        assert await stream.readexactly(len(encode_message(ECHO)) + 2) == (
            encode_message(ECHO) + b"hi"
        )


async def test_negotiation_goes_on_in_a_task_when_writes_must_wait() -> None:
    async with two_hosts() as (a, b):
        b.set_stream_handler(ECHO, echo)
        conn = await a.connect(b.p2p_addrs()[0])
        with inbound_writes_wait():
            stream = await conn.new_stream([ECHO])
            await stream.write(b"hello")
            assert await stream.readexactly(5) == b"hello"


# -- the drain after a handler -------------------------------------------------------------


async def test_a_stream_not_closed_after_its_handler_is_reset() -> None:
    async def quick(stream: Stream) -> None:
        await stream.write(b"bye")

    async with two_hosts(drain_timeout=0.2) as (a, b):
        b.set_stream_handler(ECHO, quick)
        conn = await a.connect(b.p2p_addrs()[0])
        stream = await conn.new_stream([ECHO])
        assert await stream.readexactly(3) == b"bye"
        assert await stream.read() == b""  # the handler closed its side
        await asyncio.sleep(0.5)  # we never close ours
        assert stream.is_reset  # type: ignore[attr-defined]


async def test_a_remote_that_floods_after_the_handler_is_reset() -> None:
    async def quick(stream: Stream) -> None:
        await stream.write(b"bye")

    async with two_hosts(drain_limit=1000) as (a, b):
        b.set_stream_handler(ECHO, quick)
        conn = await a.connect(b.p2p_addrs()[0])
        stream = await conn.new_stream([ECHO])
        assert await stream.readexactly(3) == b"bye"
        with pytest.raises(P2PError):
            async with asyncio.timeout(T):
                while True:
                    await stream.write(b"x" * 500)
                    await asyncio.sleep(0.01)


# -- identify ---------------------------------------------------------------------------------


async def test_identify_answers_when_the_reply_must_wait() -> None:
    async with two_hosts() as (a, b):
        ida = IdentifyService(a)
        IdentifyService(b)
        with inbound_writes_wait():
            conn = await a.connect(b.p2p_addrs()[0])
            await asyncio.wait_for(ida.identify_finished(conn), T)
        assert IDENTIFY in a.peerstore.get_protocols(b.peer_id)


@pytest.mark.parametrize(
    "answer",
    [b"\x80\x80\x80\x80\x80\x80", encode_length_prefixed(b"\xff\xfe not protobuf"), b"\x05ab"],
    ids=["bad prefix", "garbage message", "cut short"],
)
async def test_identify_of_a_lying_peer_fails_and_releases_waiters(answer: bytes) -> None:
    async def liar(stream: Stream) -> None:
        await stream.write(answer)
        await stream.close()

    async with two_hosts() as (a, b):
        ida = IdentifyService(a)
        b.set_stream_handler(IDENTIFY, liar)
        conn = await a.connect(b.p2p_addrs()[0])
        await asyncio.wait_for(ida.identify_finished(conn), T)
        assert a.peerstore.get_protocols(b.peer_id) == []


async def test_identify_of_a_silent_peer_times_out_and_releases_waiters() -> None:
    async def silent(stream: Stream) -> None:
        await asyncio.Event().wait()

    async with two_hosts() as (a, b):
        ida = IdentifyService(a, timeout=0.2)
        b.set_stream_handler(IDENTIFY, silent)
        conn = await a.connect(b.p2p_addrs()[0])
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(ida.identify_finished(conn), T)
        assert 0.15 <= loop.time() - started < 2.0
        assert a.peerstore.get_protocols(b.peer_id) == []


# -- the kad server ---------------------------------------------------------------------------


@asynccontextmanager
async def kad_server(**kad: Any) -> AsyncIterator[tuple[Host, Host, KadDHT]]:
    async with two_hosts() as (a, b):
        IdentifyService(b)
        dht = KadDHT(b, None, KadConfig(mode=Mode.SERVER, **kad))
        await dht.start()
        try:
            yield a, b, dht
        finally:
            await dht.close()


async def test_kad_answers_many_requests_sent_at_once_in_order() -> None:
    async with kad_server() as (a, b, _dht):
        conn = await a.connect(b.p2p_addrs()[0])
        stream = await conn.new_stream([KAD])
        count = 3 * REQUESTS_PER_TURN + 5
        keys = [b"key %d" % i for i in range(count)]
        await stream.write(b"".join(encode_length_prefixed(m.encode(m.find_node(k))) for k in keys))
        for key in keys:
            resp = m.decode(await asyncio.wait_for(read_length_prefixed(stream), T))
            assert resp.type == m.FIND_NODE and bytes(resp.key) == key
        await stream.close()
        assert await asyncio.wait_for(stream.read(), T) == b""  # the server closed its side


async def test_kad_answers_when_writes_must_wait() -> None:
    async with kad_server() as (a, b, _dht):
        conn = await a.connect(b.p2p_addrs()[0])
        with inbound_writes_wait():
            stream = await conn.new_stream([KAD])
            for i in range(3):
                await stream.write(encode_length_prefixed(m.encode(m.find_node(b"k%d" % i))))
            for i in range(3):
                resp = m.decode(await asyncio.wait_for(read_length_prefixed(stream), T))
                assert bytes(resp.key) == b"k%d" % i


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xff\xff\x7f",  # announces 256 MiB
        b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # an over-long varint
        encode_length_prefixed(b"\xff\xfe not protobuf"),
    ],
    ids=["oversized", "bad varint", "garbage"],
)
async def test_kad_resets_a_stream_with_a_bad_request(garbage: bytes) -> None:
    async with kad_server() as (a, b, dht):
        conn = await a.connect(b.p2p_addrs()[0])
        stream = await conn.new_stream([KAD])
        await stream.write(garbage)
        await wait_reset(stream)
        assert dht.counters.get("bad requests", 0) == 1
        assert handler_tasks(b) == 0


async def test_kad_resets_a_stream_that_ends_inside_a_request() -> None:
    async with kad_server() as (a, b, _dht):
        conn = await a.connect(b.p2p_addrs()[0])
        stream = await conn.new_stream([KAD])
        await stream.write(b"\x20only part of it")
        await stream.close()
        await wait_reset(stream)


async def test_kad_resets_a_stream_idle_inside_a_request() -> None:
    async with kad_server(inbound_idle_timeout=0.2) as (a, b, dht):
        conn = await a.connect(b.p2p_addrs()[0])
        stream = await conn.new_stream([KAD])
        await stream.write(b"\x20only part of it")
        await wait_reset(stream)
        assert dht.counters.get("idle inbound streams reset", 0) == 1


async def test_kad_stream_of_a_server_turned_client_is_reset() -> None:
    async with kad_server() as (a, b, dht):
        conn = await a.connect(b.p2p_addrs()[0])
        stream = await conn.new_stream([KAD])
        dht.behaviour.mode = Mode.CLIENT  # (as set_mode does, without unregistering)
        await stream.write(encode_length_prefixed(m.encode(m.find_node(b"x"))))
        await wait_reset(stream)


async def test_a_consumer_that_resets_its_stream_when_the_connection_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Told of the connection's loss, a consumer resets its stream (which makes the muxer forget
    it) while the muxer walks its streams: the connection still ends cleanly and gives back what
    it held."""

    class Resetter:
        lost = 0

        def __init__(self, stream: Stream) -> None:
            self.stream = stream

        def data_received(self, data: bytes) -> None:
            pass

        def eof_received(self) -> None:
            pass

        def stream_lost(self, exc: P2PError) -> None:
            Resetter.lost += 1
            self.stream.reset_nowait()

    async with two_hosts() as (a, b):
        b.set_stream_handler(ECHO, echo)
        conn = await a.connect(b.p2p_addrs()[0])
        for _ in range(3):
            stream = await conn.new_stream([ECHO])
            stream.set_consumer(Resetter(stream))
        await conn.close()
        assert Resetter.lost == 3
        assert conn.muxed.is_closed and conn.muxed.num_streams == 0
        assert a.resources.stat()["system"].get("memory", 0) == 0
    assert "Traceback" not in caplog.text and "ERROR" not in caplog.text


async def test_identify_of_a_peer_that_leaves_before_answering() -> None:
    async def silent(stream: Stream) -> None:
        await asyncio.Event().wait()

    async with two_hosts() as (a, b):
        ida = IdentifyService(a)
        b.set_stream_handler(IDENTIFY, silent)
        conn = await a.connect(b.p2p_addrs()[0])
        waiting = asyncio.ensure_future(ida.identify_finished(conn))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await conn.close()
        await asyncio.wait_for(waiting, T)  # released by the stream's loss, no reset re-entry
        assert a.resources.stat()["system"].get("memory", 0) == 0
