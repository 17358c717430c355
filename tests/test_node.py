"""The Node facade embedded in a test's own event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from p2pnet.config import ConfigError, NodeConfig, read_env_file
from p2pnet.crypto.keys import KeyType
from p2pnet.events import PeerConnected, PeerDisconnected, PeerDiscovered
from p2pnet.kad.config import KadConfig, Mode
from p2pnet.node import Node, NodeError
from p2pnet.stream import Stream

# Hardhat/Anvil's well-known development account #0 (public test key, never holds real funds).
ANVIL_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ANVIL_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def server_config(**kw: object) -> NodeConfig:
    return NodeConfig(kad=KadConfig(mode=Mode.SERVER), **kw)  # type: ignore[arg-type]


async def test_two_nodes_connect_ping_and_stream() -> None:
    async with Node() as a, Node() as b:
        events = a.events()

        async def upper(stream: Stream) -> None:
            async with stream:
                data = await stream.read()
                await stream.write(data.upper())

        b.set_stream_handler("/test/upper/1.0.0", upper)
        peer = await a.connect(b.p2p_addrs()[0])
        assert peer == b.peer_id and a.peers() == [b.peer_id]
        assert await a.ping(b.peer_id) > 0
        stream = await a.new_stream(b.peer_id, "/test/upper/1.0.0")
        await stream.write(b"hello")
        assert await stream.readexactly(5) == b"HELLO"
        await stream.close()

        seen = [await events.next(5), await events.next(5)]
        assert isinstance(seen[0], PeerConnected) and seen[0].peer == b.peer_id
        assert seen[0].direction == "outbound"
        assert isinstance(seen[1], PeerDiscovered) and seen[1].peer == b.peer_id
        assert "/test/upper/1.0.0" in seen[1].protocols
        await a.disconnect(b.peer_id)
        gone = await events.next(5)
        assert isinstance(gone, PeerDisconnected) and gone.peer == b.peer_id


async def test_events_end_when_node_closes() -> None:
    node = Node()
    await node.start()
    stream = node.events()
    await node.close()
    assert [e async for e in stream] == []


async def test_eth_identity() -> None:
    async with Node(NodeConfig(private_key=ANVIL_KEY)) as node:
        assert node.key.key_type is KeyType.Secp256k1
        assert node.eth_address == ANVIL_ADDRESS
        assert str(node.peer_id).startswith("16Uiu2")
    async with Node() as plain:
        assert plain.eth_address is None


def test_bad_private_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        Node(NodeConfig(private_key="0x1234"))


def test_env_file(tmp_path: Path) -> None:
    env = tmp_path / "node.env"
    env.write_text(
        "# agent settings\n"
        f"PRIVATE_KEY={ANVIL_KEY}\n"
        'export BOOTSTRAP_PEERS="/ip4/127.0.0.1/tcp/4001/p2p/a, /ip4/127.0.0.1/tcp/4002/p2p/b"\n'
        "DHT_MODE=server  # a bootstrap node\n"
        "RPC_URL='http://127.0.0.1:8545'\n"
        "\n"
    )
    assert read_env_file(env)["DHT_MODE"] == "server"
    cfg = NodeConfig.from_env_file(env)
    assert cfg.private_key == ANVIL_KEY
    assert cfg.bootstrap_peers == ["/ip4/127.0.0.1/tcp/4001/p2p/a", "/ip4/127.0.0.1/tcp/4002/p2p/b"]
    assert cfg.kad.mode is Mode.SERVER
    assert cfg.rpc_url == "http://127.0.0.1:8545"
    bad = tmp_path / "bad.env"
    bad.write_text("this is not an assignment\n")
    with pytest.raises(ConfigError, match=r"bad\.env:1"):
        NodeConfig.from_env_file(bad)
    with pytest.raises(ConfigError):
        NodeConfig.from_env({"DHT_MODE": "both"})
    with pytest.raises(ConfigError):
        NodeConfig.from_env_file(tmp_path / "missing.env")


async def test_dht_through_the_facade() -> None:
    async with Node(server_config()) as boot:
        servers = [
            Node(server_config(bootstrap_peers=[str(boot.p2p_addrs()[0])])) for _ in range(3)
        ]
        client = Node(NodeConfig(bootstrap_peers=[str(boot.p2p_addrs()[0])]))
        try:
            for n in [*servers, client]:
                await n.start()
            for n in servers:  # let every server see the others
                await n.bootstrap()
            target = servers[-1]
            info = await client.find_peer(target.peer_id)
            assert info.peer == target.peer_id
            assert set(target.listen_addrs) <= set(info.addrs)
        finally:
            await asyncio.gather(*(n.close() for n in [*servers, client]))


async def test_dht_disabled() -> None:
    async with Node(NodeConfig(enable_dht=False)) as node:
        assert node.dht is None
        with pytest.raises(NodeError):
            await node.find_peer(node.peer_id)


async def test_unreachable_bootstrap_does_not_stop_the_node() -> None:
    async with Node() as gone:
        addr = str(gone.p2p_addrs()[0])
    async with Node(NodeConfig(bootstrap_peers=[addr])) as node:
        assert node.peers() == []
        with pytest.raises(Exception, match="bootstrap"):
            await node.bootstrap()


async def test_pubsub_through_the_facade() -> None:
    from p2pnet.events import MessageReceived
    from p2pnet.pubsub.params import GossipsubConfig

    fast = GossipsubConfig(heartbeat_interval=0.1)
    async with Node(NodeConfig(pubsub=fast)) as a, Node(NodeConfig(pubsub=fast)) as b:
        events = b.events()
        sub_a = a.subscribe("news")
        sub_b = b.subscribe("news", events=True)
        assert b.subscribe("news", events=True) is sub_b  # one subscription, one event pump
        await a.connect(b.p2p_addrs()[0])
        async with asyncio.timeout(10):
            while b.peer_id not in a.pubsub.mesh_peers("news"):  # type: ignore[union-attr]
                await asyncio.sleep(0.05)
        result = await a.publish("news", b"hello")
        assert result.peers == 1 and result.recipients == {b.peer_id}
        while True:
            ev = await events.next(10)
            if isinstance(ev, MessageReceived):
                break
        assert ev.topic == "news" and ev.data == b"hello" and ev.from_peer == a.peer_id
        assert ev.msg_id == result.message_id
        own = await sub_a.get(timeout=5)  # the publisher's own subscription sees it too
        assert own.data == b"hello"
        # subscribe is idempotent per topic; the other mode on the same topic is refused
        assert a.subscribe("news") is sub_a
        with pytest.raises(NodeError, match="already subscribed"):
            a.subscribe("news", events=True)
        # a topic nobody else is in: published, and the caller learns nobody got it
        lonely = await a.publish("nobody-here", b"?")
        assert lonely.peers == 0 and lonely.message_id
        # unsubscribe is synchronous and idempotent: the subscription ends at once
        a.unsubscribe("news")
        a.unsubscribe("news")
        assert not sub_a.active and "news" not in a.pubsub.topics()  # type: ignore[union-attr]
        assert a.subscribe("news") is not sub_a  # a new subscription after leaving


def test_key_file_is_created_once_and_reused(tmp_path: Path) -> None:
    import os
    import stat

    from p2pnet.config import load_or_create_eth_key

    path = tmp_path / "identity.env"
    first = load_or_create_eth_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "PRIVATE_KEY=0x" in path.read_text()
    again = load_or_create_eth_key(path)
    assert again.public_key == first.public_key
    path.write_text("NOTHING=here\n")
    with pytest.raises(ConfigError, match="no PRIVATE_KEY"):
        load_or_create_eth_key(path)
