"""The push-driven connection pipeline: TCP/memory -> Noise -> yamux without reader or writer
tasks, and its edge cases (a peer that closes mid-frame, garbage after decryption, writes after a
reset, flow control under a slow reader, a peer that pings but never reads)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator
from typing import Any

from multiaddr import Multiaddr

from p2pnet.crypto.keys import KeyPair
from p2pnet.errors import ConnectionClosed, IncompleteRead, StreamReset
from p2pnet.mux import yamux
from p2pnet.mux.yamux import FLAG_ACK, FLAG_SYN, HEADER, TYPE_GO_AWAY, TYPE_PING, YamuxConfig
from p2pnet.mux.yamux_connection import YamuxConnection, YamuxStream
from p2pnet.resources.limits import ResourceLimits
from p2pnet.resources.manager import ResourceManager
from p2pnet.security.noise_connection import NoiseConnection, noise_handshake
from p2pnet.stream import Direction
from p2pnet.transport import tcp
from p2pnet.transport.addr import host_port_of
from p2pnet.transport.memory import MemoryConnection, MemoryNetwork

T = 5.0
KiB = 1024


async def other_tasks() -> set[asyncio.Task[Any]]:
    """Tasks other than the current one, once finished ones have left the loop."""
    current = asyncio.current_task()
    for _ in range(50):
        others = {t for t in asyncio.all_tasks() if t is not current and not t.done()}
        if not others:
            return others
        await asyncio.sleep(0.01)
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


async def tcp_pair() -> tuple[tcp.TcpConnection, tcp.TcpConnection]:
    accepted: asyncio.Future[tcp.TcpConnection] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def handler(conn: tcp.TcpConnection) -> None:
        accepted.set_result(conn)
        await done.wait()  # the listener owns this task until the test took the connection

    listener = await tcp.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), handler)
    try:
        client = await tcp.dial(listener.multiaddrs[0])
        server = await asyncio.wait_for(accepted, T)
    finally:
        done.set()
        await listener.close()
    return client, server


async def noise_pair() -> tuple[NoiseConnection, NoiseConnection]:
    a, b = await tcp_pair()
    return await asyncio.gather(
        noise_handshake(a, KeyPair.generate(), initiator=True),
        noise_handshake(b, KeyPair.generate(), initiator=False),
    )


async def memory_pair(high_water: int) -> tuple[MemoryConnection, MemoryConnection]:
    network = MemoryNetwork(high_water=high_water)
    accepted: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def handler(conn: Any) -> None:
        accepted.set_result(conn)

    transport = network.transport()
    listener = await transport.listen(Multiaddr("/memory/0"), handler)
    client = await transport.dial(listener.multiaddrs[0], timeout=T)
    server = await asyncio.wait_for(accepted, T)
    await listener.close()
    assert isinstance(client, MemoryConnection) and isinstance(server, MemoryConnection)
    return client, server


async def echo(stream: YamuxStream) -> None:
    while data := await stream.read():
        await stream.write(data)
    await stream.close()


async def read_all(stream: YamuxStream) -> bytes:
    parts = []
    while data := await stream.read():
        parts.append(data)
    return b"".join(parts)


async def wait_for(condition: Any, what: str) -> None:
    """Poll a condition of the code under test, failing after ``T`` seconds."""
    try:
        async with asyncio.timeout(T):
            while not condition():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@contextlib.asynccontextmanager
async def yamux_over_noise(
    on_stream: Any = echo,
) -> AsyncIterator[tuple[YamuxConnection, YamuxConnection]]:
    a, b = await noise_pair()
    cfg = YamuxConfig(keepalive_interval=5.0)
    client = YamuxConnection(a, initiator=True, config=cfg)
    server = YamuxConnection(b, initiator=False, config=cfg, on_stream=on_stream)
    await client.start()
    await server.start()
    try:
        yield client, server
    finally:
        await client.close()
        await server.close()


async def test_no_task_per_connection_and_none_after_close() -> None:
    async with yamux_over_noise() as (client, server):
        # an established connection with a keepalive runs no task of its own
        assert await other_tasks() == set()
        stream = await client.open_stream()
        payload = bytes(range(256)) * 4096  # 1 MiB: windows, many frames, both directions
        writer = asyncio.create_task(stream.write(payload))
        got = bytearray()
        while len(got) < len(payload):
            got += await asyncio.wait_for(stream.read(), T)
        await writer
        assert got == payload
        await stream.close()
        assert await asyncio.wait_for(stream.read(), T) == b""
        # the echo handler ended with its stream: nothing runs again
        assert await other_tasks() == set()
        assert await asyncio.wait_for(client.ping(), T) > 0
    assert client.closed.is_set() and server.closed.is_set()
    assert await other_tasks() == set()


async def test_remote_closes_the_connection_the_other_side_closes_itself() -> None:
    async with yamux_over_noise() as (client, server):
        stream = await client.open_stream()
        await stream.write(b"x")
        assert await asyncio.wait_for(stream.read(), T) == b"x"
        await server.close()
        await asyncio.wait_for(client.wait_closed(), T)
        assert "closed by the remote" in str(client.error)
        try:
            await stream.write(b"y")
        except ConnectionClosed:
            pass
        else:
            raise AssertionError("write on a stream of a closed connection succeeded")
    assert await other_tasks() == set()


async def test_peer_closes_in_the_middle_of_a_noise_frame() -> None:
    a, b = await noise_pair()
    server = YamuxConnection(b, initiator=False, on_stream=echo)
    await server.start()
    # read what the server sent (its first ping), so closing sends FIN rather than RST
    assert HEADER.unpack(await asyncio.wait_for(a.readexactly(HEADER.size), T))[1] == TYPE_PING
    frame = a._transport.encrypt(HEADER.pack(0, TYPE_PING, FLAG_SYN, 0, 7))
    raw = a.raw
    assert isinstance(raw, tcp.TcpConnection)
    await raw.write(frame[: len(frame) - 5])  # the length prefix promises 5 bytes more
    await raw.close()
    await asyncio.wait_for(server.wait_closed(), T)
    assert isinstance(server.error, ConnectionClosed)
    # Noise reports the truncated frame: EOF after the bytes that came, of the length announced
    assert f"connection lost: EOF after {len(frame) - 5} of {len(frame)} bytes" in str(server.error)
    assert await other_tasks() == set()


async def test_malformed_yamux_frame_after_decryption() -> None:
    a, b = await noise_pair()
    server = YamuxConnection(b, initiator=False, on_stream=echo)
    await server.start()
    await a.write(HEADER.pack(9, 0, 0, 1, 0))  # authentic Noise, but yamux version 9
    frames = []
    with contextlib.suppress(IncompleteRead):
        while True:
            header = await asyncio.wait_for(a.readexactly(HEADER.size), T)
            frames.append(HEADER.unpack(header))
    assert (0, TYPE_GO_AWAY, 0, 0, yamux.GO_AWAY_PROTOCOL_ERROR) in frames
    await asyncio.wait_for(server.wait_closed(), T)
    assert "protocol error" in str(server.error)
    await a.close()
    assert await other_tasks() == set()


async def test_write_after_remote_reset() -> None:
    async def reset_on_first_bytes(stream: YamuxStream) -> None:
        await stream.read(1)
        await stream.reset()

    async with yamux_over_noise(reset_on_first_bytes) as (client, _server):
        stream = await client.open_stream()
        await stream.write(b"x")
        try:
            await asyncio.wait_for(stream.read(), T)
        except StreamReset:
            pass
        else:
            raise AssertionError("read after the remote's reset did not raise")
        for _ in range(2):  # and it stays so
            try:
                await stream.write(b"more")
            except StreamReset:
                pass
            else:
                raise AssertionError("write after the remote's reset succeeded")
        assert not client.is_closed  # the connection lives on
        other = await client.open_stream()
        await other.write(b"still here")
    assert await other_tasks() == set()


async def test_slow_reader_pauses_both_transports_and_resumes() -> None:
    a, b = await memory_pair(high_water=64 * KiB)
    sender = YamuxConnection(
        a, initiator=True, config=YamuxConfig(write_high_water=128 * KiB, keepalive_interval=None)
    )
    receiver = YamuxConnection(
        b, initiator=False, config=YamuxConfig(read_high_water=128 * KiB, keepalive_interval=None)
    )
    await sender.start()
    await receiver.start()
    payloads = [bytes([i]) * (200 * KiB) for i in range(4)]  # each within a stream's window

    async def send(i: int) -> None:
        stream = await sender.open_stream()
        for pos in range(0, len(payloads[i]), 16 * KiB):
            await stream.write(payloads[i][pos : pos + 16 * KiB])
            await asyncio.sleep(0)
        await stream.close()

    senders = [asyncio.create_task(send(i)) for i in range(4)]
    # nobody reads: the receiver stops reading, its inbox fills, the sender is told to wait
    await wait_for(lambda: receiver.reading_paused and sender.writing_paused, "both paused")
    for _ in range(20):
        await asyncio.sleep(0)
    assert receiver.unread <= 128 * KiB + 64 * KiB
    assert sender.session.outbound_size <= 128 * KiB + 16 * KiB
    assert not any(t.done() for t in senders)
    # the application reads: everything arrives, in order, and both sides run again
    streams = [await asyncio.wait_for(receiver.accept_stream(), T) for _ in range(4)]
    got = await asyncio.wait_for(asyncio.gather(*(read_all(s) for s in streams)), T)
    assert sorted(got) == sorted(payloads)
    await asyncio.wait_for(asyncio.gather(*senders), T)
    assert not receiver.reading_paused and not sender.writing_paused
    await sender.close()
    await receiver.close()
    assert await other_tasks() == set()


async def test_pings_from_a_peer_that_never_reads_close_the_connection() -> None:
    """Issue 11: the pongs queued for a peer that does not read count against the connection's
    memory scope; past its limit the connection is closed, and everything is given back."""
    limits = dataclasses.replace(ResourceLimits(), conn_memory=128 * KiB)  # < max_reply_backlog
    manager = ResourceManager(limits)
    scope = manager.open_connection(Direction.INBOUND, None, 0.0)
    attacker, b = await memory_pair(high_water=64 * KiB)
    victim = YamuxConnection(
        b, initiator=False, config=YamuxConfig(keepalive_interval=None), scope=scope
    )
    await victim.start()
    pings = b"".join(HEADER.pack(0, TYPE_PING, FLAG_SYN, 0, i) for i in range(4096))  # 48 KiB
    sent = 0
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(T):
            while not victim.is_closed and sent < 64 * 1024 * KiB:
                await attacker.write(pings)  # never reads what the victim answers
                sent += len(pings)
    await asyncio.wait_for(victim.wait_closed(), T)
    assert "write backlog" in str(victim.error)
    assert manager.refused["conn/write_backlog"] == 1
    # what the victim wrote is bounded: one inbox of pongs (and a batch), the rest was dropped
    assert attacker._buffered <= 64 * KiB + 2 * 48 * KiB
    assert sent < 1024 * KiB
    assert scope.scope.used("memory") == 0
    scope.done()
    assert manager.system.used("memory") == 0
    await attacker.close()
    assert await other_tasks() == set()


async def test_tcp_pause_writing_holds_frames_until_the_remote_reads() -> None:
    """A remote that stops reading fills our socket: the transport says pause_writing, the
    connection stops flushing and stream writers wait; once it reads, everything goes out."""
    accepted: asyncio.Future[tcp.TcpConnection] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def handler(conn: tcp.TcpConnection) -> None:
        accepted.set_result(conn)
        await done.wait()

    listener = await tcp.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), handler)
    peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: we fill it fast
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(peer, host_port_of(listener.multiaddrs[0]))
    raw = await asyncio.wait_for(accepted, T)
    done.set()
    await listener.close()
    cfg = YamuxConfig(keepalive_interval=None, write_high_water=256 * KiB)
    conn = YamuxConnection(raw, initiator=True, config=cfg)
    await conn.start()
    size = 256 * KiB  # each stream's whole initial window: no ACK or window update needed

    async def send() -> None:
        stream = await conn.open_stream()
        await stream.write(b"z" * size)

    writers = [asyncio.create_task(send()) for _ in range(32)]  # 8 MiB in all
    await wait_for(lambda: conn.writing_paused, "pause_writing")
    for _ in range(20):
        await asyncio.sleep(0)
    assert conn.session.outbound_size <= cfg.write_high_water + cfg.max_frame_payload
    assert not all(t.done() for t in writers)
    received = 0
    async with asyncio.timeout(T):
        while received < 32 * size:
            received += len(await loop.sock_recv(peer, 1 << 20))
            if all(t.done() for t in writers) and not conn.session.outbound_size:
                break
    await asyncio.wait_for(asyncio.gather(*writers), T)
    assert not conn.writing_paused
    await conn.close()
    peer.close()
    assert await other_tasks() == set()


async def test_a_peer_that_pings_but_never_reads_is_no_longer_read() -> None:
    """Past ``max_reply_backlog`` bytes of pongs waiting behind a full transport we stop reading
    the peer (its writes then wait); once it reads, every ping gets its pong."""
    attacker, b = await memory_pair(high_water=64 * KiB)
    cfg = YamuxConfig(keepalive_interval=None, max_reply_backlog=128 * KiB)
    victim = YamuxConnection(b, initiator=False, config=cfg)
    await victim.start()
    batch = 4096
    pings = b"".join(HEADER.pack(0, TYPE_PING, FLAG_SYN, 0, i) for i in range(batch))
    sent = 0
    writer = None
    async with asyncio.timeout(T):
        while True:
            writer = asyncio.create_task(attacker.write(pings))
            await asyncio.wait([writer], timeout=0.2)
            if not writer.done():
                break  # the victim stopped reading us: our write waits
            sent += batch
    assert victim.reading_paused and victim.writing_paused
    assert victim.session.reply_backlog <= 128 * KiB + 2 * len(pings)
    # the attacker reads now: the victim flushes, reads again, and answers everything
    pongs = 0
    async with asyncio.timeout(T):
        while pongs < sent + batch:
            _, ftype, flags, _, _ = HEADER.unpack(await attacker.readexactly(HEADER.size))
            assert ftype == TYPE_PING
            pongs += bool(flags & FLAG_ACK)  # (the victim's own first ping has SYN)
    await asyncio.wait_for(writer, T)
    assert not victim.reading_paused and not victim.is_closed
    await victim.close()
    await attacker.close()
    assert await other_tasks() == set()
