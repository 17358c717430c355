"""p2pnet against a real js-libp2p peer: TCP + Noise + yamux, identify, ping, echo streams.

Every test runs in both directions (p2pnet dials js, js dials p2pnet) and with an Ed25519 and a
secp256k1 identity on our side.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from multiaddr import Multiaddr

from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.host.connection import Connection
from p2pnet.host.host import Host
from p2pnet.mux.yamux_connection import YamuxStream
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.record import SIGNED_PEER_RECORD, verify_peer_record
from p2pnet.protocols.identify import IdentifyService
from p2pnet.protocols.ping import PingService

from .jspeer import JsPeer, JsPeerFactory

ECHO = "/p2pnet/echo/1.0.0"


@dataclass
class PyNode:
    host: Host
    identify: IdentifyService
    ping: PingService


async def _echo(stream: YamuxStream) -> None:
    async with stream:
        while data := await stream.read():
            await stream.write(data)


@pytest.fixture(params=["ed25519", "secp256k1"])
async def py_node(request: pytest.FixtureRequest) -> AsyncIterator[PyNode]:
    key_type = KeyType.Ed25519 if request.param == "ed25519" else KeyType.Secp256k1
    host = Host(KeyPair.generate(key_type))
    node = PyNode(host, IdentifyService(host), PingService(host))
    host.set_stream_handler(ECHO, _echo)
    async with host:
        yield node


@pytest.fixture(params=["py_dials_js", "js_dials_py"])
def direction(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _wait_connected(host: Host, peer: PeerID, timeout: float = 10.0) -> Connection:
    async with asyncio.timeout(timeout):
        while not host.is_connected(peer):
            await asyncio.sleep(0.01)
    return host.connections(peer)[0]


async def _connect(node: PyNode, js: JsPeer, direction: str) -> Connection:
    js_id = PeerID.from_string(js.peer_id)
    if direction == "py_dials_js":
        conn = await node.host.connect(js.addrs[0])
        assert conn.remote_peer == js_id
        return conn
    res = await js.command("dial", addr=str(node.host.p2p_addrs()[0]))
    assert res["peerId"] == str(node.host.peer_id)
    assert res["encryption"] == "/noise"
    assert res["multiplexer"] == "/yamux/1.0.0"
    return await _wait_connected(node.host, js_id)


async def test_connect(py_node: PyNode, js_peer: JsPeer, direction: str) -> None:
    conn = await _connect(py_node, js_peer, direction)
    assert str(conn.remote_peer) == js_peer.peer_id
    js_conns = (await js_peer.command("connections"))["connections"]
    assert [c["peerId"] for c in js_conns] == [str(py_node.host.peer_id)]
    assert js_conns[0]["direction"] == ("inbound" if direction == "py_dials_js" else "outbound")


async def test_ping_both_ways(py_node: PyNode, js_peer: JsPeer, direction: str) -> None:
    conn = await _connect(py_node, js_peer, direction)
    rtts = await py_node.ping.ping(conn.remote_peer, count=3)
    assert len(rtts) == 3 and all(0 < r < 5 for r in rtts)
    res = await js_peer.command("ping", peerId=str(py_node.host.peer_id))
    assert 0 <= res["rtt"] < 5000


async def test_identify_both_ways(py_node: PyNode, js_peer: JsPeer, direction: str) -> None:
    conn = await _connect(py_node, js_peer, direction)
    js_id = conn.remote_peer
    # What we learned about js.
    await py_node.identify.wait_identified(js_id, timeout=10)
    store = py_node.host.peerstore
    protos = store.get_protocols(js_id)
    for p in ("/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", ECHO):
        assert p in protos
    js_listen = {str(Multiaddr(a).decapsulate(Multiaddr(f"/p2p/{js_id}"))) for a in js_peer.addrs}
    assert js_listen <= {str(a) for a in store.addrs(js_id)}
    assert str(store.agent_version(js_id)).startswith("js-libp2p/")
    assert store.pubkey(js_id) is not None
    # What js learned about us.
    info = await js_peer.command("peer_info", peerId=str(py_node.host.peer_id), wait_identify=True)
    for p in ("/ipfs/id/1.0.0", "/ipfs/id/push/1.0.0", "/ipfs/ping/1.0.0", ECHO):
        assert p in info["protocols"]
    ours = {str(a) for a in py_node.host.listen_addrs}
    assert ours <= {a.split("/p2p/")[0] for a in info["addrs"]}
    assert info["agentVersion"] == py_node.host.config.agent_version
    # Signed peer records both ways: js verified ours, we verified js's.
    assert info["hasPeerRecord"] is True
    assert ours <= {a.split("/p2p/")[0] for a in info["certifiedAddrs"]}
    record = store.get_metadata(js_id, SIGNED_PEER_RECORD)
    assert isinstance(record, bytes)
    _, addrs = verify_peer_record(record, js_id)
    assert {str(a) for a in addrs} >= js_listen


async def test_identify_push_reaches_js(py_node: PyNode, js_peer: JsPeer, direction: str) -> None:
    await _connect(py_node, js_peer, direction)
    me = str(py_node.host.peer_id)
    await js_peer.command("peer_info", peerId=me, wait_identify=True)

    async def handler(stream: YamuxStream) -> None:
        await stream.close()

    py_node.host.set_stream_handler("/p2pnet/late/1.0.0", handler)
    async with asyncio.timeout(10):
        while True:
            info = await js_peer.command("peer_info", peerId=me)
            if "/p2pnet/late/1.0.0" in info["protocols"]:
                break
            await asyncio.sleep(0.05)


async def _echo_from_py(host: Host, peer: PeerID, size: int, streams: int) -> None:
    async def one(i: int) -> None:
        payload = os.urandom(size)
        stream = await host.new_stream(peer, [ECHO])
        async with stream:
            await stream.write(payload)
            await stream.close()
            got = await asyncio.wait_for(stream.readexactly(size), 30)
            assert got == payload, f"stream {i}: echoed bytes differ"
            assert await stream.read() == b""

    await asyncio.gather(*(one(i) for i in range(streams)))


@pytest.mark.parametrize(("size", "streams"), [(1 << 20, 1), (10 * 1024, 100)])
async def test_echo_both_ways(
    py_node: PyNode, js_peer: JsPeer, direction: str, size: int, streams: int
) -> None:
    conn = await _connect(py_node, js_peer, direction)
    # p2pnet opens the streams, js echoes.
    await _echo_from_py(py_node.host, conn.remote_peer, size, streams)
    # js opens the streams, p2pnet echoes; js compares the bytes.
    res = await js_peer.command(
        "echo", peerId=str(py_node.host.peer_id), size=size, streams=streams, timeout=60
    )
    assert res["bytesEchoed"] == size * streams
    assert len(py_node.host.connections(conn.remote_peer)) == 1


async def test_noise_rejects_wrong_peer_id(py_node: PyNode, js_peer_factory: JsPeerFactory) -> None:
    """Dialing js's address with another peer's /p2p/ID fails with PeerIDMismatch."""
    from p2pnet.errors import DialError, PeerIDMismatch

    js = await js_peer_factory()
    other = PeerID.from_public_key(KeyPair.generate().public_key)
    addr = js.addrs[0].split("/p2p/")[0] + f"/p2p/{other}"
    with pytest.raises((PeerIDMismatch, DialError)) as info:
        await py_node.host.connect(addr)
    assert str(other) in str(info.value)
    assert not py_node.host.connections()
