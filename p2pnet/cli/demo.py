"""``p2pnet demo``: two nodes on loopback connect, identify and ping each other."""

from __future__ import annotations

import argparse
import asyncio
import sys

from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.protocols.identify import IdentifyService
from p2pnet.protocols.ping import PingService


def _say(text: str) -> None:
    print(text, flush=True)


async def run_demo(pings: int, key_type: KeyType) -> int:
    config = HostConfig(listen_addrs=["/ip4/127.0.0.1/tcp/0"])
    async with (
        Host(KeyPair.generate(key_type), config) as alice,
        Host(KeyPair.generate(key_type), config) as bob,
    ):
        services = {}
        for name, host in (("alice", alice), ("bob", bob)):
            services[name] = (IdentifyService(host), PingService(host))
            _say(f"{name}: peer {host.peer_id}")
            for addr in host.p2p_addrs():
                _say(f"{name}: listening on {addr}")

        target = alice.p2p_addrs()[0]
        _say(f"bob: dialing {target}")
        conn = await bob.connect(target)
        _say(
            f"bob: connected to {conn.remote_peer} over {conn.local_addr} -> {conn.remote_addr} "
            "(noise, yamux)"
        )
        for name, host, other in (("bob", bob, alice), ("alice", alice, bob)):
            await services[name][0].wait_identified(other.peer_id, timeout=10)
            store = host.peerstore
            _say(f"{name}: identified {other.peer_id}")
            _say(f"{name}:   agent    {store.agent_version(other.peer_id)}")
            _say(f"{name}:   protocols {', '.join(store.get_protocols(other.peer_id))}")
            _say(f"{name}:   addrs    {', '.join(map(str, store.addrs(other.peer_id)))}")
        for name, other in (("bob", alice), ("alice", bob)):
            rtts = await services[name][1].ping(other.peer_id, count=pings)
            shown = ", ".join(f"{r * 1000:.3f} ms" for r in rtts)
            _say(f"{name}: ping {other.peer_id}: {shown}")
        _say("done: closing both nodes")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="two nodes on loopback connect, identify and ping")
    p.add_argument("--pings", type=int, default=3, help="pings each way (default 3)")
    p.add_argument(
        "--key-type",
        choices=["ed25519", "secp256k1"],
        default="ed25519",
        help="identity key type of both nodes",
    )
    p.set_defaults(func=lambda args: asyncio.run(run_demo(args.pings, _key_type(args.key_type))))


def _key_type(name: str) -> KeyType:
    return KeyType.Ed25519 if name == "ed25519" else KeyType.Secp256k1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(asyncio.run(run_demo(3, KeyType.Ed25519)))
