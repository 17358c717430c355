"""Circuit relay v2 against js-libp2p's @libp2p/circuit-relay-v2 (pinned in package.json):
a js relay serving p2pnet peers, and a p2pnet relay serving js peers. The relayed connections
carry Noise and yamux end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from multiaddr import Multiaddr

from p2pnet.config import NodeConfig
from p2pnet.host.addresses import is_relayed
from p2pnet.node import Node
from p2pnet.peer.peer_id import PeerID
from p2pnet.relay.service import RelayService
from p2pnet.relay.transport import CircuitTransport
from p2pnet.stream import Stream

from .jspeer import JsPeerFactory

ECHO = "/p2pnet/echo/1.0.0"


async def _echo(stream: Stream) -> None:
    async with stream:
        while data := await stream.read():
            await stream.write(data)


def _node(listen: bool = True) -> Node:
    return Node(
        NodeConfig(
            listen_addrs=["/ip4/127.0.0.1/tcp/0"] if listen else [],
            enable_dht=False,
            enable_pubsub=False,
        )
    )


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    made: list[Node] = []
    try:
        yield made
    finally:
        for node in reversed(made):
            await node.close()


async def _start(
    nodes: list[Node], *, listen: bool, circuit_listen: bool
) -> tuple[Node, CircuitTransport]:
    node = _node(listen)
    nodes.append(node)
    await node.start()
    transport = CircuitTransport(node.host)
    node.host.transports.append(transport)
    await transport.start()
    if circuit_listen:
        await node.host.listen(Multiaddr("/p2p-circuit"))
    node.set_stream_handler(ECHO, _echo)
    return node, transport


async def test_js_relay_serves_p2pnet_peers(
    js_peer_factory: JsPeerFactory, nodes: list[Node]
) -> None:
    relay = await js_peer_factory(options={"modules": ["relay"], "relay": {"server": True}})
    private, private_circuit = await _start(nodes, listen=False, circuit_listen=True)
    dialer, _ = await _start(nodes, listen=True, circuit_listen=False)

    relay_addr = Multiaddr(relay.addr)
    info = await private_circuit.reserve(
        PeerID.from_string(relay.peer_id), relay_addr
    )  # voucher checked
    assert info.limit is not None and info.limit.duration > 0  # js applies its default limits
    reserved = await relay.command("relay_reservations")
    assert reserved["peers"] == [str(private.peer_id)]

    target = private.host.advertised_addrs[0].encapsulate(Multiaddr(f"/p2p/{private.peer_id}"))
    assert is_relayed(target)
    assert await dialer.connect(target) == private.peer_id
    assert await dialer.ping(private.peer_id) > 0
    stream = await dialer.new_stream(private.peer_id, ECHO)
    payload = bytes(range(256)) * 64  # 16 KiB: within js's default data limit
    await stream.write(payload)
    await stream.close()
    got = b""
    while chunk := await stream.read():
        got += chunk
    assert got == payload
    (conn,) = dialer.host.connections(private.peer_id)
    assert conn.security == "/noise" and conn.muxer == "/yamux/1.0.0"

    # A js peer dials our private node through the js relay too.
    js_dialer = await js_peer_factory(options={"modules": ["relay"]})
    echoed = await js_dialer.command("relay_echo", addr=str(target), size=4096)
    assert echoed["bytes"] == 4096 and echoed["limited"] is True


async def test_p2pnet_relay_serves_js_peers(
    js_peer_factory: JsPeerFactory, nodes: list[Node]
) -> None:
    relay, _ = await _start(nodes, listen=True, circuit_listen=False)
    service = RelayService(relay.host)
    await service.start()
    try:
        js_private = await js_peer_factory(options={"modules": ["relay"]})
        relay_addr = str(relay.p2p_addrs()[0])
        listened = await js_private.command("relay_listen", addr=relay_addr)
        assert listened["addrs"] and all("/p2p-circuit" in a for a in listened["addrs"])
        assert service.table.reservations == 1

        target = f"{relay_addr}/p2p-circuit/p2p/{js_private.peer_id}"
        # a p2pnet peer reaches the js peer through our relay
        dialer, _ = await _start(nodes, listen=True, circuit_listen=False)
        js_id = PeerID.from_string(js_private.peer_id)
        assert await dialer.connect(target) == js_id
        stream = await dialer.new_stream(js_id, ECHO)
        await stream.write(b"through a p2pnet relay")
        await stream.close()
        assert await stream.read() == b"through a p2pnet relay"

        # and another js peer does too
        js_dialer = await js_peer_factory(options={"modules": ["relay"]})
        echoed = await js_dialer.command("relay_echo", addr=target, size=8192)
        assert echoed["bytes"] == 8192 and echoed["limited"] is True
        assert service.bytes_relayed > 8192 * 2
    finally:
        await service.close()
