"""p2pnet on uvloop (the optional ``p2pnet[uvloop]`` extra): TCP, Noise, yamux and gossipsub."""

from __future__ import annotations

import asyncio
import hashlib
import os

import uvloop

from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.pubsub import GossipsubConfig, Pubsub
from p2pnet.stream import Stream


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


async def _bulk_stream_digest(payload: bytes) -> tuple[bytes, bytes]:
    """One stream of ``payload`` in 1 MiB writes; the receiver replies with the SHA-256 of what
    it read (the bulk path: TCP's shared receive buffer, Noise's reused buffers, on uvloop)."""
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    a = Host(KeyPair.generate(KeyType.Ed25519), HostConfig())
    b = Host(KeyPair.generate(KeyType.Ed25519), HostConfig())

    async def digest(stream: Stream) -> None:
        h = hashlib.sha256()
        while data := await stream.read():
            h.update(data)
        await stream.write(h.digest())
        await stream.close()

    b.set_stream_handler("/test/digest/1", digest)
    async with a, b:
        conn = await a.connect(str(b.p2p_addrs()[0]))
        stream = await conn.new_stream(["/test/digest/1"])
        for i in range(0, len(payload), 1 << 20):
            await stream.write(payload[i : i + (1 << 20)])
        await stream.close()
        reply = await asyncio.wait_for(stream.readexactly(32), 30)
        return reply, hashlib.sha256(payload).digest()


def test_bulk_stream_is_intact_on_uvloop() -> None:
    payload = os.urandom(12 << 20)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        got, expected = runner.run(_bulk_stream_digest(payload))
    assert got == expected
