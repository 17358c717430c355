"""The host over real loopback TCP: dialing, reuse, stream routing and hostile peers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import NoReturn

import pytest

from p2pnet.clock import VirtualClock
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.errors import (
    DialError,
    HandshakeError,
    P2PError,
    PeerIDMismatch,
    ProtocolNotSupported,
)
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.multistream import encode_message
from p2pnet.mux.yamux_connection import YamuxMuxer
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.record import SIGNED_PEER_RECORD, verify_peer_record
from p2pnet.protocols.identify import IdentifyService
from p2pnet.protocols.ping import PingService
from p2pnet.stream import ConnectionInfo, Direction, Stream

ECHO = "/test/echo/1.0.0"


async def echo(stream: Stream) -> None:
    async with stream:
        while data := await stream.read():
            await stream.write(data)


def make_host(**config: object) -> Host:
    host = Host(KeyPair.generate(), HostConfig(**config))  # type: ignore[arg-type]
    host.set_stream_handler(ECHO, echo)
    return host


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Host, Host]]:
    async with make_host() as a, make_host() as b:
        yield a, b


def tcp_target(host: Host) -> tuple[str, int]:
    addr = host.listen_addrs[0]
    return addr.value_for_protocol("ip4"), int(addr.value_for_protocol("tcp"))


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


async def wait_for(predicate: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_connect_and_echo_both_directions(pair: tuple[Host, Host]) -> None:
    a, b = pair
    conn = await a.connect(b.p2p_addrs()[0])
    assert conn.remote_peer == b.peer_id
    await wait_for(lambda: b.is_connected(a.peer_id))
    for src, dst in ((a, b), (b, a)):
        stream = await src.new_stream(dst.peer_id, [ECHO])
        assert stream.protocol == ECHO
        async with stream:
            await stream.write(b"ping" * 1000)
            await stream.close()
            assert await stream.readexactly(4000) == b"ping" * 1000
            assert await stream.read() == b""
    # One connection each way was enough: the stream from b reused a's connection.
    assert len(a.connections()) == 1 and len(b.connections()) == 1


async def test_connection_is_reused_and_concurrent_dials_share_one(pair: tuple[Host, Host]) -> None:
    a, b = pair
    addr = b.p2p_addrs()[0]
    conns = await asyncio.gather(*(a.connect(addr) for _ in range(10)))
    assert len({id(c) for c in conns}) == 1
    assert await a.connect(addr) is conns[0]
    assert len(a.connections(b.peer_id)) == 1


async def test_dial_without_peer_id_accepts_whoever_answers(pair: tuple[Host, Host]) -> None:
    a, b = pair
    conn = await a.connect(b.listen_addrs[0])
    assert conn.remote_peer == b.peer_id


async def test_dial_wrong_peer_id_fails_cleanly(
    pair: tuple[Host, Host], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    other = PeerID.from_public_key(KeyPair.generate().public_key)
    with pytest.raises(PeerIDMismatch) as info:
        await a.connect(f"{b.listen_addrs[0]}/p2p/{other}")
    assert str(other) in str(info.value) and str(b.peer_id) in str(info.value)
    assert not a.connections()
    await wait_for(lambda: not b.connections())
    no_tracebacks(caplog)


async def test_unsupported_protocol(pair: tuple[Host, Host]) -> None:
    a, b = pair
    await a.connect(b.p2p_addrs()[0])
    with pytest.raises(ProtocolNotSupported):
        await a.new_stream(b.peer_id, ["/nobody/speaks/this"])
    # The connection survives a refused stream.
    stream = await a.new_stream(b.peer_id, ["/nobody/speaks/this", ECHO])
    assert stream.protocol == ECHO
    await stream.reset()


async def test_dial_refused_port() -> None:
    async with make_host() as a:
        # Bind and close to get a port nobody listens on.
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(DialError):
            await a.connect(f"/ip4/127.0.0.1/tcp/{port}")


async def test_dial_unsupported_address() -> None:
    async with make_host() as a:
        with pytest.raises(DialError):
            await a.connect("/ip4/127.0.0.1/udp/4001")


async def test_silent_peer_hits_handshake_timeout(caplog: pytest.LogCaptureFixture) -> None:
    async with make_host(upgrade_timeout=0.3) as a:
        reader, writer = await asyncio.open_connection(*tcp_target(a))
        # We say nothing; the host must hang up on us after the upgrade timeout.
        data = await asyncio.wait_for(reader.read(), 5)
        assert data.startswith(encode_message("/multistream/1.0.0"))
        writer.close()
        assert not a.connections()
    no_tracebacks(caplog)


async def test_silent_listener_hits_handshake_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with make_host(upgrade_timeout=0.3) as a:
            with pytest.raises(HandshakeError, match="timed out"):
                await a.connect(f"/ip4/127.0.0.1/tcp/{port}")
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        encode_message("/multistream/1.0.0") + encode_message("/tls/1.0.0"),
        encode_message("/multistream/1.0.0") + encode_message("/noise") + b"\x00\x05hello",
        b"\xff" * 64,
    ],
)
async def test_garbage_from_dialer_closes_connection(
    garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_host(upgrade_timeout=0.5) as a:
        reader, writer = await asyncio.open_connection(*tcp_target(a))
        writer.write(garbage)
        # The host answers what it can (its header, "na") and hangs up at the latest when the
        # upgrade timeout strikes.
        received = b""
        async with asyncio.timeout(3):
            while chunk := await reader.read(4096):
                received += chunk
        assert received.startswith(encode_message("/multistream/1.0.0"))
        writer.close()
        assert not a.connections()
        await wait_for(lambda: len(a._tasks) == 0)
    no_tracebacks(caplog)


async def test_identify_and_ping_between_hosts() -> None:
    async with make_host() as a, make_host() as b:
        ida, idb = IdentifyService(a), IdentifyService(b)
        seen: list[PeerID] = []
        ida.on_identified(lambda info: seen.append(info.peer))
        ping_a = PingService(a)
        PingService(b)
        await a.connect(b.p2p_addrs()[0])
        await ida.wait_identified(b.peer_id, timeout=5)
        await idb.wait_identified(a.peer_id, timeout=5)
        assert ECHO in a.peerstore.get_protocols(b.peer_id)
        assert seen == [b.peer_id]
        assert b.listen_addrs == a.peerstore.addrs(b.peer_id)
        assert a.peerstore.observed_addr(b.peer_id) is not None
        assert a.peerstore.agent_version(b.peer_id) == b.config.agent_version
        record = a.peerstore.get_metadata(b.peer_id, SIGNED_PEER_RECORD)
        assert verify_peer_record(record, b.peer_id) == (b.peer_id, b.listen_addrs)
        rtts = await ping_a.ping(b.peer_id, count=5)
        assert len(rtts) == 5 and all(r > 0 for r in rtts)
        assert a.peerstore.latency(b.peer_id) is not None
        # Push: a new protocol on b reaches a without a new connection.
        b.set_stream_handler("/test/late/1.0.0", echo)
        await wait_for(lambda: "/test/late/1.0.0" in a.peerstore.get_protocols(b.peer_id))


async def test_identify_finished_waits_for_the_exchange_answered_or_failed() -> None:
    async with make_host() as a, make_host() as b, make_host() as c:
        ida = IdentifyService(a)
        IdentifyService(b)  # c runs no identify: a's exchange with it fails
        conn = await a.connect(b.p2p_addrs()[0])
        await asyncio.wait_for(ida.identify_finished(conn), 5)
        assert ECHO in a.peerstore.get_protocols(b.peer_id)  # it ended by answering
        await asyncio.wait_for(ida.identify_finished(conn), 5)  # over: returns at once
        conn_c = await a.connect(c.p2p_addrs()[0])
        await asyncio.wait_for(ida.identify_finished(conn_c), 5)
        assert a.peerstore.get_protocols(c.peer_id) == []  # it ended by failing


async def test_secp256k1_hosts() -> None:
    async with (
        Host(KeyPair.generate(KeyType.Secp256k1)) as a,
        Host(KeyPair.generate(KeyType.Secp256k1)) as b,
    ):
        b.set_stream_handler(ECHO, echo)
        conn = await a.connect(b.p2p_addrs()[0])
        assert str(conn.remote_peer).startswith("16Uiu2")
        stream = await a.new_stream(b.peer_id, ECHO)
        await stream.write(b"x")
        assert await stream.readexactly(1) == b"x"
        await stream.close()


async def test_disconnect_is_seen_by_both_sides(pair: tuple[Host, Host]) -> None:
    a, b = pair
    gone: list[PeerID] = []
    b.on_disconnected(lambda c: gone.append(c.remote_peer))
    await a.connect(b.p2p_addrs()[0])
    await wait_for(lambda: b.is_connected(a.peer_id))
    await a.disconnect(b.peer_id)
    await wait_for(lambda: gone)
    assert gone == [a.peer_id]
    assert not b.is_connected(a.peer_id)
    assert not a.connections()


async def test_close_leaves_no_tasks() -> None:
    before = set(asyncio.all_tasks())
    a, b = make_host(), make_host()
    await a.start()
    await b.start()
    IdentifyService(a)
    IdentifyService(b)
    await a.connect(b.p2p_addrs()[0])
    streams = [await a.new_stream(b.peer_id, ECHO) for _ in range(5)]
    for s in streams:
        await s.write(b"hello")
    await a.close()
    await b.close()
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert not leaked, leaked


async def test_close_reports_every_connection_ended_before_returning() -> None:
    a, b = make_host(), make_host()
    await a.start()
    await b.start()
    ended: list[PeerID] = []
    a.on_disconnected(lambda c: ended.append(c.remote_peer))
    await a.connect(b.p2p_addrs()[0])
    stream = await a.new_stream(b.peer_id, ECHO)
    await stream.write(b"hello")
    assert await stream.read(5) == b"hello"
    await a.close()
    # reported by close() itself, not later from the muxer's close callback
    assert ended == [b.peer_id]
    assert not a.connections() and not a.is_connected(b.peer_id)
    received, sent = a.traffic()
    assert received > 0 and sent > 0  # the closed connection's bytes were kept
    await asyncio.sleep(0.01)
    assert ended == [b.peer_id]  # once
    await b.close()


async def test_close_cancels_an_inbound_upgrade_under_way(caplog: pytest.LogCaptureFixture) -> None:
    before = set(asyncio.all_tasks())
    a = make_host(upgrade_timeout=30.0)
    await a.start()
    reader, writer = await asyncio.open_connection(*tcp_target(a))
    # the header and nothing else: the upgrade waits for our proposal
    writer.write(encode_message("/multistream/1.0.0"))
    assert await asyncio.wait_for(reader.readexactly(1), 5)
    await asyncio.wait_for(a.close(), 5)
    # the connection is dropped at once, not after the upgrade timeout
    await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert a.resources.stat()["transient"] == {}
    leaked = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert not leaked, leaked
    no_tracebacks(caplog)


async def test_max_connections_refuses_extra_inbound() -> None:
    async with make_host(max_connections=1) as a, make_host() as b, make_host() as c:
        await b.connect(a.p2p_addrs()[0])
        await wait_for(lambda: len(a.connections()) == 1)
        with pytest.raises(HandshakeError):
            await c.connect(a.p2p_addrs()[0])
        assert len(a.connections()) == 1


async def test_listens_on_several_addresses_and_dials_each_form() -> None:
    listen = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0"]
    try:
        import socket

        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
        listen.append("/ip6/::1/tcp/0")
    except OSError:  # no IPv6 loopback in this sandbox
        pass
    async with make_host(listen_addrs=listen) as b:
        assert len(b.listen_addrs) == len(listen)
        ports = {int(a.value_for_protocol("tcp")) for a in b.listen_addrs}
        assert len(ports) == len(listen)
        targets = [f"{a}/p2p/{b.peer_id}" for a in b.listen_addrs]
        port = b.listen_addrs[0].value_for_protocol("tcp")
        targets.append(f"/dns4/localhost/tcp/{port}/p2p/{b.peer_id}")
        for target in targets:
            async with make_host() as a:
                conn = await a.connect(target)
                assert conn.remote_peer == b.peer_id
                stream = await a.new_stream(b.peer_id, ECHO)
                await stream.write(b"hi")
                assert await stream.readexactly(2) == b"hi"
                await stream.close()


async def test_listen_on_a_busy_port_fails_clearly() -> None:
    async with make_host() as a:
        with pytest.raises(P2PError, match="cannot listen"):
            async with make_host(listen_addrs=[str(a.listen_addrs[0])]):
                pass


async def test_identify_ignores_a_peer_record_of_someone_else() -> None:
    from p2pnet.peer.record import make_peer_record

    async with make_host() as a, make_host() as b:
        ida, idb = IdentifyService(a), IdentifyService(b)
        # b lies: it hands out a record signed by another key.
        stranger = KeyPair.generate()
        idb.signed_peer_record = lambda addrs=None: make_peer_record(stranger, b.listen_addrs, 1)  # type: ignore[method-assign]
        await a.connect(b.p2p_addrs()[0])
        await ida.wait_identified(b.peer_id, timeout=5)
        assert ECHO in a.peerstore.get_protocols(b.peer_id)  # identify itself still worked
        assert a.peerstore.get_metadata(b.peer_id, SIGNED_PEER_RECORD) is None


async def test_ping_listener_allows_two_streams_per_peer() -> None:
    from p2pnet.errors import StreamReset
    from p2pnet.protocols.ping import PROTOCOL_ID as PING

    async with make_host() as a, make_host() as b:
        PingService(b)
        await a.connect(b.p2p_addrs()[0])
        streams = [await a.new_stream(b.peer_id, PING) for _ in range(2)]
        for s in streams:
            await s.write(b"x" * 32)
            assert await s.readexactly(32) == b"x" * 32
        with pytest.raises(StreamReset):
            third = await a.new_stream(b.peer_id, PING)
            await third.write(b"y" * 32)
            await third.readexactly(32)
        for s in streams:
            await s.close()
        # Once those end, a new one is accepted again.
        ping = PingService(a)
        async with asyncio.timeout(5):
            while True:
                try:
                    await ping.ping(b.peer_id)
                    break
                except P2PError:
                    await asyncio.sleep(0.05)


class _UnusedMuxer:
    """A muxer the remote does not support: proposed first, refused with ``na``."""

    protocol_id = "/mplex/6.7.0"

    def create(self, *args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("a refused muxer must never be instantiated")


async def test_streams_know_their_connection_and_what_was_negotiated() -> None:
    # Each host reads time only from its own clock: opened_at proves which one was used.
    clock_a, clock_b = VirtualClock(100.0), VirtualClock(250.0)
    seen: asyncio.Future[Stream] = asyncio.get_running_loop().create_future()

    async def keep(stream: Stream) -> None:
        seen.set_result(stream)
        await echo(stream)

    a = Host(
        KeyPair.generate(),
        muxers=[_UnusedMuxer(), YamuxMuxer()],  # type: ignore[list-item]
        clock=clock_a,
    )
    b = Host(KeyPair.generate(), clock=clock_b)
    b.set_stream_handler(ECHO, keep)
    async with a, b:
        conn = await a.connect(b.p2p_addrs()[0])
        stream = await a.new_stream(b.peer_id, [ECHO])
        assert stream.conn is conn
        assert isinstance(conn, ConnectionInfo)
        assert (conn.security, conn.muxer, conn.direction) == (
            "/noise",
            "/yamux/1.0.0",
            Direction.OUTBOUND,
        )
        assert conn.opened_at == 100.0
        assert (conn.local_peer, conn.remote_peer) == (a.peer_id, b.peer_id)
        await stream.write(b"x")
        theirs = (await asyncio.wait_for(seen, 5)).conn
        assert theirs.direction is Direction.INBOUND
        assert (theirs.security, theirs.muxer) == ("/noise", "/yamux/1.0.0")
        assert theirs.opened_at == 250.0
        assert theirs.remote_peer == a.peer_id
        assert theirs.remote_addr == conn.local_addr
        assert b.connection_of(await seen) is theirs
        await stream.close()
        assert await stream.read() == b"x"
