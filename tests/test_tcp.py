"""The TCP transport: dial/listen, EOF, abort, reset, backpressure both ways, listener close."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable

import pytest
from multiaddr import Multiaddr

from p2pnet.crypto.keys import KeyPair
from p2pnet.errors import ConnectionClosed, DialError, IncompleteRead
from p2pnet.security.noise import MAX_PLAINTEXT, CipherState, NoiseTransport
from p2pnet.security.noise_connection import noise_handshake
from p2pnet.transport import tcp
from p2pnet.transport.tcp import TcpConnection, TcpListener, TcpTransport, dial, listen

T = 10.0
LOCAL = Multiaddr("/ip4/127.0.0.1/tcp/0")


class Pair:
    """A listener and one connection through it, both ends in hand."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[TcpConnection] = asyncio.Queue()
        self.listener: TcpListener | None = None

    async def handler(self, conn: TcpConnection) -> None:
        await self.accepted.put(conn)

    async def open(self, addr: Multiaddr = LOCAL) -> tuple[TcpConnection, TcpConnection]:
        if self.listener is None:
            self.listener = await listen(addr, self.handler)
        client = await dial(self.listener.multiaddrs[0], timeout=T)
        server = await asyncio.wait_for(self.accepted.get(), T)
        return client, server


@pytest.fixture
async def pair() -> AsyncIterator[tuple[TcpConnection, TcpConnection]]:
    p = Pair()
    client, server = await p.open()
    yield client, server
    await client.close()
    await server.close()
    assert p.listener is not None
    await p.listener.close()


async def read_all(conn: TcpConnection) -> bytes:
    parts = []
    while data := await conn.read():
        parts.append(data)
    return b"".join(parts)


def stalled(task: asyncio.Task[object]) -> bool:
    return not task.done()


