"""yamux: the asyncio adapter against itself (TCP and in-memory) and against hand-made frames."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from memory_pipe import memory_pipe

from p2pnet.errors import (
    ConnectionClosed,
    IncompleteRead,
    StreamClosed,
    StreamLimitExceeded,
    StreamReset,
)
from p2pnet.io import Bytes, ChunkReader
from p2pnet.mux import yamux
from p2pnet.mux.yamux import (
    DEFAULT_WINDOW,
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    HEADER,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    YamuxConfig,
)
from p2pnet.mux.yamux_connection import YamuxConnection, YamuxStream

T = 5.0  # generous timeout of every wait in these tests


# ------------------------------------------------------------------------------------------------
# plumbing: a TCP socket pair on 127.0.0.1 as two ReadWriters
# ------------------------------------------------------------------------------------------------


class TcpEnd(ChunkReader):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.reader = reader
        self.writer = writer
        self.closed = False

    async def _read_chunk(self) -> bytes:
        try:
            return await self.reader.read(1 << 20)
        except OSError as exc:
            raise ConnectionClosed(str(exc)) from exc

    async def write(self, data: Bytes) -> None:
        if self.closed:
            raise ConnectionClosed("closed")
        try:
            self.writer.write(data)
            await self.writer.drain()
        except OSError as exc:
            raise ConnectionClosed(str(exc)) from exc

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def tcp_pair() -> tuple[TcpEnd, TcpEnd]:
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    accepted = asyncio.get_running_loop().create_future()

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.set_result((r, w))

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    r1, w1 = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    r2, w2 = await asyncio.wait_for(accepted, T)
    server.close()
    await server.wait_closed()
    return TcpEnd(r1, w1), TcpEnd(r2, w2)


async def settle_tasks() -> set[asyncio.Task[Any]]:
    """Tasks other than the current one, after letting finished ones leave the loop."""
    current = asyncio.current_task()
    for _ in range(20):
        others = {t for t in asyncio.all_tasks() if t is not current and not t.done()}
        if not others:
            break
        await asyncio.sleep(0.01)
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


@contextlib.asynccontextmanager
async def yamux_pair(
    kind: str = "tcp",
    client_config: YamuxConfig | None = None,
    server_config: YamuxConfig | None = None,
    on_stream: Callable[[YamuxStream], Awaitable[None]] | None = None,
) -> AsyncIterator[tuple[YamuxConnection, YamuxConnection]]:
    a: Any
    b: Any
    if kind == "tcp":
        a, b = await tcp_pair()
    else:
        a, b = memory_pipe()
    client = YamuxConnection(a, initiator=True, config=client_config)
    server = YamuxConnection(b, initiator=False, config=server_config, on_stream=on_stream)
    await client.start()
    await server.start()
    try:
        yield client, server
    finally:
        await client.close()
        await server.close()
    assert client.closed.is_set() and server.closed.is_set()
    assert await settle_tasks() == set()


async def echo_handler(stream: YamuxStream) -> None:
    while True:
        data = await stream.read()
        if not data:
            break
        await stream.write(data)
    await stream.close()


async def read_all(stream: YamuxStream) -> bytes:
    parts: list[bytes] = []
    while True:
        data = await stream.read()
        if not data:
            return b"".join(parts)
        parts.append(data)


async def wait_until(pred: Callable[[], bool], timeout: float = T) -> None:
    """Wait for a condition the code under test reaches asynchronously (polled, bounded)."""
    async with asyncio.timeout(timeout):
        while not pred():  # polls internal state of the code under test, bounded by timeout
            await asyncio.sleep(0.002)


# ------------------------------------------------------------------------------------------------
# a raw peer: writes hand-made frames, reads what the connection under test sends
# ------------------------------------------------------------------------------------------------


class RawPeer:
    def __init__(self, end: TcpEnd) -> None:
        self.end = end

    async def send(
        self, ftype: int, flags: int, sid: int, length: int, payload: bytes = b""
    ) -> None:
        await self.end.write(HEADER.pack(0, ftype, flags, sid, length) + payload)

    async def send_raw(self, data: bytes) -> None:
        await self.end.write(data)

    async def frame(self) -> tuple[int, int, int, int, bytes]:
        async with asyncio.timeout(T):
            header = await self.end.readexactly(12)
            _, ftype, flags, sid, length = HEADER.unpack(header)
            payload = await self.end.readexactly(length) if ftype == TYPE_DATA else b""
        return ftype, flags, sid, length, payload

    async def expect(
        self, pred: Callable[[tuple[int, int, int, int, bytes]], object]
    ) -> tuple[int, int, int, int, bytes]:
        """Read frames (answering pings) until one matches ``pred``."""
        while True:
            f = await self.frame()
            if pred(f):
                return f
            if f[0] == TYPE_PING and f[1] & FLAG_SYN:
                await self.send(TYPE_PING, FLAG_ACK, 0, f[3])

    async def expect_go_away(self) -> int:
        f = await self.expect(lambda f: f[0] == TYPE_GO_AWAY)
        return f[3]

    async def expect_eof(self) -> None:
        async with asyncio.timeout(T):
            while True:
                try:
                    await self.frame()
                except IncompleteRead:
                    return


@contextlib.asynccontextmanager
async def raw_pair(
    *, initiator: bool = False, config: YamuxConfig | None = None, accept: bool = True
) -> AsyncIterator[tuple[YamuxConnection, RawPeer]]:
    """The connection under test (server by default) and a raw peer talking to it over TCP."""
    a, b = await tcp_pair()
    on_stream = echo_handler if accept else None
    conn = YamuxConnection(a, initiator=initiator, config=config, on_stream=on_stream)
    await conn.start()
    peer = RawPeer(b)
    try:
        yield conn, peer
    finally:
        await conn.close()
        await b.close()
    assert await settle_tasks() == set()


# ------------------------------------------------------------------------------------------------
# streams between two YamuxConnections
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "memory"])
async def test_echo(kind: str) -> None:
    async with yamux_pair(kind, on_stream=echo_handler) as (client, _server):
        stream = await client.open_stream()
        assert stream.stream_id % 2 == 1
        payload = bytes(range(256)) * 4096  # 1 MiB, more than the initial window
        writer = asyncio.create_task(stream.write(payload))
        got = await asyncio.wait_for(stream.readexactly(len(payload)), T)
        await writer
        assert got == payload
        await stream.close()
        assert await asyncio.wait_for(stream.read(), T) == b""


async def test_many_streams_both_directions() -> None:
    async with yamux_pair("tcp") as (client, server):
        n = 60

        async def serve(conn: YamuxConnection) -> None:
            async with asyncio.TaskGroup() as tg:
                for _ in range(n):
                    s = await conn.accept_stream()
                    tg.create_task(echo_handler(s))

        opened: dict[YamuxConnection, list[int]] = {client: [], server: []}

        async def use(conn: YamuxConnection, i: int) -> None:
            s = await conn.open_stream()
            opened[conn].append(s.stream_id)
            msg = f"hello {i} ".encode() * 100
            await s.write(msg)
            await s.close()
            assert await read_all(s) == msg

        async with asyncio.timeout(T):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(serve(server))
                tg.create_task(serve(client))
                for i in range(n):
                    tg.create_task(use(client, i))
                    tg.create_task(use(server, i))
        assert sorted(opened[client]) == list(range(1, 2 * n, 2))  # dialer: odd ids
        assert sorted(opened[server]) == list(range(2, 2 * n + 1, 2))  # listener: even ids
        # every stream finished on both sides: nothing left in the tables
        await wait_until(lambda: client.num_streams == 0 and server.num_streams == 0)
        assert client.session.num_streams == 0 and server.session.num_streams == 0


async def test_half_close() -> None:
    async with yamux_pair("tcp") as (client, server):
        cs = await client.open_stream()
        await cs.write(b"request")
        await cs.close()
        with pytest.raises(StreamClosed):
            await cs.write(b"more")
        ss = await asyncio.wait_for(server.accept_stream(), T)
        assert await asyncio.wait_for(read_all(ss), T) == b"request"
        assert await ss.read() == b""  # stays at EOF
        # the other direction still works after the client's FIN
        await ss.write(b"response")
        await ss.close()
        assert await asyncio.wait_for(read_all(cs), T) == b"response"
        await wait_until(lambda: client.num_streams == 0 and server.num_streams == 0)


async def test_reset_both_sides() -> None:
    async with yamux_pair("tcp") as (client, server):
        cs = await client.open_stream()
        await cs.write(b"x")
        ss = await asyncio.wait_for(server.accept_stream(), T)
        assert await asyncio.wait_for(ss.read(), T) == b"x"
        pending_read = asyncio.create_task(ss.read())
        await cs.reset()
        with pytest.raises(StreamReset):
            await cs.write(b"y")
        with pytest.raises(StreamReset):
            await cs.read()
        with pytest.raises(StreamReset):
            await asyncio.wait_for(pending_read, T)
        with pytest.raises(StreamReset):
            await ss.write(b"z")
        await cs.reset()  # idempotent
        await cs.close()  # no-op after reset
        await wait_until(lambda: client.num_streams == 0 and server.num_streams == 0)


async def test_reset_wakes_blocked_writer() -> None:
    async with yamux_pair("tcp") as (client, server):
        cs = await client.open_stream()
        writer = asyncio.create_task(cs.write(b"a" * (4 * DEFAULT_WINDOW)))
        ss = await asyncio.wait_for(server.accept_stream(), T)
        await wait_until(lambda: client.session.send_window(cs.stream_id) == 0)
        assert not writer.done()
        await ss.reset()
        with pytest.raises(StreamReset):
            await asyncio.wait_for(writer, T)


async def test_stream_context_manager() -> None:
    async with yamux_pair("tcp", on_stream=echo_handler) as (client, _server):
        async with await client.open_stream() as s:
            await s.write(b"ctx")
        assert s.local_closed
        assert await asyncio.wait_for(read_all(s), T) == b"ctx"
        s2 = await client.open_stream()
        with pytest.raises(RuntimeError):
            async with s2:
                raise RuntimeError("boom")
        assert s2.is_reset


async def test_backpressure_bounds_buffering() -> None:
    async with yamux_pair("tcp") as (client, server):
        cs = await client.open_stream()
        total = 8 * DEFAULT_WINDOW
        writer = asyncio.create_task(cs.write(b"b" * total))
        ss = await asyncio.wait_for(server.accept_stream(), T)
        # the reader does not read: the writer stops once the initial window is used up
        await wait_until(lambda: client.session.send_window(cs.stream_id) == 0)
        await wait_until(lambda: ss.buffered == DEFAULT_WINDOW)
        assert not writer.done()
        buffered = ss.buffered
        assert buffered == DEFAULT_WINDOW
        assert server.session.recv_window(ss.stream_id) == DEFAULT_WINDOW
        # reading releases the writer
        got = await asyncio.wait_for(ss.readexactly(total), T)
        await asyncio.wait_for(writer, T)
        assert got == b"b" * total


async def test_window_grows_for_fast_stream() -> None:
    async with yamux_pair("tcp") as (client, server):
        assert await client.ping() > 0
        await server.ping()
        cs = await client.open_stream()
        total = 64 * 1024 * 1024
        chunk = b"w" * (1 << 20)

        async def send() -> None:
            for _ in range(total // len(chunk)):
                await cs.write(chunk)
            await cs.close()

        writer = asyncio.create_task(send())
        ss = await asyncio.wait_for(server.accept_stream(), T)
        seen = 0
        max_window = DEFAULT_WINDOW
        async with asyncio.timeout(30):
            while True:
                data = await ss.read()
                if not data:
                    break
                seen += len(data)
                max_window = max(max_window, server.session.recv_window(ss.stream_id))
        await writer
        assert seen == total
        assert max_window > DEFAULT_WINDOW
        assert max_window <= YamuxConfig().max_window


async def test_window_growth_respects_max_window() -> None:
    cfg = YamuxConfig(max_window=2 * DEFAULT_WINDOW)
    async with yamux_pair("tcp", server_config=cfg) as (client, server):
        await client.ping()
        await server.ping()
        cs = await client.open_stream()
        total = 16 * 1024 * 1024
        writer = asyncio.create_task(cs.write(b"m" * total))
        ss = await asyncio.wait_for(server.accept_stream(), T)
        windows = set()
        got = 0
        async with asyncio.timeout(20):
            while got < total:
                got += len(await ss.read())
                windows.add(server.session.recv_window(ss.stream_id))
        await writer
        assert max(windows) <= 2 * DEFAULT_WINDOW


async def test_larger_initial_window() -> None:
    cfg = YamuxConfig(initial_window=4 * DEFAULT_WINDOW)
    async with yamux_pair("tcp", client_config=cfg, server_config=cfg) as (client, server):
        cs = await client.open_stream()
        ss_task = asyncio.create_task(server.accept_stream())
        writer = asyncio.create_task(cs.write(b"i" * (8 * DEFAULT_WINDOW)))
        ss = await asyncio.wait_for(ss_task, T)
        # after the ACK announced the bigger window, the writer may send 4 x 256 KiB unread
        await wait_until(lambda: ss.buffered == 4 * DEFAULT_WINDOW)
        assert not writer.done()
        await asyncio.wait_for(ss.readexactly(8 * DEFAULT_WINDOW), T)
        await writer


async def test_ping_rtt() -> None:
    async with yamux_pair("tcp") as (client, server):
        rtt = await client.ping()
        assert 0 < rtt < 1
        assert 0 < await server.ping() < 1
        assert client.rtt is not None


async def test_write_after_connection_close_and_go_away() -> None:
    async with yamux_pair("tcp") as (client, server):
        cs = await client.open_stream()
        await cs.write(b"hi")
        ss = await asyncio.wait_for(server.accept_stream(), T)
        blocked_read = asyncio.create_task(ss.read(100))
        assert await asyncio.wait_for(blocked_read, T) == b"hi"
        blocked_read = asyncio.create_task(ss.read())
        accepting = asyncio.create_task(server.accept_stream())
        await client.close()
        assert client.is_closed
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(blocked_read, T)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(accepting, T)
        await asyncio.wait_for(server.wait_closed(), T)
        with pytest.raises(ConnectionClosed):
            await ss.write(b"late")
        with pytest.raises(ConnectionClosed):
            await cs.write(b"late")
        with pytest.raises(ConnectionClosed):
            await server.open_stream()
        with pytest.raises(ConnectionClosed):
            await client.ping()


async def test_close_callbacks_run_once_after_the_close() -> None:
    async with yamux_pair("memory") as (client, server):
        calls: list[str] = []
        client.add_close_callback(lambda: calls.append("client"))
        server.add_close_callback(lambda: calls.append("server"))
        await client.close()
        assert client.closed.is_set()
        await asyncio.wait_for(server.wait_closed(), T)
        await wait_until(lambda: len(calls) == 2)
        # one added after the close still runs: from the loop, not inside the call
        client.add_close_callback(lambda: calls.append("late"))
        assert "late" not in calls
        await wait_until(lambda: "late" in calls)
        await asyncio.sleep(0.01)
        assert sorted(calls) == ["client", "late", "server"]


async def test_remote_go_away_normal_forbids_new_streams() -> None:
    async with raw_pair(initiator=True) as (conn, peer):
        s = await conn.open_stream()
        await peer.expect(lambda f: f[1] & FLAG_SYN and f[2] == s.stream_id)
        await peer.send(TYPE_GO_AWAY, 0, 0, yamux.GO_AWAY_NORMAL)
        await wait_until(lambda: conn.session.remote_go_away is not None)
        with pytest.raises(ConnectionClosed):
            await conn.open_stream()
        # existing streams keep working
        await s.write(b"still")
        f = await peer.expect(lambda f: f[0] == TYPE_DATA)
        assert f[4] == b"still"
        assert not conn.is_closed


async def test_remote_go_away_error_closes() -> None:
    async with raw_pair() as (conn, peer):
        await peer.send(TYPE_GO_AWAY, 0, 0, yamux.GO_AWAY_INTERNAL_ERROR)
        await asyncio.wait_for(conn.wait_closed(), T)
        assert isinstance(conn.error, ConnectionClosed)


async def test_keepalive_closes_silent_peer() -> None:
    cfg = YamuxConfig(keepalive_interval=0.05, ping_timeout=0.2, close_timeout=1.0)
    a, b = await tcp_pair()
    conn = YamuxConnection(a, initiator=True, config=cfg)
    await conn.start()
    peer = RawPeer(b)
    # the peer reads everything but never answers pings
    frames: list[tuple[int, int, int, int, bytes]] = []

    async def drain_peer() -> None:
        with contextlib.suppress(IncompleteRead):
            while True:
                frames.append(await peer.frame())

    drainer = asyncio.create_task(drain_peer())
    await asyncio.wait_for(conn.wait_closed(), T)
    await asyncio.wait_for(drainer, T)
    assert any(f[0] == TYPE_PING and f[1] & FLAG_SYN for f in frames)
    assert (TYPE_GO_AWAY, 0, 0, yamux.GO_AWAY_INTERNAL_ERROR, b"") in frames
    assert "keepalive" in str(conn.error)
    await b.close()
    assert await settle_tasks() == set()


async def test_keepalive_keeps_live_peer() -> None:
    cfg = YamuxConfig(keepalive_interval=0.02, ping_timeout=1.0)
    async with yamux_pair("tcp", client_config=cfg) as (client, _server):
        start = client.session._next_ping_id
        await wait_until(lambda: client.session._next_ping_id > start + 5)
        assert not client.is_closed


async def test_outbound_stream_limit() -> None:
    cfg = YamuxConfig(max_streams=3)
    async with yamux_pair("tcp", client_config=cfg, on_stream=echo_handler) as (client, _):
        streams = [await client.open_stream() for _ in range(3)]
        with pytest.raises(StreamLimitExceeded):
            await client.open_stream()
        await streams[0].reset()
        await client.open_stream()


async def test_inbound_stream_limit_resets_new_stream() -> None:
    cfg = YamuxConfig(max_streams=3)
    async with yamux_pair("tcp", server_config=cfg) as (client, server):
        streams = [await client.open_stream() for _ in range(4)]
        accepted = [await asyncio.wait_for(server.accept_stream(), T) for _ in range(3)]
        assert [s.stream_id for s in accepted] == [1, 3, 5]
        with pytest.raises(StreamReset):
            await asyncio.wait_for(streams[3].read(), T)
        # the connection lives on
        assert await client.ping() > 0
        await streams[0].write(b"ok")
        assert await asyncio.wait_for(accepted[0].read(), T) == b"ok"


async def test_ack_backlog_blocks_open() -> None:
    cfg = YamuxConfig(max_ack_backlog=2, open_timeout=0.2)
    async with raw_pair(initiator=True, config=cfg) as (conn, peer):
        s1 = await conn.open_stream()
        await conn.open_stream()
        with pytest.raises(StreamLimitExceeded):
            await conn.open_stream()
        await peer.expect(lambda f: f[2] == s1.stream_id and f[1] & FLAG_SYN)
        opener = asyncio.create_task(conn.open_stream())
        await peer.send(TYPE_WINDOW_UPDATE, FLAG_ACK, s1.stream_id, 0)
        s3 = await asyncio.wait_for(opener, T)
        assert s3.stream_id == 5


async def test_handler_exception_resets_stream() -> None:
    async def bad(stream: YamuxStream) -> None:
        raise ValueError("handler bug")

    async with yamux_pair("tcp", on_stream=bad) as (client, _server):
        s = await client.open_stream()
        with pytest.raises(StreamReset):
            await asyncio.wait_for(s.read(), T)
        assert await client.ping() > 0


async def test_close_cancels_handlers() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hang(stream: YamuxStream) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with yamux_pair("tcp", on_stream=hang) as (client, server):
        await client.open_stream()
        await asyncio.wait_for(started.wait(), T)
        await server.close()
        assert cancelled.is_set()


async def test_remote_eof_closes_connection() -> None:
    async with raw_pair() as (conn, peer):
        await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
        await peer.expect(lambda f: f[2] == 1 and f[1] & FLAG_ACK)
        await peer.end.close()
        await asyncio.wait_for(conn.wait_closed(), T)
        assert "closed by the remote" in str(conn.error)


# ------------------------------------------------------------------------------------------------
# hand-made frames
# ------------------------------------------------------------------------------------------------


async def test_open_uses_window_update_syn_with_extra_window() -> None:
    cfg = YamuxConfig(initial_window=1024 * 1024)
    async with raw_pair(initiator=True, config=cfg) as (conn, peer):
        s = await conn.open_stream()
        f = await peer.expect(lambda f: f[2] != 0)
        assert f[:4] == (TYPE_WINDOW_UPDATE, FLAG_SYN, s.stream_id, 1024 * 1024 - DEFAULT_WINDOW)
        # data before the ACK is allowed
        await s.write(b"early")
        f = await peer.expect(lambda f: f[2] != 0)
        assert f == (TYPE_DATA, 0, s.stream_id, 5, b"early")
        await s.close()
        f = await peer.expect(lambda f: f[2] != 0)
        assert f[:3] == (TYPE_WINDOW_UPDATE, FLAG_FIN, s.stream_id)


async def test_accept_acks_with_window_update_and_echoes() -> None:
    async with raw_pair() as (_conn, peer):
        await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
        await peer.send(TYPE_DATA, 0, 1, 3, b"abc")
        f = await peer.expect(lambda f: f[2] == 1)
        assert f[:3] == (TYPE_WINDOW_UPDATE, FLAG_ACK, 1)
        f = await peer.expect(lambda f: f[2] == 1)
        assert f == (TYPE_DATA, 0, 1, 3, b"abc")
        # SYN riding on a data frame together with FIN
        await peer.send(TYPE_DATA, FLAG_SYN | FLAG_FIN, 3, 2, b"xy")
        got = []
        while True:
            f = await peer.expect(lambda f: f[2] == 3)
            got.append(f)
            if f[1] & FLAG_FIN:
                break
        assert got[0][:3] == (TYPE_WINDOW_UPDATE, FLAG_ACK, 3)
        assert b"".join(f[4] for f in got) == b"xy"


async def test_ping_is_echoed() -> None:
    async with raw_pair() as (_conn, peer):
        await peer.send(TYPE_PING, FLAG_SYN, 0, 0xDEADBEEF)
        f = await peer.expect(lambda f: f[0] == TYPE_PING and f[1] & FLAG_ACK)
        assert f[:4] == (TYPE_PING, FLAG_ACK, 0, 0xDEADBEEF)


async def test_writer_respects_remote_window_and_frame_cap() -> None:
    cfg = YamuxConfig(max_frame_payload=100 * 1024)
    async with raw_pair(initiator=True, config=cfg) as (conn, peer):
        s = await conn.open_stream()
        writer = asyncio.create_task(s.write(b"d" * (DEFAULT_WINDOW + 1000)))
        sizes: list[int] = []
        while sum(sizes) < DEFAULT_WINDOW:
            f = await peer.expect(lambda f: f[0] == TYPE_DATA)
            sizes.append(f[3])
        assert sum(sizes) == DEFAULT_WINDOW and max(sizes) <= 100 * 1024
        assert not writer.done()
        await peer.send(TYPE_WINDOW_UPDATE, FLAG_ACK, s.stream_id, 1000)
        f = await peer.expect(lambda f: f[0] == TYPE_DATA)
        assert f[3] == 1000
        await asyncio.wait_for(writer, T)


async def test_frames_for_closed_stream_are_ignored() -> None:
    async with raw_pair() as (conn, peer):
        await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
        await peer.expect(lambda f: f[2] == 1 and f[1] & FLAG_ACK)
        await peer.send(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0)
        await wait_until(lambda: conn.num_streams == 0)
        # late data and window updates for stream 1 are normal after a reset
        await peer.send(TYPE_DATA, 0, 1, 4, b"late")
        await peer.send(TYPE_WINDOW_UPDATE, 0, 1, 100)
        await peer.send(TYPE_PING, FLAG_SYN, 0, 7)
        await peer.expect(lambda f: f[0] == TYPE_PING and f[3] == 7)
        assert not conn.is_closed


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(bytes([1, TYPE_PING, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]), id="bad-version"),
        pytest.param(HEADER.pack(0, 7, 0, 0, 0), id="unknown-type"),
        pytest.param(HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0), id="wrong-parity-syn"),
        pytest.param(HEADER.pack(0, TYPE_DATA, 0, 9, 1) + b"x", id="never-opened-stream"),
        pytest.param(HEADER.pack(0, TYPE_DATA, 0, 0, 1) + b"x", id="data-on-stream-0"),
        pytest.param(
            HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
            + HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0),
            id="reused-id",
        ),
        pytest.param(
            HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
            + HEADER.pack(0, TYPE_DATA, 0, 1, DEFAULT_WINDOW + 1),
            id="window-violation",
        ),
        pytest.param(
            HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0xFFFFFFF0)
            + HEADER.pack(0, TYPE_WINDOW_UPDATE, 0, 1, 0xFFFFFFF0),
            id="window-overflow",
        ),
    ],
)
async def test_protocol_error_goes_away_and_closes(frame: bytes) -> None:
    async with raw_pair(accept=False) as (conn, peer):
        pending = asyncio.create_task(conn.accept_stream())
        await peer.send_raw(frame)
        assert await peer.expect_go_away() == yamux.GO_AWAY_PROTOCOL_ERROR
        await peer.expect_eof()
        await asyncio.wait_for(conn.wait_closed(), T)
        assert "protocol error" in str(conn.error)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(pending, T)


async def test_protocol_error_wakes_streams() -> None:
    async with raw_pair(initiator=True) as (conn, peer):
        s = await conn.open_stream()
        reading = asyncio.create_task(s.read())
        writing = asyncio.create_task(s.write(b"w" * (2 * DEFAULT_WINDOW)))
        await peer.expect(lambda f: f[0] == TYPE_DATA)
        await peer.send_raw(bytes([9]) + bytes(11))
        for task in (reading, writing):
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(task, T)


async def test_too_many_unacked_streams_are_reset() -> None:
    cfg = YamuxConfig(max_unacked_inbound=2)
    async with raw_pair(config=cfg, accept=False) as (conn, peer):
        for sid in (1, 3, 5):
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0)
        f = await peer.expect(lambda f: f[2] != 0)
        assert f[:3] == (TYPE_WINDOW_UPDATE, FLAG_RST, 5)
        # not a connection error: accepting frees a slot
        s = await asyncio.wait_for(conn.accept_stream(), T)
        assert s.stream_id == 1
        f = await peer.expect(lambda f: f[2] != 0)
        assert f[:3] == (TYPE_WINDOW_UPDATE, FLAG_ACK, 1)
        await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 7, 0)
        s = await asyncio.wait_for(conn.accept_stream(), T)
        assert s.stream_id == 3
        s = await asyncio.wait_for(conn.accept_stream(), T)
        assert s.stream_id == 7
        assert not conn.is_closed


async def test_push_accepted_streams_are_acked_by_their_first_answer_and_bounded() -> None:
    """An acceptor (the host's multistream listener) acknowledges lazily: the ACK rides on its
    first answer; streams it never answers (their opener sends nothing) stay unacked, and a
    SYN beyond ``max_unacked_inbound`` of them is refused with RST, the connection lives on."""
    cfg = YamuxConfig(max_unacked_inbound=2)
    a, b = await tcp_pair()
    accepted: list[YamuxStream] = []
    third = asyncio.Event()

    def accept(stream: YamuxStream) -> None:
        accepted.append(stream)
        if len(accepted) == 3:
            third.set()

    conn = YamuxConnection(a, initiator=False, config=cfg, accept=accept)
    await conn.start()
    peer = RawPeer(b)
    try:
        for sid in (1, 3, 5):
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0)
        f = await peer.expect(lambda f: f[2] != 0)
        assert f[:3] == (TYPE_WINDOW_UPDATE, FLAG_RST, 5)  # no frame for 1 and 3 before it
        assert [s.stream_id for s in accepted] == [1, 3]
        assert accepted[0].write_nowait(b"answer")
        f = await peer.expect(lambda f: f[2] != 0)
        assert f == (TYPE_DATA, FLAG_ACK, 1, 6, b"answer")
        await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 7, 0)  # a slot is free again
        await asyncio.wait_for(third.wait(), T)
        assert accepted[2].stream_id == 7
        assert not conn.is_closed
    finally:
        await conn.close()
        await b.close()
    assert await settle_tasks() == set()


async def test_too_many_streams_are_reset() -> None:
    cfg = YamuxConfig(max_streams=2)
    async with raw_pair(config=cfg) as (conn, peer):
        for sid in (1, 3, 5):
            await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0)
        f = await peer.expect(lambda f: f[2] == 5)
        assert f[1] == FLAG_RST
        assert conn.session.inbound_streams == 2
        # data for the refused stream is ignored, the connection lives on
        await peer.send(TYPE_DATA, 0, 5, 1, b"x")
        await peer.send(TYPE_PING, FLAG_SYN, 0, 1)
        await peer.expect(lambda f: f[0] == TYPE_PING and f[1] & FLAG_ACK)
        assert not conn.is_closed


async def test_data_after_fin_resets_stream_only() -> None:
    async with raw_pair(accept=False) as (conn, peer):
        await peer.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
        await peer.send(TYPE_DATA, FLAG_FIN, 1, 1, b"a")
        s = await asyncio.wait_for(conn.accept_stream(), T)
        assert await asyncio.wait_for(read_all(s), T) == b"a"
        await peer.send(TYPE_DATA, 0, 1, 1, b"b")
        f = await peer.expect(lambda f: f[2] == 1 and f[1] & FLAG_RST)
        assert f[0] == TYPE_WINDOW_UPDATE
        assert not conn.is_closed


async def test_close_sends_go_away_normal() -> None:
    a, b = await tcp_pair()
    conn = YamuxConnection(a, initiator=True, config=YamuxConfig(keepalive_interval=None))
    await conn.start()
    peer = RawPeer(b)
    await conn.close()
    assert await peer.expect_go_away() == yamux.GO_AWAY_NORMAL
    await peer.expect_eof()
    await b.close()
    assert await settle_tasks() == set()


async def test_split_frames_byte_by_byte() -> None:
    async with raw_pair() as (_conn, peer):
        raw = (
            HEADER.pack(0, TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
            + HEADER.pack(0, TYPE_DATA, 0, 1, 10)
            + b"0123456789"
        )
        for i in range(len(raw)):
            await peer.send_raw(raw[i : i + 1])
        got = b""
        while len(got) < 10:
            f = await peer.expect(lambda f: f[0] == TYPE_DATA)
            got += f[4]
        assert got == b"0123456789"


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        YamuxConfig(initial_window=1000)
    with pytest.raises(ValueError):
        YamuxConfig(max_window=DEFAULT_WINDOW - 1)
    with pytest.raises(ValueError):
        YamuxConfig(max_streams=0)
    assert yamux.PROTOCOL_ID == "/yamux/1.0.0"


async def test_a_flood_of_small_frames_is_parsed_a_budget_per_loop_turn() -> None:
    """5000 pings and a stream in one chunk, 100 frames per turn of the loop: other tasks run
    between the turns (reading is paused meanwhile), and every pong and byte comes out in
    order."""
    cfg = YamuxConfig(max_frames_per_turn=100)
    async with raw_pair(config=cfg) as (conn, peer):
        turns_seen_unparsed = 0

        async def watch() -> None:
            nonlocal turns_seen_unparsed
            while True:
                if conn.session.unparsed:
                    turns_seen_unparsed += 1
                    assert conn.reading_paused
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        pings = b"".join(HEADER.pack(0, TYPE_PING, FLAG_SYN, 0, i) for i in range(5000))
        await peer.send_raw(pings + HEADER.pack(0, TYPE_DATA, FLAG_SYN | FLAG_FIN, 1, 3) + b"abc")
        pongs: list[int] = []
        echoed = b""
        fin = False
        while len(pongs) < 5000 or not fin:
            ftype, flags, sid, length, payload = await peer.frame()
            if ftype == TYPE_PING and flags & FLAG_ACK:
                pongs.append(length)
            elif sid == 1:
                echoed += payload
                fin = fin or bool(flags & FLAG_FIN)
        watcher.cancel()
        assert pongs == list(range(5000))
        assert echoed == b"abc"
        assert turns_seen_unparsed >= 10  # ~50 turns; the watcher ran between them
        assert not conn.reading_paused and conn.session.unparsed == 0


async def test_what_was_received_before_eof_is_parsed_whatever_the_budget() -> None:
    """A reply behind a flood of frames, and the remote closes right after it: the reply is
    parsed (into the stream we opened) before the connection ends."""
    a, b = await tcp_pair()
    conn = YamuxConnection(a, initiator=True, config=YamuxConfig(max_frames_per_turn=10))
    await conn.start()
    peer = RawPeer(b)
    stream = await conn.open_stream()
    await peer.expect(lambda f: f[2] == stream.stream_id)
    pings = b"".join(HEADER.pack(0, TYPE_PING, FLAG_SYN, 0, i) for i in range(1000))
    reply = HEADER.pack(0, TYPE_DATA, FLAG_ACK | FLAG_FIN, stream.stream_id, 5) + b"reply"
    await peer.send_raw(pings + reply)
    await b.close()  # EOF right behind the frames
    assert await asyncio.wait_for(read_all(stream), T) == b"reply"
    await asyncio.wait_for(conn.wait_closed(), T)
    await conn.close()
    assert await settle_tasks() == set()


# ------------------------------------------------------------------------------------------------
# push mode: a StreamConsumer takes the bytes from the connection's data_received
# ------------------------------------------------------------------------------------------------


class Recorder:
    """A StreamConsumer that records what it is told; may pause or raise on demand."""

    def __init__(self, stream: YamuxStream | None = None) -> None:
        self.stream = stream
        self.chunks: list[bytes] = []
        self.ends: list[str] = []
        self.lost: list[Exception] = []
        self.pause_after: int | None = None
        self.fail_on: bytes | None = None
        self.ended = asyncio.Event()

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def data_received(self, data: bytes) -> None:
        # never re-entered, and never after the end
        assert not self.ends
        if self.fail_on is not None and self.fail_on in data:
            raise ValueError("consumer refuses this")
        self.chunks.append(data)
        if self.pause_after is not None and len(self.data) >= self.pause_after:
            assert self.stream is not None
            self.stream.pause_reading()

    def eof_received(self) -> None:
        self.ends.append("eof")
        self.ended.set()

    def stream_lost(self, exc: Exception) -> None:
        self.ends.append("lost")
        self.lost.append(exc)
        self.ended.set()


async def test_push_mode_delivers_in_order_then_eof_without_tasks() -> None:
    async with yamux_pair("memory") as (client, server):
        cs = await client.open_stream()
        await cs.write(b"abcdef")
        ss = await asyncio.wait_for(server.accept_stream(), T)
        assert await ss.readexactly(2) == b"ab"  # a reader left bytes over: delivered first
        rec = Recorder(ss)
        tasks_before = len(asyncio.all_tasks())
        ss.set_consumer(rec)
        assert rec.data == b"cdef"
        with pytest.raises(RuntimeError, match="consumer"):
            await ss.read()
        with pytest.raises(RuntimeError, match="consumer already"):
            ss.set_consumer(Recorder())
        payload = bytes(range(256)) * 2000
        for i in range(0, len(payload), 7000):
            await cs.write(payload[i : i + 7000])
        await cs.close()
        await asyncio.wait_for(rec.ended.wait(), T)
        assert rec.data == b"cdef" + payload  # every byte, in order, across window updates
        assert rec.ends == ["eof"]
        assert len(asyncio.all_tasks()) == tasks_before  # no task per chunk or per stream
        assert ss.buffered == 0 and server.unread == 0
        await ss.close()


async def test_push_mode_pause_is_backpressure_through_the_window() -> None:
    async with yamux_pair("tcp") as (client, server):
        cs = await client.open_stream()
        await cs.write(b"x")
        ss = await asyncio.wait_for(server.accept_stream(), T)
        rec = Recorder(ss)
        rec.pause_after = 1
        ss.set_consumer(rec)
        assert rec.data == b"x"  # paused after this one
        total = 4 * DEFAULT_WINDOW
        writer = asyncio.create_task(cs.write(b"w" * total))
        # nothing is delivered while paused: the bytes wait in the stream, the window runs out
        await wait_until(lambda: client.session.send_window(cs.stream_id) == 0)
        assert not writer.done()
        assert rec.data == b"x"
        assert ss.buffered == DEFAULT_WINDOW - 1
        rec.pause_after = None
        ss.resume_reading()
        await asyncio.wait_for(writer, T)
        await cs.close()
        await asyncio.wait_for(rec.ended.wait(), T)
        assert rec.data == b"x" + b"w" * total and rec.ends == ["eof"]


async def test_push_mode_fin_while_paused_waits_for_resume() -> None:
    async with yamux_pair("memory") as (client, server):
        cs = await client.open_stream()
        await cs.write(b"first")
        ss = await asyncio.wait_for(server.accept_stream(), T)
        rec = Recorder(ss)
        ss.pause_reading()
        ss.set_consumer(rec)
        await cs.write(b"second")
        await cs.close()
        await wait_until(lambda: ss.remote_closed)
        await asyncio.sleep(0.01)
        assert rec.data == b"" and rec.ends == []  # no FIN before the bytes in front of it
        ss.resume_reading()
        await asyncio.wait_for(rec.ended.wait(), T)
        assert rec.data == b"firstsecond" and rec.ends == ["eof"]


async def test_push_mode_back_to_pull_mode() -> None:
    async with yamux_pair("memory") as (client, server):
        cs = await client.open_stream()
        await cs.write(b"one")
        ss = await asyncio.wait_for(server.accept_stream(), T)
        rec = Recorder(ss)
        ss.set_consumer(rec)
        ss.pause_reading()
        await cs.write(b"two")
        await wait_until(lambda: ss.buffered == 3)
        ss.set_consumer(None)
        await cs.close()
        assert await asyncio.wait_for(read_all(ss), T) == b"two"
        assert rec.data == b"one" and rec.ends == []


@pytest.mark.parametrize("who", ["remote", "local"])
async def test_push_mode_reset_is_reported_once(who: str) -> None:
    async with yamux_pair("memory") as (client, server):
        cs = await client.open_stream()
        await cs.write(b"hello")
        ss = await asyncio.wait_for(server.accept_stream(), T)
        rec = Recorder(ss)
        ss.set_consumer(rec)
        await (cs if who == "remote" else ss).reset()
        await asyncio.wait_for(rec.ended.wait(), T)
        await asyncio.sleep(0.01)
        assert rec.data == b"hello" and rec.ends == ["lost"]
        assert isinstance(rec.lost[0], StreamReset)
        with pytest.raises(StreamReset):
            ss.set_consumer(Recorder())


async def test_push_mode_consumer_error_resets_the_stream_only() -> None:
    async with yamux_pair("memory") as (client, server):
        cs = await client.open_stream()
        await cs.write(b"ok")
        ss = await asyncio.wait_for(server.accept_stream(), T)
        rec = Recorder(ss)
        rec.fail_on = b"BAD"
        ss.set_consumer(rec)
        await cs.write(b"BAD")
        await asyncio.wait_for(rec.ended.wait(), T)
        assert rec.data == b"ok" and rec.ends == ["lost"]
        await wait_until(lambda: cs.is_reset)  # the remote sees the reset
        with pytest.raises(StreamReset):
            await cs.write(b"more")
        # the connection lives on
        other = await client.open_stream()
        await other.write(b"ping")
        ss2 = await asyncio.wait_for(server.accept_stream(), T)
        assert await ss2.readexactly(4) == b"ping"


async def test_push_mode_connection_loss_is_reported() -> None:
    async with yamux_pair("tcp") as (client, server):
        cs = await client.open_stream()
        await cs.write(b"hi")
        ss = await asyncio.wait_for(server.accept_stream(), T)
        rec = Recorder(ss)
        ss.set_consumer(rec)
        await client.close()
        await asyncio.wait_for(rec.ended.wait(), T)
        assert rec.ends == ["lost"] and isinstance(rec.lost[0], ConnectionClosed)


async def test_flushes_of_many_connections_share_one_callback_and_survive_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conns = []
    for _ in range(2):
        a, b = memory_pipe()
        conns += [YamuxConnection(a, initiator=True), YamuxConnection(b, initiator=False)]
    for conn in conns:
        await conn.start()
    c1, s1, c2, s2 = conns
    try:
        st1, st2 = await c1.open_stream(), await c2.open_stream()
        await st1.write(b"0")
        await st2.write(b"0")
        ss1 = await asyncio.wait_for(s1.accept_stream(), T)
        ss2 = await asyncio.wait_for(s2.accept_stream(), T)
        assert await ss1.readexactly(1) == await ss2.readexactly(1) == b"0"
        loop = asyncio.get_running_loop()
        scheduled: list[Any] = []
        call_soon = loop.call_soon

        def counting(callback: Any, *args: Any, **kw: Any) -> asyncio.Handle:
            scheduled.append(callback)
            return call_soon(callback, *args, **kw)

        flush = YamuxConnection._flush

        def broken(conn: YamuxConnection) -> None:
            if conn is c1:
                raise RuntimeError("a bug in one connection")
            flush(conn)

        monkeypatch.setattr(loop, "call_soon", counting)
        monkeypatch.setattr(YamuxConnection, "_flush", broken)  # (slotted: not per instance)
        assert st1.write_nowait(b"one") and st2.write_nowait(b"two")
        monkeypatch.setattr(loop, "call_soon", call_soon)
        # one callback writes both connections' frames
        assert [getattr(cb, "__qualname__", "") for cb in scheduled] == ["_Flusher._run"]
        # the first one's failure is logged; the second one's frames still leave
        assert await asyncio.wait_for(ss2.readexactly(3), T) == b"two"
        monkeypatch.undo()
        c1._flush_scheduled = False
        c1.flush()
        assert await asyncio.wait_for(ss1.readexactly(3), T) == b"one"
    finally:
        for conn in conns:
            await conn.close()
    assert await settle_tasks() == set()


async def test_push_mode_consumer_that_pauses_and_resets_is_told_once() -> None:
    async with yamux_pair("memory") as (client, server):
        cs = await client.open_stream()
        await cs.write(b"abc")
        ss = await asyncio.wait_for(server.accept_stream(), T)
        assert await ss.readexactly(1) == b"a"  # "bc" left over: pushed from set_consumer

        class PauseAndReset(Recorder):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                ss.pause_reading()
                ss.connection.reset_stream(ss)

        rec = PauseAndReset(ss)
        ss.set_consumer(rec)
        assert rec.data == b"bc"
        assert rec.ends == ["lost"] and isinstance(rec.lost[0], StreamReset)
        await wait_until(lambda: cs.is_reset)
