"""AutoNAT v2: dial-request / dial-back on loopback, the amplification guard, refusals, lying
servers and malformed messages (p2pnet/autonat/)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from multiaddr import Multiaddr
from test_p2p_node import free_port

from p2pnet.autonat import AutoNATClient, AutoNATServer
from p2pnet.autonat.messages import (
    DIAL_DATA_BYTES,
    DIAL_REQUEST_PROTOCOL,
    AutoNATError,
    needs_dial_data,
    select_address,
)
from p2pnet.config import NodeConfig
from p2pnet.node import Node
from p2pnet.stream import Stream
from p2pnet.wire.framing import read_length_prefixed, write_length_prefixed
from p2pnet.wire.pb import autonat_v2_pb2 as pb


def bare(listen: list[str] | None = None) -> Node:
    return Node(
        NodeConfig(
            listen_addrs=listen or ["/ip4/127.0.0.1/tcp/0"], enable_dht=False, enable_pubsub=False
        )
    )


class Pair:
    def __init__(self, *, allow_private: bool = True) -> None:
        self.server = bare()
        self.client = bare(["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.2/tcp/0"])
        self.autonat = AutoNATServer(self.server.host, allow_private=allow_private)
        self.asker = AutoNATClient(self.client.host)

    async def __aenter__(self) -> Pair:
        await self.server.start()
        await self.client.start()
        await self.autonat.start()
        await self.asker.start()
        await self.client.connect(self.server.p2p_addrs()[0])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.server.close()


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    async with Pair() as p:
        yield p


async def test_reachable_address_is_confirmed_by_a_dial_back(pair: Pair) -> None:
    addr = pair.client.listen_addrs[0]  # 127.0.0.1: the IP the request comes from
    result = await pair.asker.check(pair.server.peer_id, [addr])
    assert (result.reachable, result.status, result.addr) == (True, "OK", addr)
    assert result.dial_data_sent == 0 and pair.autonat.dial_backs == 1
    # The dial-back came on a new connection from another peer ID, now gone again.
    assert pair.client.peers() == [pair.server.peer_id]


async def test_unreachable_address(pair: Pair) -> None:
    closed = Multiaddr(f"/ip4/127.0.0.1/tcp/{free_port()}")
    result = await pair.asker.check(pair.server.peer_id, [closed])
    assert (result.reachable, result.status) == (False, "E_DIAL_ERROR")


async def test_another_ip_costs_dial_data_first(pair: Pair) -> None:
    other = pair.client.listen_addrs[1]  # 127.0.0.2: not where the request came from
    assert needs_dial_data(other, Multiaddr("/ip4/127.0.0.1/tcp/1"))
    result = await pair.asker.check(pair.server.peer_id, [other])
    assert result.reachable is True and result.dial_data_sent >= DIAL_DATA_BYTES
    assert pair.autonat.dial_data_received >= DIAL_DATA_BYTES


async def test_public_server_refuses_private_addresses() -> None:
    async with Pair(allow_private=False) as pair:
        result = await pair.asker.check(pair.server.peer_id, pair.client.listen_addrs)
        assert (result.reachable, result.status) == (None, "E_DIAL_REFUSED")
        assert pair.autonat.dial_backs == 0


async def test_a_server_claiming_a_dial_back_it_never_made_is_not_believed(pair: Pair) -> None:
    async def liar(stream: Stream) -> None:
        await read_length_prefixed(stream, 8192)
        resp = pb.DialResponse(status=pb.DialResponse.OK, addrIdx=0, dialStatus=pb.OK)
        await write_length_prefixed(stream, pb.Message(dialResponse=resp).SerializeToString())
        await stream.close()

    pair.server.set_stream_handler(DIAL_REQUEST_PROTOCOL, liar)
    result = await pair.asker.check(pair.server.peer_id, pair.client.listen_addrs[:1])
    assert (result.reachable, result.status) == (None, "UNVERIFIED")


async def test_client_refuses_to_pay_too_much_and_server_survives_garbage(pair: Pair) -> None:
    async def greedy(stream: Stream) -> None:
        await read_length_prefixed(stream, 8192)
        ask = pb.DialDataRequest(addrIdx=0, numBytes=10_000_000)
        await write_length_prefixed(stream, pb.Message(dialDataRequest=ask).SerializeToString())
        await stream.read()

    original = pair.server.host._handlers[DIAL_REQUEST_PROTOCOL]
    pair.server.set_stream_handler(DIAL_REQUEST_PROTOCOL, greedy)
    with pytest.raises(AutoNATError, match="10000000"):
        await pair.asker.check(pair.server.peer_id, pair.client.listen_addrs[1:])
    pair.server.set_stream_handler(DIAL_REQUEST_PROTOCOL, original)

    for garbage in (b"\xff\xff", pb.Message().SerializeToString(), b"\x0a\x00"):
        stream = await pair.client.new_stream(pair.server.peer_id, DIAL_REQUEST_PROTOCOL)
        await write_length_prefixed(stream, garbage)
        try:
            data = await read_length_prefixed(stream, 8192)
        except Exception:  # reset: the bad request is dropped
            continue
        assert pb.Message.FromString(data).WhichOneof("msg") == "dialResponse"
    result = await pair.asker.check(pair.server.peer_id, pair.client.listen_addrs[:1])
    assert result.reachable is True


def test_server_address_selection() -> None:
    addrs = [
        Multiaddr("/ip4/0.0.0.0/tcp/1"),
        Multiaddr(
            "/ip4/1.2.3.4/tcp/1/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N/p2p-circuit"
        ),
        Multiaddr("/ip4/10.0.0.1/tcp/1"),
        Multiaddr("/ip4/8.8.8.8/tcp/1"),
    ]
    assert select_address(addrs, lambda a: True, allow_private=False) == 3
    assert select_address(addrs, lambda a: True, allow_private=True) == 2
    assert select_address(addrs[:3], lambda a: True, allow_private=False) is None
    assert select_address(addrs, lambda a: False, allow_private=True) is None
