"""DCUtR: the sans-IO core (messages, addresses, both sides' state machines) and the service
over a real relay on loopback (unilateral upgrade, lying and malformed peers). The hole punch
through two NATs is in test_holepunch_lab.py."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from typing import Any

import pytest
from multiaddr import Multiaddr

from p2pnet.config import NodeConfig
from p2pnet.dcutr.core import (
    MAX_ADDRS,
    MAX_MESSAGE_SIZE,
    PROTOCOL,
    DCUtRError,
    Dial,
    Finished,
    Initiator,
    Message,
    MessageType,
    Responder,
    Send,
    StartTimer,
    decode_message,
    encode_message,
    is_punchable,
    parse_addrs,
    predicted_addrs,
)
from p2pnet.dcutr.service import HolePunchResult, HolePunchService
from p2pnet.errors import P2PError, StreamReset
from p2pnet.host.connection import Direction
from p2pnet.host.host import is_relayed_connection, preferred
from p2pnet.node import Node
from p2pnet.relay.service import RelayService
from p2pnet.relay.transport import CircuitTransport
from p2pnet.transport import tcp
from p2pnet.wire.framing import read_length_prefixed, write_length_prefixed
from p2pnet.wire.varint import encode_uvarint

PUBLIC = Multiaddr("/ip4/1.2.3.4/tcp/4001")
PUBLIC6 = Multiaddr("/ip6/2001:4860::1/tcp/4001")
THEIRS = Multiaddr("/ip4/5.6.7.8/tcp/5001")


def connect(addrs: list[Multiaddr]) -> bytes:
    return encode_message(Message(MessageType.CONNECT, [a.to_bytes() for a in addrs]))


SYNC = encode_message(Message(MessageType.SYNC))


# -- messages ----------------------------------------------------------------------------------


def test_messages_are_the_specs_protobuf() -> None:
    addr = PUBLIC.to_bytes()
    # field 1 (type) varint 100; field 2 (ObsAddrs) length-delimited
    assert connect([PUBLIC]) == b"\x08\x64\x12" + bytes([len(addr)]) + addr
    assert SYNC == b"\x08\xac\x02"  # 300
    assert decode_message(connect([PUBLIC])) == Message(MessageType.CONNECT, [addr])
    assert decode_message(SYNC) == Message(MessageType.SYNC, [])


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff",  # not protobuf
        b"",  # no type
        b"\x08\x01",  # unknown type
        b"\x12\x02ab",  # addresses without a type
    ],
)
def test_bad_messages_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(DCUtRError):
        decode_message(data)


def test_messages_over_4_kib_are_refused_both_ways() -> None:
    with pytest.raises(DCUtRError, match="max 4096"):
        decode_message(b"\x08\x64" + b"\x12\x00" * (MAX_MESSAGE_SIZE // 2))
    with pytest.raises(DCUtRError, match="max 4096"):
        encode_message(Message(MessageType.CONNECT, [bytes(1000)] * 5))


# -- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "default", "private"),
    [
        ("/ip4/1.2.3.4/tcp/4001", True, True),
        ("/ip6/2001:4860::1/tcp/4001", True, True),
        ("/ip4/10.0.0.1/tcp/4001", False, True),
        ("/ip4/192.168.1.2/tcp/4001", False, True),
        ("/ip4/100.64.0.1/tcp/4001", False, True),  # CGNAT
        ("/ip4/127.0.0.1/tcp/4001", False, False),
        ("/ip4/0.0.0.0/tcp/4001", False, False),
        ("/ip6/fe80::1/tcp/4001", False, False),
        ("/ip4/1.2.3.4/tcp/0", False, False),
        ("/ip4/1.2.3.4/udp/4001/quic-v1", False, False),  # not our transport
        ("/dns4/example.com/tcp/4001", False, False),
        ("/ip4/1.2.3.4/tcp/4001/p2p/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC", False, False),
        ("/ip4/1.2.3.4/tcp/4001/p2p-circuit", False, False),
    ],
)
def test_which_addresses_a_hole_punch_may_use(addr: str, default: bool, private: bool) -> None:
    assert is_punchable(Multiaddr(addr)) is default
    assert is_punchable(Multiaddr(addr), allow_private=True) is private


def test_parse_addrs_drops_garbage_and_caps_the_count() -> None:
    raw = [b"\xff\x00garbage", PUBLIC.to_bytes(), PUBLIC.to_bytes(), THEIRS.to_bytes()]
    assert parse_addrs(raw) == [PUBLIC, THEIRS]  # deduplicated, garbage dropped
    # js-libp2p sends its addresses with /p2p/<its id>: the dial checks the id anyway
    with_id = Multiaddr(f"{PUBLIC6}/p2p/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC")
    relayed = Multiaddr(f"{PUBLIC}/p2p/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC/p2p-circuit")
    assert parse_addrs([with_id.to_bytes(), relayed.to_bytes()]) == [PUBLIC6]
    many = [Multiaddr(f"/ip4/1.2.3.{i}/tcp/4001").to_bytes() for i in range(1, 200)]
    assert len(parse_addrs(many)) == MAX_ADDRS


def test_predicted_addresses_are_the_observed_ips_with_the_listening_port() -> None:
    observed = [Multiaddr("/ip4/5.6.7.8/tcp/53211"), Multiaddr("/ip6/2001:4860::1/tcp/40000")]
    assert predicted_addrs(observed, [4001, 4001]) == [
        Multiaddr("/ip4/5.6.7.8/tcp/4001"),
        Multiaddr("/ip6/2001:4860::1/tcp/4001"),
    ]
    assert predicted_addrs(observed, []) == []


# -- B: the initiator --------------------------------------------------------------------------


def test_initiator_measures_the_rtt_and_dials_half_of_it_after_sync() -> None:
    b = Initiator([PUBLIC, Multiaddr("/ip4/127.0.0.1/tcp/1")])
    assert b.our_addrs == [PUBLIC]  # loopback is never offered
    assert b.start(10.0) == [Send(connect([PUBLIC]))]
    out = b.on_message(connect([THEIRS]), 10.5)
    assert out == [Send(SYNC), StartTimer(10.75)]
    assert b.rtt == 0.5
    assert b.on_timer(10.75) == [Dial([THEIRS], initiator=False, attempt=1)]
    assert b.on_dial_result(True, 11.0) == [Finished(True, "direct connection", 1)]
    assert b.done


def test_initiator_retries_on_the_same_stream_then_gives_up() -> None:
    b = Initiator([PUBLIC], attempts=3)
    b.start(0.0)
    for attempt in (1, 2, 3):
        b.on_message(connect([THEIRS]), 1.0)
        assert b.on_timer(2.0) == [Dial([THEIRS], initiator=False, attempt=attempt)]
        out = b.on_dial_result(False, 3.0)
        if attempt < 3:
            assert out == [Send(connect([PUBLIC]))]  # a fresh CONNECT: a fresh RTT
    assert out == [Finished(False, "no direct connection after 3 attempts", 3)]


def test_initiator_without_addresses_does_not_start() -> None:
    b = Initiator([Multiaddr("/ip4/192.168.1.2/tcp/4001")])
    assert b.start(0.0) == [Finished(False, "no public address of ours to offer", 0)]


def test_initiator_refuses_a_peer_without_public_addresses_or_out_of_order() -> None:
    b = Initiator([PUBLIC])
    b.start(0.0)
    assert b.on_message(connect([Multiaddr("/ip4/10.0.0.1/tcp/1")]), 1.0) == [
        Finished(False, "the peer offered no public address", 1)
    ]
    b = Initiator([PUBLIC])
    b.start(0.0)
    with pytest.raises(DCUtRError, match="unexpected SYNC"):
        b.on_message(SYNC, 1.0)
    b = Initiator([PUBLIC])
    b.start(0.0)
    assert b.on_closed("stream reset") == [Finished(False, "stream reset", 1)]
    assert b.on_closed("again") == []


# -- A: the responder --------------------------------------------------------------------------


def test_responder_answers_connect_and_dials_on_sync() -> None:
    a = Responder([THEIRS])
    assert a.on_message(connect([PUBLIC]), 0.0) == [Send(connect([THEIRS]))]
    assert a.on_message(SYNC, 0.1) == [Dial([PUBLIC], initiator=True, attempt=1)]
    assert a.on_dial_result(False, 5.0) == []  # B may try again
    a.on_message(connect([PUBLIC]), 5.1)
    a.on_message(SYNC, 5.2)
    assert a.on_dial_result(True, 5.3) == [Finished(True, "direct connection", 2)]


def test_responder_refuses_out_of_order_and_endless_attempts() -> None:
    with pytest.raises(DCUtRError, match="unexpected SYNC"):
        Responder([THEIRS]).on_message(SYNC, 0.0)
    a = Responder([THEIRS])
    a.on_message(connect([PUBLIC]), 0.0)
    with pytest.raises(DCUtRError, match="unexpected CONNECT"):
        a.on_message(connect([PUBLIC]), 0.1)
    a = Responder([THEIRS], attempts=2)
    for _ in range(2):
        a.on_message(connect([PUBLIC]), 0.0)
        a.on_message(SYNC, 0.0)
        a.on_dial_result(False, 0.0)
    assert a.done  # the last failure ends it; a third CONNECT is not awaited
    a = Responder([THEIRS])
    assert a.on_message(connect([]), 0.0) == [
        Finished(False, "the peer offered no public address", 1)
    ]


# -- the service over a relay on loopback -------------------------------------------------------


def bare(listen: list[str]) -> Node:
    return Node(NodeConfig(listen_addrs=listen, enable_dht=False, enable_pubsub=False))


class Relayed:
    """A relay; ``b`` reachable through it (and listening on loopback); ``a`` dials ``b``
    through the relay. Both run the hole punching service with loopback allowed."""

    def __init__(self) -> None:
        self.relay = bare(["/ip4/127.0.0.1/tcp/0"])
        self.a = bare(["/ip4/127.0.0.1/tcp/0"])
        self.b = bare(["/ip4/127.0.0.1/tcp/0"])
        self.relay_service = RelayService(self.relay.host)
        self.circuits = [CircuitTransport(self.a.host), CircuitTransport(self.b.host)]
        self.punch_a = HolePunchService(self.a.host, allow_loopback=True, grace=0.1)
        self.punch_b = HolePunchService(self.b.host, allow_loopback=True, grace=0.1)

    async def __aenter__(self) -> Relayed:
        for node in (self.relay, self.a, self.b):
            await node.start()
        await self.relay_service.start()
        for circuit, node in zip(self.circuits, (self.a, self.b), strict=True):
            node.host.transports.append(circuit)
            await circuit.start()
        await self.b.host.listen(Multiaddr("/p2p-circuit"))
        await self.circuits[1].reserve(self.relay.peer_id, self.relay.p2p_addrs()[0])
        return self

    async def __aexit__(self, *exc: object) -> None:
        for service in (self.punch_a, self.punch_b):
            await service.close()
        for circuit in self.circuits:
            await circuit.close()
        await self.relay_service.close()
        for node in (self.a, self.b, self.relay):
            await node.close()

    def b_via_relay(self) -> Multiaddr:
        return Multiaddr(f"{self.relay.p2p_addrs()[0]}/p2p-circuit/p2p/{self.b.peer_id}")


@pytest.fixture
async def relayed() -> AsyncIterator[Relayed]:
    async with Relayed() as r:
        yield r


async def wait_result(service: HolePunchService) -> HolePunchResult:
    got: asyncio.Future[HolePunchResult] = asyncio.get_running_loop().create_future()
    service.on_result = lambda r: got.done() or got.set_result(r)
    return await asyncio.wait_for(got, 15)


async def test_unilateral_upgrade_then_new_streams_prefer_the_direct_connection(
    relayed: Relayed,
) -> None:
    r = relayed
    await r.punch_a.start()
    await r.punch_b.start()
    result = wait_result(r.punch_b)
    conn = await r.a.host.connect(r.b_via_relay())
    assert is_relayed_connection(conn)
    # b sees an inbound relayed connection; a advertises a (loopback) address: b dials it.
    done = await result
    assert done.success and done.role == "initiator" and done.reason == "unilateral direct dial"
    direct = preferred(r.a.host.connections(r.b.peer_id))
    assert not is_relayed_connection(direct)
    assert (await r.a.host.connect_peer(r.b.peer_id)) is direct
    # the relayed connection is closed after the grace period
    async with asyncio.timeout(5):
        while not conn.is_closed:
            await asyncio.sleep(0.02)
    assert all(not is_relayed_connection(c) for c in r.a.host.connections(r.b.peer_id))


async def test_a_peer_lying_about_its_addresses_leaves_the_relay_in_use(
    relayed: Relayed,
) -> None:
    """b (hand-driven) offers an address nothing listens on: a dials it on SYNC, fails, and
    the relayed connection still carries streams."""
    r = relayed
    await r.punch_a.start()  # only a runs the service; b is played by the test
    result = wait_result(r.punch_a)
    conn = await r.a.host.connect(r.b_via_relay())
    inbound = next(c for c in r.b.host.connections(r.a.peer_id) if is_relayed_connection(c))
    stream = await inbound.new_stream([PROTOCOL])
    nothing = Multiaddr("/ip4/127.0.0.1/tcp/1")
    for _ in range(2):
        await write_length_prefixed(stream, connect([nothing]))
        answer = decode_message(await read_length_prefixed(stream, MAX_MESSAGE_SIZE))
        assert answer.type is MessageType.CONNECT
        assert [Multiaddr(x) for x in answer.addrs] == r.a.host.listen_addrs  # a's own
        await write_length_prefixed(stream, SYNC)
    await stream.close()
    done = await result
    assert not done.success and done.role == "responder" and done.attempts == 2
    assert not conn.is_closed and is_relayed_connection(
        preferred(r.a.host.connections(r.b.peer_id))
    )
    ping = await r.a.ping(r.b.peer_id)
    assert ping >= 0


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        ([b"\x08\x01"], "unknown type"),
        ([SYNC], "unexpected SYNC"),
        ([encode_uvarint(MAX_MESSAGE_SIZE + 1) + bytes(MAX_MESSAGE_SIZE + 1)], "too large"),
    ],
)
async def test_bad_input_resets_the_stream_and_keeps_the_connection(
    relayed: Relayed, frames: list[bytes], why: str
) -> None:
    r = relayed
    await r.punch_a.start()
    result = wait_result(r.punch_a)
    conn = await r.a.host.connect(r.b_via_relay())
    inbound = next(c for c in r.b.host.connections(r.a.peer_id) if is_relayed_connection(c))
    stream = await inbound.new_stream([PROTOCOL])
    for frame in frames:
        if frame.startswith(encode_uvarint(MAX_MESSAGE_SIZE + 1)):
            await stream.write(frame)
        else:
            await write_length_prefixed(stream, frame)
    done = await result
    assert not done.success, why
    with pytest.raises(StreamReset):
        async with asyncio.timeout(5):
            await stream.read()
    assert not conn.is_closed


async def test_dcutr_on_a_direct_connection_is_refused(relayed: Relayed) -> None:
    r = relayed
    await r.punch_a.start()
    await r.b.host.connect(r.a.host.listen_addrs[0], peer=r.a.peer_id)
    with pytest.raises(StreamReset):  # reset at once, maybe before negotiation completes
        async with asyncio.timeout(5):
            stream = await r.b.host.new_stream(r.a.peer_id, PROTOCOL)
            await write_length_prefixed(stream, connect([PUBLIC]))
            await stream.read()
    assert r.punch_a.results == []


# -- the TCP side: listening port reuse, upgrade roles ---------------------------------------


async def test_a_taken_port_is_still_refused_despite_so_reuseport() -> None:
    async def nothing(conn: Any) -> None:
        conn.abort()

    first = await tcp.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), nothing)
    try:
        with pytest.raises(OSError) as err:
            await tcp.listen(first.multiaddrs[0], nothing)
        assert err.value.errno == errno.EADDRINUSE
    finally:
        await first.close()


async def test_a_hole_punch_dial_leaves_from_the_listening_port() -> None:
    accepted: asyncio.Queue[tcp.TcpConnection] = asyncio.Queue()

    async def keep(conn: Any) -> None:
        await accepted.put(conn)

    ours, theirs = tcp.TcpTransport(), tcp.TcpTransport()
    listener = await ours.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), keep)
    other = await theirs.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), keep)
    try:
        (_, port), (_, other_port) = ours.listening_on()[0], theirs.listening_on()[0]
        conn = await ours.dial_from_listen_port(other.multiaddrs[0], timeout=5)
        assert str(conn.local_addr) == f"/ip4/127.0.0.1/tcp/{port}"
        seen = await asyncio.wait_for(accepted.get(), 5)
        assert str(seen.remote_addr) == f"/ip4/127.0.0.1/tcp/{port}"
        # the listener on that port still accepts
        back = await tcp.dial(listener.multiaddrs[0], timeout=5)
        assert str((await asyncio.wait_for(accepted.get(), 5)).local_addr).endswith(f"/{port}")
        for c in (conn, seen, back):
            c.abort()
        assert other_port != port
    finally:
        await listener.close()
        await other.close()
        assert ours.listening_on() == []


async def test_upgrade_dialled_takes_the_role_it_is_given() -> None:
    """The side dialled to accepts as usual (responder); the dialling side is told it is the
    initiator: as on a hole-punched connection where DCUtR fixed the roles."""
    a, b = bare(["/ip4/127.0.0.1/tcp/0"]), bare(["/ip4/127.0.0.1/tcp/0"])
    async with a, b:
        transport = next(t for t in a.host.transports if isinstance(t, tcp.TcpTransport))
        raw = await transport.dial_from_listen_port(b.host.listen_addrs[0], timeout=5)
        with pytest.raises(P2PError):  # not who we expected: dropped
            await a.host.upgrade_dialled(raw, a.peer_id, initiator=True)
        raw = await transport.dial_from_listen_port(b.host.listen_addrs[0], timeout=5)
        conn = await a.host.upgrade_dialled(raw, b.peer_id, initiator=True)
        assert conn.direction is Direction.OUTBOUND
        assert a.host.connections(b.peer_id) == [conn]
        assert await a.ping(b.peer_id) >= 0