async def until(predicate: Callable[[], object], timeout: float = T) -> None:
    """Wait until ``predicate()`` holds (a condition, not a guessed delay), at most ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_roundtrip_addresses_and_options(
    pair: tuple[TcpConnection, TcpConnection],
) -> None:
    client, server = pair
    assert client.initiator and not server.initiator
    assert client.remote_addr == server.local_addr
    assert client.local_addr == server.remote_addr
    assert str(client.remote_addr).startswith("/ip4/127.0.0.1/tcp/")
    sock = client._transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    await client.write(b"hello ")
    await client.write(memoryview(b"world!"))
    assert await server.readexactly(12) == b"hello world!"
    await server.write(b"back")
    assert await client.read(2) == b"ba"
    assert await client.read() == b"ck"
    assert "TcpConnection" in repr(client)


async def test_eof_after_remote_close(pair: tuple[TcpConnection, TcpConnection]) -> None:
    client, server = pair
    await client.write(b"last words")
    await client.close()
    assert client.is_closed
    assert await read_all(server) == b"last words"
    assert await server.read() == b""  # EOF is sticky
    with pytest.raises(IncompleteRead):
        await server.readexactly(1)
    with pytest.raises(ConnectionClosed):
        await client.write(b"more")
    await client.close()  # idempotent


async def test_readexactly_eof_inside(pair: tuple[TcpConnection, TcpConnection]) -> None:
    client, server = pair
    await client.write(b"abc")
    await client.close()
    with pytest.raises(IncompleteRead) as info:
        await server.readexactly(5)
    assert info.value.partial == b"abc"


async def test_half_open_remote_eof_still_writable(
    pair: tuple[TcpConnection, TcpConnection],
) -> None:
    client, server = pair
    client._transport.write_eof()  # FIN from the client, reading still possible
    assert await server.read() == b""
    await server.write(b"reply after eof")
    assert await client.readexactly(15) == b"reply after eof"


async def test_abort(pair: tuple[TcpConnection, TcpConnection]) -> None:
    client, server = pair
    client.abort()
    assert client.is_closed
    with pytest.raises(ConnectionClosed):
        await client.write(b"x")
    assert await asyncio.wait_for(client.read(), T) == b""
    # the remote sees the end of the connection (FIN or RST)
    try:
        assert await asyncio.wait_for(server.read(), T) == b""
    except ConnectionClosed:
        pass


async def test_reset_by_remote_raises_after_the_data(
    pair: tuple[TcpConnection, TcpConnection],
) -> None:
    client, server = pair
    await client.write(b"before the reset")
    assert await server.readexactly(16) == b"before the reset"
    sock = client._transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.abort()  # linger 0: RST
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(server.read(), T)
    # the read saw the reset, so the connection is known lost: the next write fails at once
    with pytest.raises(ConnectionClosed):
        await server.write(b"x" * 65536)


async def test_write_backpressure(pair: tuple[TcpConnection, TcpConnection]) -> None:
    """A remote that does not read stops the writer; memory stays bounded."""
    client, server = pair
    block = os.urandom(256 * 1024)
    written = 0

    async def writer() -> None:
        nonlocal written
        while True:
            await client.write(block)
            written += len(block)

    task = asyncio.create_task(writer())
    # the server reads nothing: TCP buffers and the server's read queue fill, then we stop
    await until(lambda: server._proto.read_paused and client._proto.write_paused)
    stalled_at = written
    await until(lambda: client._proto._drain_waiters != [])  # the writer waits for room
    assert written == stalled_at
    assert stalled(task)
    limit = 64 << 20  # socket buffers (a few MiB each) + our read queue, far below this
    assert written < limit
    assert server._proto.read_paused
    assert server._proto.buffered <= tcp.READ_HIGH_WATER + tcp.READ_SIZE
    # reading releases the writer
    stalled_at = written
    got = 0
    while written == stalled_at:
        got += len(await asyncio.wait_for(server.read(), T))
        await asyncio.sleep(0)
    assert got > 0 and written > stalled_at
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    client.abort()  # do not wait for the unread rest to flush


async def test_read_backpressure_pauses_and_resumes(
    pair: tuple[TcpConnection, TcpConnection],
) -> None:
    client, server = pair
    payload = os.urandom(24 << 20)

    async def send() -> None:
        await client.write(payload)
        await client.close()

    task = asyncio.create_task(send())
    await until(lambda: server._proto.read_paused)
    assert server._proto.buffered <= tcp.READ_HIGH_WATER + tcp.READ_SIZE
    assert stalled(task)
    data = await asyncio.wait_for(read_all(server), T)
    assert data == payload
    assert not server._proto.read_paused
    await asyncio.wait_for(task, T)


async def test_big_transfer_both_ways(pair: tuple[TcpConnection, TcpConnection]) -> None:
    client, server = pair
    size = 32 << 20
    a_to_b = os.urandom(size)
    b_to_a = os.urandom(size // 2)

    async def send(conn: TcpConnection, data: bytes, step: int) -> None:
        view = memoryview(data)
        for pos in range(0, len(data), step):
            await conn.write(view[pos : pos + step])

    async def recv(conn: TcpConnection, size: int) -> str:
        h = hashlib.sha256()
        got = 0
        while got < size:
            chunk = await conn.read(-1)
            assert chunk
            h.update(chunk)
            got += len(chunk)
        assert got == size
        return h.hexdigest()

    results = await asyncio.wait_for(
        asyncio.gather(
            send(client, a_to_b, 1 << 20),
            send(server, b_to_a, 1000),
            recv(server, size),
            recv(client, size // 2),
        ),
        30,
    )
    assert results[2] == hashlib.sha256(a_to_b).hexdigest()
    assert results[3] == hashlib.sha256(b_to_a).hexdigest()


async def test_big_reads_into_the_shared_buffer_are_copied_out_before_attach(
    pair: tuple[TcpConnection, TcpConnection],
) -> None:
    """Reads land in the thread's one receive buffer; the pull reader gets copies of them."""
    client, server = pair
    payload = os.urandom(16 << 20)
    sender = asyncio.create_task(client.write(payload))
    await until(lambda: server._proto.read_paused)  # the socket buffers are full: big reads
    chunks = []
    got = 0
    while got < len(payload):
        chunk = await asyncio.wait_for(server.read(), T)
        chunks.append(chunk)
        got += len(chunk)
    await sender
    assert all(type(c) is bytes for c in chunks)
    assert max(map(len, chunks)) > 256 << 10
    assert b"".join(chunks) == payload
    await client.write(b"small")
    assert await asyncio.wait_for(server.read(), T) == b"small"


