"""Circuit relay v2: reservations with limits, relayed connections carrying Noise and yamux end
to end through the host's upgrader, refusals, bad input (p2pnet/relay/)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from multiaddr import Multiaddr

from p2pnet.config import NodeConfig
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.errors import DialError, StreamReset
from p2pnet.host.addresses import is_relayed
from p2pnet.node import Node
from p2pnet.peer.peer_id import PeerID
from p2pnet.protocols.identify import IdentifyInfo
from p2pnet.relay.messages import (
    HOP_PROTOCOL,
    HopMessage,
    HopType,
    Limit,
    RelayProtocolError,
    RelayRefused,
    RelayStatus,
    Reservation,
    StopMessage,
    StopType,
    decode_hop,
    decode_stop,
    encode_hop,
    encode_stop,
    make_voucher,
    verify_voucher,
)
from p2pnet.relay.reservations import RelayLimits, RelayTable
from p2pnet.relay.service import RelayService
from p2pnet.relay.transport import CircuitTransport
from p2pnet.resources import ResourceLimits, ResourceManager
from p2pnet.resources.limits import RELAY_HOP_PROTOCOL
from p2pnet.stream import Stream
from p2pnet.wire.framing import read_length_prefixed, write_length_prefixed
from p2pnet.wire.varint import encode_uvarint

ECHO = "/test/echo/1.0.0"


def bare(listen: list[str] | None = None) -> Node:
    return Node(
        NodeConfig(
            listen_addrs=["/ip4/127.0.0.1/tcp/0"] if listen is None else listen,
            enable_dht=False,
            enable_pubsub=False,
        )
    )


async def with_circuit(node: Node, *, listen: bool) -> CircuitTransport:
    transport = CircuitTransport(node.host)
    node.host.transports.append(transport)
    await transport.start()
    if listen:
        await node.host.listen(Multiaddr("/p2p-circuit"))
    return transport


async def echo(stream: Stream) -> None:
    async with stream:
        while data := await stream.read():
            await stream.write(data)


class Trio:
    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.relay = bare()
        self.private = bare([])  # no listener of its own: reachable only through the relay
        self.dialer = bare()
        self.service = RelayService(self.relay.host, limits)

    async def __aenter__(self) -> Trio:
        for node in (self.relay, self.private, self.dialer):
            await node.start()
        await self.service.start()
        self.private_circuit = await with_circuit(self.private, listen=True)
        self.dialer_circuit = await with_circuit(self.dialer, listen=False)
        self.private.set_stream_handler(ECHO, echo)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.service.close()
        await self.private_circuit.close()
        await self.dialer_circuit.close()
        for node in (self.dialer, self.private, self.relay):
            await node.close()

    def circuit_addr(self) -> Multiaddr:
        return self.private.host.advertised_addrs[0].encapsulate(
            Multiaddr(f"/p2p/{self.private.peer_id}")
        )


@pytest.fixture
async def trio() -> AsyncIterator[Trio]:
    async with Trio() as t:
        yield t


async def test_reserve_then_dial_through_the_relay_end_to_end(trio: Trio) -> None:
    relay_addr = trio.relay.p2p_addrs()[0]
    pushed = asyncio.Event()

    def on_identified(info: IdentifyInfo) -> None:
        if info.push and any(is_relayed(a) for a in info.listen_addrs):
            pushed.set()

    trio.relay.identify_service.on_identified(on_identified)
    info = await trio.private_circuit.reserve(trio.relay.peer_id, relay_addr)
    await asyncio.wait_for(pushed.wait(), 5)  # identify push of the new relayed address
    assert info.limit == Limit(120, 1 << 20)
    assert trio.service.table.reservations == 1
    advertised = [str(a) for a in trio.private.host.advertised_addrs]
    assert advertised == [f"{relay_addr}/p2p-circuit"]

    conn = await trio.dialer.connect(trio.circuit_addr())
    assert conn == trio.private.peer_id
    (relayed,) = trio.dialer.host.connections(trio.private.peer_id)
    assert is_relayed(relayed.remote_addr) and relayed.security == "/noise"
    assert relayed.muxer == "/yamux/1.0.0"
    assert await trio.dialer.ping(trio.private.peer_id) > 0
    info_back = await trio.dialer.identify(trio.private.peer_id)
    assert any(is_relayed(a) for a in info_back.listen_addrs)

    # Bytes go both ways, encrypted: the relay never sees the plaintext.
    payload = b"secret-marker-" * 5000
    stream = await trio.dialer.new_stream(trio.private.peer_id, ECHO)
    await stream.write(payload)
    await stream.close()
    got = b""
    while chunk := await stream.read():
        got += chunk
    assert got == payload
    assert trio.service.bytes_relayed > 2 * len(payload)

    # The private side sees an inbound relayed connection from the dialer.
    (inbound,) = trio.private.host.connections(trio.dialer.peer_id)
    assert is_relayed(inbound.remote_addr) and str(inbound.remote_addr).endswith(
        f"/p2p-circuit/p2p/{trio.dialer.peer_id}"
    )


async def test_dial_without_reservation_is_refused(trio: Trio) -> None:
    await trio.private.connect(trio.relay.p2p_addrs()[0])  # connected, but no reservation
    addr = trio.relay.p2p_addrs()[0].encapsulate(
        Multiaddr(f"/p2p-circuit/p2p/{trio.private.peer_id}")
    )
    with pytest.raises(DialError, match="NO_RESERVATION"):
        await trio.dialer.connect(addr)
    assert trio.service.table.circuits == 0


async def test_reservation_ends_with_the_connection_to_the_relay(trio: Trio) -> None:
    changed = asyncio.Event()
    trio.private_circuit.on_addrs_changed = changed.set
    await trio.private_circuit.reserve(trio.relay.peer_id, trio.relay.p2p_addrs()[0])
    assert changed.is_set()
    changed.clear()
    await trio.private.disconnect(trio.relay.peer_id)
    await asyncio.wait_for(changed.wait(), 5)
    assert trio.private.host.advertised_addrs == []
    async with asyncio.timeout(5):
        while trio.service.table.reservations:  # the relay's side, on its ConnectionEnded
            await asyncio.sleep(0.01)


async def test_data_limit_ends_the_circuit() -> None:
    async with Trio(RelayLimits(data=64 * 1024)) as trio:
        await trio.private_circuit.reserve(trio.relay.peer_id, trio.relay.p2p_addrs()[0])
        await trio.dialer.connect(trio.circuit_addr())
        (conn,) = trio.dialer.host.connections(trio.private.peer_id)
        stream = await trio.dialer.new_stream(trio.private.peer_id, ECHO)
        with pytest.raises(Exception):  # noqa: B017 - reset or closed, either ends it
            async with asyncio.timeout(10):
                for _ in range(64):
                    await stream.write(b"x" * 8192)
                    await stream.read(8192)
        await asyncio.wait_for(conn.muxed.wait_closed(), 10)
        async with asyncio.timeout(5):
            while trio.service.table.circuits:
                await asyncio.sleep(0.01)


async def test_reservations_are_limited_per_ip() -> None:
    async with Trio(RelayLimits(max_reservations_per_ip=1)) as trio:
        await trio.private_circuit.reserve(trio.relay.peer_id, trio.relay.p2p_addrs()[0])
        with pytest.raises(RelayRefused, match="RESERVATION_REFUSED"):
            await trio.dialer_circuit.reserve(trio.relay.peer_id, trio.relay.p2p_addrs()[0])
        assert trio.relay.host.resources.refused["relay_ip/reservations"] == 1
        assert trio.service.refused == {"RESERVATION_REFUSED": 1}
        # A renewal of the existing reservation is still granted.
        await trio.private_circuit.reserve(trio.relay.peer_id)


async def test_malformed_and_oversized_hop_messages(trio: Trio) -> None:
    relay = trio.relay.peer_id
    await trio.dialer.connect(trio.relay.p2p_addrs()[0])

    stream = await trio.dialer.new_stream(relay, HOP_PROTOCOL)
    await write_length_prefixed(stream, b"\xff\xff\xff")
    answer = decode_hop(await read_length_prefixed(stream, 4096))
    assert answer.type is HopType.STATUS and answer.status == RelayStatus.MALFORMED_MESSAGE
    assert await stream.read() == b""

    stream = await trio.dialer.new_stream(relay, HOP_PROTOCOL)
    await write_length_prefixed(stream, encode_hop(HopMessage(HopType.STATUS)))
    answer = decode_hop(await read_length_prefixed(stream, 4096))
    assert answer.status == RelayStatus.UNEXPECTED_MESSAGE

    stream = await trio.dialer.new_stream(relay, HOP_PROTOCOL)
    await stream.write(encode_uvarint(1 << 20))  # a 1 MiB frame is refused from its prefix
    with pytest.raises(Exception):  # noqa: B017 - reset by the relay
        async with asyncio.timeout(5):
            await read_length_prefixed(stream, 4096)
    # The relay still works after all that.
    await trio.private_circuit.reserve(relay, trio.relay.p2p_addrs()[0])
    assert await trio.dialer.connect(trio.circuit_addr()) == trio.private.peer_id


def test_messages_roundtrip_and_reject_garbage() -> None:
    key = KeyPair.generate(KeyType.Ed25519)
    peer = PeerID.from_public_key(KeyPair.generate(KeyType.Ed25519).public_key)
    relay = PeerID.from_public_key(key.public_key)
    voucher = make_voucher(key, peer, 1234)
    msg = HopMessage(
        HopType.STATUS,
        status=RelayStatus.OK,
        reservation=Reservation(1234, [Multiaddr("/ip4/1.2.3.4/tcp/1")], voucher),
        limit=Limit(60, 4096),
    )
    back = decode_hop(encode_hop(msg))
    assert back == msg
    assert verify_voucher(voucher, relay, peer) == 1234
    with pytest.raises(RelayProtocolError):
        verify_voucher(voucher, peer, relay)
    with pytest.raises(RelayProtocolError):
        verify_voucher(voucher[:-1] + bytes([voucher[-1] ^ 1]), relay, peer)
    stop = StopMessage(StopType.CONNECT, peer=peer, limit=Limit(0, 10))
    assert decode_stop(encode_stop(stop)) == stop
    # no type, a bad peer ID, not protobuf, oversized; then an unknown type of each kind
    for bad in (b"", b"\x08\x01\x12\x03\x0a\x01\x00", b"\xff", b"\x00" * 5000):
        for decode in (decode_hop, decode_stop):
            with pytest.raises(RelayProtocolError):
                decode(bad)
    for decode, bad in ((decode_hop, b"\x08\x07"), (decode_stop, b"\x08\x05")):
        with pytest.raises(RelayProtocolError):
            decode(bad)
    # An unknown status (a closed proto2 enum) reads as absent, which no one takes for OK.
    assert decode_hop(b"\x08\x02\x28\xe7\x07").status is None


def test_relay_table_decisions() -> None:
    a, b, c = (PeerID.from_public_key(KeyPair.generate(KeyType.Ed25519).public_key) for _ in "abc")
    limits = RelayLimits(reservation_ttl=10, max_reservations=1, max_circuits_per_peer=1)
    table = RelayTable(limits)
    refused = table.scopes.manager.refused
    assert table.reserve(a, "10.0.0.1", 100.0) == (RelayStatus.OK, 110)
    assert table.reserve(b, "10.0.0.2", 100.0)[0] is RelayStatus.RESERVATION_REFUSED
    assert refused["relay/reservations"] == 1
    assert table.open_circuit(c, b, 100.0) == (RelayStatus.NO_RESERVATION, None)
    status, circuit = table.open_circuit(c, a, 100.0)
    assert status is RelayStatus.OK and circuit is not None
    assert table.open_circuit(b, a, 100.0) == (RelayStatus.RESOURCE_LIMIT_EXCEEDED, None)
    assert refused["relay_peer/circuits"] == 1
    # the copy buffers count against both ends' peer scopes, the relay scope and the system
    manager = table.scopes.manager
    assert manager.peer_usage(a)["memory"] == limits.buffer
    assert manager.peer_usage(c)["memory"] == limits.buffer
    assert table.scopes.memory == 2 * limits.buffer == manager.system.used("memory")
    circuit.done()
    circuit.done()  # idempotent
    assert manager.peer_usage(a) == manager.peer_usage(c) == {}
    assert table.scopes.memory == manager.system.used("memory") == 0
    status, circuit = table.open_circuit(b, a, 100.0)
    assert status is RelayStatus.OK and circuit is not None
    circuit.done()
    assert not table.has_reservation(a, 110.0)  # expired
    assert table.reserve(b, "10.0.0.2", 111.0)[0] is RelayStatus.OK  # room again
    assert table.scopes.stat()["reservations"] == 1
    table.clear()
    assert table.scopes.stat() == {
        "reservations": 0,
        "circuits": 0,
        "memory": 0,
        "peers": 0,
        "ips": 0,
    }


def test_relay_reservations_per_ip_and_renewals_from_another_address() -> None:
    a, b, c = (PeerID.from_public_key(KeyPair.generate(KeyType.Ed25519).public_key) for _ in "abc")
    table = RelayTable(RelayLimits(max_reservations_per_ip=1))
    refused = table.scopes.manager.refused
    assert table.reserve(a, "10.0.0.1", 0.0)[0] is RelayStatus.OK
    assert table.reserve(b, "10.0.0.1", 0.0)[0] is RelayStatus.RESERVATION_REFUSED
    assert refused["relay_ip/reservations"] == 1
    assert table.reserve(b, "10.0.0.2", 0.0)[0] is RelayStatus.OK
    # a renewal from an address at its limit is refused, and the old one is kept
    assert table.reserve(a, "10.0.0.2", 1.0)[0] is RelayStatus.RESERVATION_REFUSED
    assert table.has_reservation(a, 1.0)
    # from a free address it moves there
    assert table.reserve(a, "10.0.0.3", 1.0)[0] is RelayStatus.OK
    assert table.reserve(c, "10.0.0.1", 1.0)[0] is RelayStatus.OK
    assert table.reservations == 3


def test_relay_buffers_refused_by_a_peer_at_its_memory_limit() -> None:
    """A circuit whose copy buffer does not fit in an end's peer scope is refused, and leaves
    nothing counted."""
    a, c = (PeerID.from_public_key(KeyPair.generate(KeyType.Ed25519).public_key) for _ in "ac")
    limits = RelayLimits()
    manager = ResourceManager(ResourceLimits(peer_memory=limits.buffer, relay=limits))
    table = RelayTable(limits, manager)
    assert table.reserve(a, "10.0.0.1", 0.0)[0] is RelayStatus.OK
    manager.reserve([manager.peer_scope(c)], "memory", 1)  # c already holds a byte
    assert table.open_circuit(c, a, 0.0) == (RelayStatus.RESOURCE_LIMIT_EXCEEDED, None)
    assert manager.refused["peer/memory"] == 1
    assert table.circuits == 0 and table.scopes.memory == 0
    assert manager.peer_usage(a) == {} and manager.peer_usage(c) == {"memory": 1}


async def test_relay_counts_in_the_hosts_resource_manager_and_refuses_extra_circuits() -> None:
    """Limits from ``ResourceLimits.relay``: a second circuit to a peer at its circuit limit is
    answered RESOURCE_LIMIT_EXCEEDED and counted; the circuit's buffers count against both ends
    while it lasts and are given back when it closes."""
    limits = RelayLimits(max_circuits_per_peer=1)
    async with Trio() as trio:
        # the relay's limits come from its host's resource limits unless given
        trio.relay.host.resources.limits.relay = limits
        service = RelayService(trio.relay.host)
        assert service.table.limits is limits
        await trio.service.close()
        trio.service = service
        await service.start()
        resources = trio.relay.host.resources
        await trio.private_circuit.reserve(trio.relay.peer_id, trio.relay.p2p_addrs()[0])
        assert resources.stat()["relay"] == {"reservations": 1}
        await trio.dialer.connect(trio.circuit_addr())
        assert resources.stat()["relay"] == {
            "reservations": 1,
            "circuits": 1,
            "memory": 2 * limits.buffer,
        }
        assert resources.peer_usage(trio.private.peer_id)["memory"] >= limits.buffer
        assert resources.peer_usage(trio.dialer.peer_id)["memory"] >= limits.buffer

        third = bare()
        async with third:
            await third.connect(trio.relay.p2p_addrs()[0])
            stream = await third.host.new_stream(trio.relay.peer_id, HOP_PROTOCOL)
            connect = HopMessage(HopType.CONNECT, peer=trio.private.peer_id)
            await write_length_prefixed(stream, encode_hop(connect))
            answer = decode_hop(await read_length_prefixed(stream, 4096))
            assert answer.status == RelayStatus.RESOURCE_LIMIT_EXCEEDED
            assert resources.refused["relay_peer/circuits"] == 1
            assert service.refused == {"RESOURCE_LIMIT_EXCEEDED": 1}

        # the dialer leaves the relay: its hop stream is reset and the circuit ends
        await trio.dialer.disconnect(trio.relay.peer_id)
        async with asyncio.timeout(5):
            while trio.service.table.circuits:
                await asyncio.sleep(0.01)
        assert resources.stat()["relay"] == {"reservations": 1}
        assert resources.peer_usage(trio.dialer.peer_id).get("memory", 0) == 0


async def test_a_direct_address_is_preferred_over_the_relay(trio: Trio) -> None:
    """A peer known by a relayed and a direct address: the direct one is dialled first and the
    relay is never asked (relayed addresses start only RELAY_DELAY after the direct ones);
    with the direct address dead, the relay is used at once."""
    await trio.private_circuit.reserve(trio.relay.peer_id, trio.relay.p2p_addrs()[0])
    (direct,) = await trio.private.host.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"))
    relayed = trio.relay.p2p_addrs()[0].encapsulate(Multiaddr("/p2p-circuit"))
    dialer = trio.dialer.host
    dialer.peerstore.add_addrs(trio.private.peer_id, [relayed, direct], 60)
    attempts = dialer.dial_attempts
    conn = await dialer.connect_peer(trio.private.peer_id)
    assert conn.remote_addr == direct and not is_relayed(conn.remote_addr)
    assert dialer.dial_attempts == attempts + 1  # the relayed address was never tried
    assert trio.service.table.circuits == 0 and trio.service.bytes_relayed == 0

    await dialer.disconnect(trio.private.peer_id)
    async with asyncio.timeout(5):
        while dialer.is_connected(trio.private.peer_id):
            await asyncio.sleep(0.01)
    await trio.private.host._listeners[-1].close()  # the direct address is dead now
    conn = await dialer.connect_peer(trio.private.peer_id)
    assert is_relayed(conn.remote_addr)


def test_hop_stream_limits_follow_the_relay_limits() -> None:
    assert RELAY_HOP_PROTOCOL == HOP_PROTOCOL
    limits = ResourceLimits(relay=RelayLimits(max_circuits_per_peer=40))
    hop = limits.protocol(HOP_PROTOCOL)
    assert hop.streams_inbound_per_peer == 44  # a stream per circuit, a few for reservations
    assert hop.streams_inbound == limits.relay.max_circuits + limits.relay.max_reservations
    assert ResourceLimits().protocol(HOP_PROTOCOL).streams_inbound_per_peer == 20


async def test_hop_streams_beyond_the_per_peer_limit_are_reset(trio: Trio) -> None:
    """A peer that opens hop streams and never sends a message holds at most the per-peer hop
    limit of them; the next is reset after negotiation."""
    per_peer = trio.relay.host.resources.limits.protocol(HOP_PROTOCOL).streams_inbound_per_peer
    await trio.dialer.connect(trio.relay.p2p_addrs()[0])
    held = [
        await trio.dialer.host.new_stream(trio.relay.peer_id, HOP_PROTOCOL) for _ in range(per_peer)
    ]
    refused_before = trio.relay.host.resources.refused["protocol_peer/streams_inbound"]
    with pytest.raises(StreamReset):  # at once, or on the first read
        async with asyncio.timeout(5):
            extra = await trio.dialer.host.new_stream(trio.relay.peer_id, HOP_PROTOCOL)
            await extra.read()
    refused = trio.relay.host.resources.refused["protocol_peer/streams_inbound"]
    assert refused == refused_before + 1
    for stream in held:
        await stream.reset()


async def test_circuit_ends_when_its_ends_close_an_idle_relayed_connection(trio: Trio) -> None:
    """The dialer closes a relayed connection that sat idle: the listener's side sees EOF and
    ends its half of the stream too, so the relay's circuit (and what it holds) ends at once,
    not at the duration limit. (The listener's channel used to drop the connection without
    closing the stream below when the muxer closed it from ``connection_lost``.)"""
    await trio.private_circuit.reserve(trio.relay.peer_id, trio.relay.p2p_addrs()[0])
    await trio.dialer.connect(trio.circuit_addr())
    assert trio.service.table.circuits == 1
    # the scenario is the idle period itself (identify done both ways), not a wait for an event
    await asyncio.sleep(0.6)
    await trio.dialer.disconnect(trio.private.peer_id)
    async with asyncio.timeout(5):
        while trio.service.table.circuits:
            await asyncio.sleep(0.01)
    assert trio.private.host.connections(trio.dialer.peer_id) == []
