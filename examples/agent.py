"""An example agent built on the p2pnet SDK, in the original design's flow::

    node = P2PNode(name, grpc_port, private_key)   # spawns p2p-node, serving gRPC
    await node.start()
    agent = Agent(name, p2p_port, private_key)     # joins the network through the node
    await agent.start()

It joins a topic, prints what arrives, answers every direct message with a reply, and greets
each agent it discovers on the topic (once). The identity is PRIVATE_KEY from the environment
(or the env file), else a fresh key::

    # a bootstrap node, then two agents that find each other through it
    python examples/agent.py --name boot --bootstrap --port 4001 --bootstrap-peers ''
    python examples/agent.py --name alice --bootstrap-peers /ip4/127.0.0.1/tcp/4001/p2p/16U...
    python examples/agent.py --name bob --bootstrap-peers /ip4/127.0.0.1/tcp/4001/p2p/16U...

Stop it with Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any

from p2pnet.sdk import Agent, Message, P2PNode, P2PNodeError


def say(name: str, text: str) -> None:
    print(f"[{name}] {text}", flush=True)


def short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 200 else text[:197] + "..."


class ExampleAgent:
    def __init__(self, agent: Agent, name: str, topic: str) -> None:
        self.agent = agent
        self.name = name
        self.topic = topic
        self.greeted: set[str] = set()

    async def on_message(self, message: Message) -> None:
        sender = message.from_eth or message.from_peer
        data = message.data
        where = "direct" if message.direct else f"on {message.topic}"
        say(self.name, f"message {where} from {sender}: {short(data)}")
        is_reply = isinstance(data, dict) and data.get("kind") == "reply"
        if message.direct and not is_reply:  # never answer a reply: no ping-pong
            reply = {"kind": "reply", "from": self.name, "text": f"{self.name} got it", "re": data}
            try:
                await self.agent.send(message.from_peer, reply)
                say(self.name, f"replied to {sender}")
            except P2PNodeError as exc:
                say(self.name, f"reply to {sender} failed: {exc.code}: {exc.message}")

    async def greet(self, peer: dict[str, Any]) -> None:
        target = peer.get("ethAddress") or peer["peerId"]
        if target in self.greeted or peer["peerId"] == self.agent.peer_id:
            return
        self.greeted.add(target)
        greeting = {"kind": "greeting", "from": self.name, "text": f"hello from {self.name}"}
        try:
            await self.agent.send(target, greeting)
            say(self.name, f"greeted {peer.get('name') or target}")
        except P2PNodeError as exc:
            self.greeted.discard(target)  # try again at the next discovery
            say(self.name, f"greeting {target} failed: {exc.code}")

    async def handle_messages(self) -> None:
        async for message in self.agent.messages():
            await self.on_message(message)

    async def discover_forever(self, interval: float) -> None:
        while True:
            try:
                for peer in await self.agent.discover(self.topic):
                    await self.greet(peer)
            except P2PNodeError as exc:
                say(self.name, f"discover failed: {exc.code}: {exc.message}")
            await asyncio.sleep(interval)


async def run(args: argparse.Namespace) -> int:
    peers = None
    if args.bootstrap_peers is not None:
        peers = [p for p in args.bootstrap_peers.split(",") if p.strip()]
    private_key = os.environ.get("PRIVATE_KEY")  # None: the env file's, else a fresh one
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    # The node process, serving gRPC on grpc_port (0: a free one) ...
    node = P2PNode(
        args.name,
        args.grpc_port,
        private_key,
        bootstrap_peers=peers,
        env_file=args.env_file,
        bootstrap=args.bootstrap,
        log_level=args.log_level,
    )
    try:
        await node.start()
    except P2PNodeError as exc:
        say(args.name, f"could not start: {exc.code}: {exc.message}")
        return 1
    # ... and the agent, which joins the network through it on p2p_port.
    agent = Agent(args.name, args.port, private_key)
    try:
        try:
            await agent.start()
        except P2PNodeError as exc:
            say(args.name, f"could not join: {exc.code}: {exc.message}")
            return 1
        say(args.name, f"ready: peer {agent.peer_id}, eth {agent.eth_address}")
        say(args.name, f"gRPC on {node.grpc_target}")
        for addr in agent.addrs:
            say(args.name, f"listening on {addr}")
        example = ExampleAgent(agent, args.name, args.topic)
        await agent.subscribe(args.topic)
        say(args.name, f"subscribed to {args.topic}")
        tasks = [
            asyncio.create_task(example.handle_messages()),
            asyncio.create_task(example.discover_forever(args.discover_interval)),
            asyncio.create_task(stop.wait()),
        ]
        if args.duration > 0:
            tasks.append(asyncio.create_task(asyncio.sleep(args.duration)))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await agent.stop()
        code = await node.stop()
        say(args.name, f"stopped (p2p-node exit status {code})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An example p2pnet agent (uses the SDK)")
    parser.add_argument("--name", default="agent", help="name shown to other agents")
    parser.add_argument(
        "--port", "--p2p-port", type=int, default=0, help="P2P TCP port (default: free)"
    )
    parser.add_argument("--grpc-port", type=int, default=0, help="gRPC port (default: free)")
    parser.add_argument(
        "--bootstrap-peers", help="comma-separated multiaddrs ('' for none; default: env/defaults)"
    )
    parser.add_argument("--env-file", help="KEY=value file: PRIVATE_KEY, BOOTSTRAP_PEERS, ...")
    parser.add_argument("--bootstrap", action="store_true", help="run as a bootstrap node")
    parser.add_argument("--topic", default="agent-chat", help="topic to join (default agent-chat)")
    parser.add_argument(
        "--discover-interval", type=float, default=10.0, help="seconds between discoveries"
    )
    parser.add_argument("--duration", type=float, default=0, help="stop after N s (0: never)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