class _ViewRecorder:
    """A receiver that takes views of the receive buffer (and copies them, as it must)."""

    accepts_views = True

    def __init__(self) -> None:
        self.types: set[type] = set()
        self.data: list[bytes] = []
        self.lost: list[object] = []

    def data_received(self, data: bytes) -> None:
        self.types.add(type(data))
        self.data.append(bytes(data))

    def connection_lost(self, exc: object) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


async def test_attached_receivers_get_views_only_if_they_take_them() -> None:
    """Two connections read into the same buffer in turn: one receiver takes views of it, the
    other (not saying it does) gets bytes; neither sees the other's data."""
    p = Pair()
    a_client, a_server = await p.open()
    b_client, b_server = await p.open()
    views, copies = _ViewRecorder(), Recorder()
    a_server.attach(views)
    b_server.attach(copies)
    a_data, b_data = os.urandom(6 << 20), os.urandom(6 << 20)
    for i in range(0, len(a_data), 1 << 20):
        await asyncio.gather(
            a_client.write(a_data[i : i + (1 << 20)]), b_client.write(b_data[i : i + (1 << 20)])
        )
    await a_client.close()
    await b_client.close()
    await until(lambda: views.lost and copies.lost)
    assert views.types == {memoryview}
    assert {type(d) for d in copies.data} == {bytes}
    assert b"".join(views.data) == a_data
    assert b"".join(copies.data) == b_data
    assert p.listener is not None
    await p.listener.close()


async def test_many_small_writes_are_read_in_order(
    pair: tuple[TcpConnection, TcpConnection],
) -> None:
    client, server = pair
    messages = [i.to_bytes(4, "big") * (1 + i % 7) for i in range(5000)]
    for m in messages:
        await client.write(m)
    await client.close()
    assert await asyncio.wait_for(read_all(server), T) == b"".join(messages)


async def test_dial_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(DialError, match="failed"):
            await dial(Multiaddr(f"/ip4/127.0.0.1/tcp/{port}"), timeout=T)


