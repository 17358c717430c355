"""Hosts on an in-process MemoryNetwork, with Noise and with /plaintext/2.0.0."""

from __future__ import annotations

import asyncio
import time

import pytest
from multiaddr import Multiaddr

from p2pnet.channel import ChannelReceiver
from p2pnet.clock import VirtualClock
from p2pnet.crypto.keys import KeyPair
from p2pnet.errors import DialError, P2PError, PeerIDMismatch, ProtocolNotSupported
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.mux.yamux_connection import YamuxConnection
from p2pnet.peer.peer_id import PeerID
from p2pnet.protocols.identify import IdentifyService
from p2pnet.protocols.ping import PingService
from p2pnet.security.base import SecurityTransport
from p2pnet.security.noise_connection import NoiseSecurity
from p2pnet.security.plaintext import PlaintextSecurity
from p2pnet.sim.loop import run_virtual
from p2pnet.stream import Stream
from p2pnet.transport.memory import MemoryNetwork

ECHO = "/test/echo/1.0.0"


async def echo(stream: Stream) -> None:
    async with stream:
        while data := await stream.read():
            await stream.write(data)


def memory_host(net: MemoryNetwork, security: list[SecurityTransport] | None = None) -> Host:
    host = Host(
        KeyPair.generate(),
        HostConfig(listen_addrs=["/memory/0"]),
        transports=[net.transport()],
        security=security or [PlaintextSecurity()],
    )
    host.set_stream_handler(ECHO, echo)
    return host


@pytest.mark.parametrize("security", [PlaintextSecurity, NoiseSecurity])
async def test_memory_hosts_connect_identify_ping_echo(security: type) -> None:
    net = MemoryNetwork()
    async with memory_host(net, [security()]) as a, memory_host(net, [security()]) as b:
        ida = IdentifyService(a)
        IdentifyService(b)
        ping = PingService(a)
        PingService(b)
        assert str(b.listen_addrs[0]).startswith("/memory/")
        conn = await a.connect(b.p2p_addrs()[0])
        assert conn.remote_peer == b.peer_id
        await ida.wait_identified(b.peer_id, timeout=5)
        assert a.peerstore.addrs(b.peer_id) == b.listen_addrs
        assert len(await ping.ping(b.peer_id, count=2)) == 2
        stream = await a.new_stream(b.peer_id, ECHO)
        payload = bytes(range(256)) * 4096

        async def send() -> None:
            await stream.write(payload)
            await stream.close()

        # Read while writing: an echo peer stops reading once our receive window is full.
        _, got = await asyncio.gather(send(), stream.readexactly(len(payload)))
        assert got == payload
        assert await stream.read() == b""


async def test_plaintext_checks_the_expected_peer() -> None:
    net = MemoryNetwork()
    async with memory_host(net) as a, memory_host(net) as b:
        other = PeerID.from_public_key(KeyPair.generate().public_key)
        with pytest.raises(PeerIDMismatch):
            await a.connect(f"{b.listen_addrs[0]}/p2p/{other}")


async def test_security_mismatch_fails_negotiation() -> None:
    net = MemoryNetwork()
    async with (
        memory_host(net, [PlaintextSecurity()]) as a,
        memory_host(net, [NoiseSecurity()]) as b,
    ):
        with pytest.raises(ProtocolNotSupported):
            await a.connect(b.p2p_addrs()[0])
        # A host offering both agrees on the first the listener supports.
        async with memory_host(net, [PlaintextSecurity(), NoiseSecurity()]) as c:
            conn = await c.connect(b.p2p_addrs()[0])
            assert conn.remote_peer == b.peer_id


async def test_dial_nothing_listening() -> None:
    net = MemoryNetwork()
    async with memory_host(net) as a:
        with pytest.raises(DialError):
            await a.connect("/memory/999")
        with pytest.raises(DialError):
            await a.connect("/ip4/127.0.0.1/tcp/1")  # no TCP transport on this host


