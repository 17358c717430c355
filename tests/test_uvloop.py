"""p2pnet on uvloop (the optional ``p2pnet[uvloop]`` extra): TCP, Noise, yamux and gossipsub."""

from __future__ import annotations

import asyncio

import uvloop

from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.pubsub import GossipsubConfig, Pubsub


async def _two_hosts_exchange_a_message() -> bytes:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    cfg = HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"])
    a = Host(KeyPair.generate(KeyType.Ed25519), cfg)
    b = Host(KeyPair.generate(KeyType.Ed25519), cfg)
    async with a, b:
        pa = Pubsub(a, GossipsubConfig(heartbeat_interval=0.1, heartbeat_initial_delay=0.05))
        pb = Pubsub(b, GossipsubConfig(heartbeat_interval=0.1, heartbeat_initial_delay=0.05))
        async with pa, pb:
            sub = pb.subscribe("t")
            pa.subscribe("t")
            await b.connect(str(a.p2p_addrs()[0]))
            async with asyncio.timeout(10):
                while b.peer_id not in pa.mesh_peers("t"):
                    await asyncio.sleep(0.02)
            await pa.publish("t", b"on uvloop")
            msg = await sub.get(timeout=10)
            return msg.data


def test_hosts_and_gossipsub_run_on_uvloop() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(_two_hosts_exchange_a_message()) == b"on uvloop"