async def test_dial_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()

    async def never(*args: object, **kwargs: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(loop, "create_connection", never)
    with pytest.raises(DialError, match="timed out"):
        await dial(Multiaddr("/ip4/127.0.0.1/tcp/1"), timeout=0.05)


async def test_dial_bad_address() -> None:
    with pytest.raises(DialError):
        await dial(Multiaddr("/ip4/127.0.0.1/udp/1"), timeout=T)
    transport = TcpTransport()
    assert not transport.can_dial(Multiaddr("/memory/1"))
    assert transport.can_dial(Multiaddr("/dns4/localhost/tcp/1"))
    assert transport.can_listen(LOCAL)


async def test_dns_and_ip6() -> None:
    p = Pair()
    listener = await listen(LOCAL, p.handler)
    port = listener.multiaddrs[0].value_for_protocol("tcp")
    client = await dial(Multiaddr(f"/dns4/localhost/tcp/{port}"), timeout=T)
    server = await asyncio.wait_for(p.accepted.get(), T)
    await client.write(b"dns")
    assert await server.readexactly(3) == b"dns"
    for c in (client, server):
        await c.close()
    await listener.close()
    if not socket.has_ipv6:
        return
    try:
        listener6 = await listen(Multiaddr("/ip6/::1/tcp/0"), p.handler)
    except OSError:
        return  # no ip6 loopback here
    assert str(listener6.multiaddrs[0]).startswith("/ip6/::1/tcp/")
    client = await dial(listener6.multiaddrs[0], timeout=T)
    server = await asyncio.wait_for(p.accepted.get(), T)
    assert str(client.remote_addr).startswith("/ip6/::1/tcp/")
    await server.write(b"six")
    assert await client.readexactly(3) == b"six"
    for c in (client, server):
        await c.close()
    await listener6.close()


async def test_transport_dial_and_listen() -> None:
    transport = TcpTransport()
    got: asyncio.Future[TcpConnection] = asyncio.get_running_loop().create_future()

    async def handler(conn: object) -> None:
        assert isinstance(conn, TcpConnection)
        got.set_result(conn)

    listener = await transport.listen(LOCAL, handler)
    client = await transport.dial(listener.multiaddrs[0], timeout=T)
    server = await asyncio.wait_for(got, T)
    await client.write(b"ok")
    assert await server.readexactly(2) == b"ok"
    await client.close()
    await server.close()
    await listener.close()


async def test_listener_close_stops_accepting_and_cancels_handlers() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    conns: list[TcpConnection] = []

    async def handler(conn: TcpConnection) -> None:
        conns.append(conn)
        started.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            cancelled.set()
            raise

    listener = await listen(LOCAL, handler)
    addr = listener.multiaddrs[0]
    client = await dial(addr, timeout=T)
    await asyncio.wait_for(started.wait(), T)
    await asyncio.wait_for(listener.close(), T)
    assert cancelled.is_set()
    await listener.close()  # idempotent
    with pytest.raises(DialError):
        await dial(addr, timeout=T)
    # the accepted connection itself is not closed by the listener
    await client.write(b"still here")
    assert await conns[0].readexactly(10) == b"still here"
    await client.close()
    await conns[0].close()


async def test_failing_handler_aborts_its_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(conn: TcpConnection) -> None:
        raise RuntimeError("handler bug")

    listener = await listen(LOCAL, handler)
    client = await dial(listener.multiaddrs[0], timeout=T)
    try:
        assert await asyncio.wait_for(client.read(), T) == b""
    except ConnectionClosed:
        pass
    assert "handler bug" in caplog.text or "failed" in caplog.text
    await client.close()
    await listener.close()


async def test_one_reader_at_a_time(pair: tuple[TcpConnection, TcpConnection]) -> None:
    client, server = pair
    first = asyncio.create_task(server.read())
    await until(lambda: server._proto._read_waiter is not None)
    with pytest.raises(RuntimeError):
        await server._proto.wait_readable()
    await client.write(b"z")
    assert await asyncio.wait_for(first, T) == b"z"


async def test_close_flushes_pending_writes(pair: tuple[TcpConnection, TcpConnection]) -> None:
    client, server = pair
    payload = os.urandom(8 << 20)
    reader = asyncio.create_task(read_all(server))
    client._transport.write(payload)  # queued in the transport, beyond what the socket took
    await client.close()
    assert await asyncio.wait_for(reader, T) == payload


# -- the Noise layer's vectored writes over TCP (the yamux flush's path) -----------------------


def test_encrypt_many_equals_encrypt_of_the_joined_pieces() -> None:
    rnd = random.Random(7)
    k1, k2 = os.urandom(32), os.urandom(32)
    for _ in range(200):
        a = NoiseTransport(CipherState(k1), CipherState(k2))
        b = NoiseTransport(CipherState(k2), CipherState(k1))
        pieces: list[bytes | bytearray | memoryview] = []
        for _ in range(rnd.randint(0, 10)):
            size = rnd.choice([0, 1, 12, 8191, 8192, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 262144])
            data = os.urandom(size)
            pieces.append(rnd.choice([data, bytearray(data), memoryview(data)]))
        wire = bytes(a.encrypt_many(pieces))
        frames = b.decrypt(wire)
        assert b"".join(frames) == b"".join(bytes(p) for p in pieces)
        assert all(0 < len(f) <= MAX_PLAINTEXT for f in frames)
        assert b.decrypt(a.encrypt(b"next")) == [b"next"]  # the nonces stay in step


def test_encrypt_many_frames_big_pieces_in_place() -> None:
    """Small pieces share a frame; a big piece starts a frame of its own (no copy of it)."""
    k1, k2 = os.urandom(32), os.urandom(32)
    a = NoiseTransport(CipherState(k1), CipherState(k2))
    b = NoiseTransport(CipherState(k2), CipherState(k1))
    header, payload = b"h" * 12, os.urandom(4 * MAX_PLAINTEXT + 68)
    frames = b.decrypt(bytes(a.encrypt_many([header, payload, header, payload, b"x"])))
    sizes = [len(f) for f in frames]
    assert sizes == [12] + [MAX_PLAINTEXT] * 4 + [80] + [MAX_PLAINTEXT] * 4 + [69]


class Recorder:
    """A :class:`~p2pnet.channel.ChannelReceiver` that keeps what it is told."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lost: list[object] = []
        self.paused = 0

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def connection_lost(self, exc: object) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        pass


async def test_noise_channel_writelines_over_tcp(pair: tuple[TcpConnection, TcpConnection]) -> None:
    """The attached Noise channel (the yamux flush's path): vectored writes, in order."""
    client, server = pair
    ca, cb = await asyncio.wait_for(
        asyncio.gather(
            noise_handshake(client, KeyPair.generate(), initiator=True),
            noise_handshake(server, KeyPair.generate(), initiator=False),
        ),
        T,
    )
    recorder = Recorder()
    channel = ca.attach(recorder)
    pieces = [os.urandom(n) for n in (12, 300_000, 12, 5, 70_000, 1)] * 20
    expected = b"".join(pieces)

    async def send() -> None:
        for i in range(0, len(pieces), 6):
            channel.writelines(pieces[i : i + 6])
            await asyncio.sleep(0)
        channel.write(b"tail")
        channel.close()

    async def recv() -> bytes:
        parts = []
        while data := await cb.read():
            parts.append(data)
        return b"".join(parts)

    _, got = await asyncio.wait_for(asyncio.gather(send(), recv()), 30)
    assert got == expected + b"tail"
    with pytest.raises(ConnectionClosed):
        channel.writelines([b"closed"])
    await asyncio.wait_for(channel.wait_closed(), T)
    assert recorder.lost == [None] and recorder.data == []
    await cb.close()


class _OutOfFds:
    """A listening socket whose ``accept`` fails with EMFILE ``failures`` times first."""

    def __init__(self, sock: socket.socket, failures: int) -> None:
        self.sock = sock
        self.failures = failures
        self.failed_at: list[float] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def getsockname(self) -> object:
        return self.sock.getsockname()

    def close(self) -> None:
        self.sock.close()

    def accept(self) -> tuple[socket.socket, object]:
        if self.failures:
            self.failures -= 1
            self.failed_at.append(asyncio.get_running_loop().time())
            raise OSError(errno.EMFILE, "Too many open files")
        return self.sock.accept()


async def test_listener_out_of_fds_pauses_briefly_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Out of fds the listener stops accepting for 20 ms, then 40, 80 ... while accept fails
    at once after each pause (one warning for them all), and takes the waiting connection once
    it works again: not asyncio's fixed second per failure."""
    server = socket.create_server(("127.0.0.1", 0), backlog=16)
    server.setblocking(False)
    flaky = _OutOfFds(server, failures=3)
    accepted: asyncio.Queue[TcpConnection] = asyncio.Queue()
    listener = TcpListener(accepted.put, LOCAL)
    before = tcp.accept_out_of_resources
    listener._start(asyncio.get_running_loop(), [flaky])  # type: ignore[list-item]
    try:
        start = asyncio.get_running_loop().time()
        client = await dial(listener.multiaddrs[0], timeout=T)
        conn = await asyncio.wait_for(accepted.get(), T)
        took = asyncio.get_running_loop().time() - start
        assert tcp.accept_out_of_resources - before == 3
        gaps = [b - a for a, b in zip(flaky.failed_at, flaky.failed_at[1:], strict=False)]
        assert gaps[0] >= tcp.ACCEPT_PAUSE and gaps[1] >= 2 * tcp.ACCEPT_PAUSE
        # 0.02 + 0.04 + 0.08 s of pauses; far below the second asyncio pauses for each failure
        assert took < 1.0
        warnings = [r for r in caplog.records if "out of file descriptors" in r.getMessage()]
        assert len([r for r in warnings if r.levelname == "WARNING"]) == 1
        await client.write(b"hello")
        assert await conn.read() == b"hello"
        await client.close()
        await conn.close()
    finally:
        await listener.close()


async def test_listener_admit_closes_refused_connections_before_the_handler() -> None:
    """``admit`` sees the remote IP right after accept: a refused connection is closed at once
    (the dialer reads EOF) and never reaches the handler; an admitted one does."""
    accepted: asyncio.Queue[TcpConnection] = asyncio.Queue()
    listener = await listen(LOCAL, accepted.put)
    asked: list[str] = []

    def admit(ip: str) -> bool:
        asked.append(ip)
        return len(asked) > 1  # the first is refused

    listener.admit = admit
    try:
        refused = await dial(listener.multiaddrs[0], timeout=T)
        assert await asyncio.wait_for(refused.read(), T) == b""
        assert listener.refused == 1 and accepted.empty()
        admitted = await dial(listener.multiaddrs[0], timeout=T)
        server = await asyncio.wait_for(accepted.get(), T)
        assert asked == ["127.0.0.1", "127.0.0.1"]
        await admitted.write(b"hi")
        assert await server.read() == b"hi"
        for conn in (refused, admitted, server):
            await conn.close()
    finally:
        await listener.close()