async def test_memory_backpressure_bounds_buffering() -> None:
    net = MemoryNetwork(high_water=64 * 1024)
    async with memory_host(net) as a, memory_host(net) as b:
        got_stream: asyncio.Future[Stream] = asyncio.get_running_loop().create_future()

        async def hold(stream: Stream) -> None:
            got_stream.set_result(stream)
            await asyncio.Event().wait()  # never reads

        b.set_stream_handler("/test/hold/1.0.0", hold)
        await a.connect(b.p2p_addrs()[0])
        stream = await a.new_stream(b.peer_id, "/test/hold/1.0.0")
        sent = 0

        async def writer() -> None:
            nonlocal sent
            while True:
                await stream.write(b"x" * 65536)
                sent += 65536

        task = asyncio.create_task(writer())
        await asyncio.wait_for(got_stream, 5)
        # The writer stalls once the yamux window (256 KiB) is used up.
        async with asyncio.timeout(5):
            while True:
                before = sent
                await asyncio.sleep(0.05)
                if sent == before and sent > 0:
                    break
        assert sent <= 512 * 1024
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_long_backlog_of_small_writes_arrives_whole_and_in_order() -> None:
    """The inbox (a list taken from an index, compacted as it goes) keeps order and bytes,
    read chunk by chunk (pull mode) and pushed (attached), with a remote that closes after."""
    net = MemoryNetwork(high_water=1 << 30)
    accepted: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    async def handler(conn: object) -> None:
        accepted.set_result(conn)

    transport = net.transport()
    listener = await transport.listen(Multiaddr("/memory/0"), handler)
    client = await transport.dial(listener.multiaddrs[0], timeout=5)
    server = await asyncio.wait_for(accepted, 5)
    await listener.close()
    chunks = [b"%d," % i for i in range(5000)]
    for chunk in chunks:
        await client.write(chunk)
    got = b""
    async with asyncio.timeout(5):
        while len(got) < 3000:
            got += await server.read()  # type: ignore[attr-defined]
    # the rest (still more than 1024 chunks past the first) pushed to a receiver
    pushed: list[bytes] = []
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    class Receiver(ChannelReceiver):
        def data_received(self, data: bytes) -> None:
            pushed.append(data)

        def connection_lost(self, exc: P2PError | None) -> None:
            lost.set_result(None)

        def pause_writing(self) -> None: ...

        def resume_writing(self) -> None: ...

    server.attach(Receiver())  # type: ignore[attr-defined]
    client.abort()
    await asyncio.wait_for(lost, 5)
    assert got + b"".join(pushed) == b"".join(chunks)


async def test_hundred_hosts_in_a_ring() -> None:
    net = MemoryNetwork()
    hosts = [memory_host(net) for _ in range(100)]
    try:
        for h in hosts:
            await h.start()
        await asyncio.gather(
            *(h.connect(hosts[(i + 1) % 100].p2p_addrs()[0]) for i, h in enumerate(hosts))
        )
        for i, h in enumerate(hosts):
            assert h.is_connected(hosts[(i + 1) % 100].peer_id)
    finally:
        await asyncio.gather(*(h.close() for h in hosts))


def test_hosts_on_a_virtual_clock_keepalive_and_time_their_connections() -> None:
    # Host, connection, yamux keepalive and ping read only the injected clock: on the virtual
    # loop ten minutes of keepalive run in no real time, and every time is the virtual one.
    clock = VirtualClock(start=1000.0)

    async def main() -> tuple[float, int, list[float], bool]:
        net = MemoryNetwork()
        config = HostConfig(listen_addrs=["/memory/0"])
        a = Host(KeyPair.generate(), config, transports=[net.transport()], clock=clock)
        b = Host(KeyPair.generate(), config, transports=[net.transport()], clock=clock)
        ping_b = PingService(b)
        ping_a = PingService(a)
        async with a, b:
            await asyncio.sleep(5)
            conn = await a.connect(b.p2p_addrs()[0])
            muxed = conn.muxed
            assert isinstance(muxed, YamuxConnection)
            first_ping = muxed.session._next_ping_id
            await asyncio.sleep(615)  # 20 keepalive intervals of 30 s (no tie at the end)
            pings = muxed.session._next_ping_id - first_ping
            rtts = await ping_a.ping(b.peer_id, count=2)
            alive = not conn.is_closed
            await ping_b.close()
        return conn.opened_at, pings, rtts, alive

    started = time.monotonic()
    opened_at, pings, rtts, alive = run_virtual(main(), clock)
    assert time.monotonic() - started < 10  # ten virtual minutes, not real ones
    assert opened_at == 1005.0
    assert pings == 20 and alive
    assert rtts == [0.0, 0.0]  # the memory transport has no delay, on the virtual clock


def test_memory_addresses_built_from_bytes_equal_the_parsed_ones() -> None:
    from multiaddr import Multiaddr

    from p2pnet.transport.memory import memory_addr, memory_port

    for port in (0, 1, 255, 256, 65535, 2**40):
        addr = memory_addr(port)
        assert addr == Multiaddr(f"/memory/{port}") and str(addr) == f"/memory/{port}"
        assert memory_port(addr) == port
