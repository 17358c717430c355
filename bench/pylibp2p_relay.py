"""The middle node of bench/relay.py on py-libp2p (PyPI ``libp2p``), for comparison.

Runs under an interpreter that has py-libp2p installed (not a p2pnet dependency; bench/relay.py
``--pylibp2p-python PATH`` names it). Speaks relay.py's child protocol: a ``ready`` JSON line
with its addresses, then ``stats`` / ``stop`` commands on stdin, one JSON answer per line.
Gossipsub v1.1 with py-libp2p's defaults except: D = 6 / 5 / 12 as go and p2pnet, a 1 s
heartbeat, and its per-topic rate limit and IP-diversity (eclipse) checks off, since every peer of
the benchmark is on 127.0.0.1 and publishes far more than 10 messages per second.
"""

from __future__ import annotations

import json
import sys

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

TOPIC = "relay-bench"


def emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main() -> None:
    host = new_host(key_pair=create_new_key_pair())
    router = GossipSub(
        protocols=[TProtocol("/meshsub/1.1.0"), TProtocol("/meshsub/1.0.0")],
        degree=6,
        degree_low=5,
        degree_high=12,
        heartbeat_interval=1,
        spam_protection_enabled=False,
        eclipse_protection_enabled=False,
    )
    pubsub = Pubsub(host, router)
    delivered = 0
    async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        async with background_trio_service(pubsub), background_trio_service(router):
            await pubsub.wait_until_ready()
            sub = await pubsub.subscribe(TOPIC)

            async def consume() -> None:
                nonlocal delivered
                while True:
                    await sub.get()
                    delivered += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                addrs = [
                    f"{a}/p2p/{host.get_id()}" if "/p2p/" not in str(a) else str(a)
                    for a in host.get_addrs()
                ]
                emit({"event": "ready", "peerId": str(host.get_id()), "addrs": addrs})
                while line := await trio.to_thread.run_sync(sys.stdin.readline):
                    cmd = json.loads(line).get("cmd")
                    if cmd == "stop":
                        emit({"ok": True})
                        break
                    if cmd == "stats":
                        mesh = len(router.mesh.get(TOPIC, ()))
                        emit(
                            {
                                "ok": True,
                                "delivered": delivered,
                                "mesh": mesh,
                                "peers": len(router.peer_protocol),
                            }
                        )
                    else:
                        emit({"ok": False, "error": f"unknown command {cmd!r}"})
                nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
