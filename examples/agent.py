"""An example agent built on the p2pnet SDK, the way an application would use it.

It starts a p2p-node process, joins a topic, prints what arrives, answers every direct message
with a reply, and greets each agent it discovers on the topic (once)::

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
import signal
import sys
from typing import Any

from p2pnet.sdk import P2PNode, P2PNodeError


def say(name: str, text: str) -> None:
    print(f"[{name}] {text}", flush=True)


def short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 200 else text[:197] + "..."


class ExampleAgent:
    def __init__(self, node: P2PNode, name: str, topic: str) -> None:
        self.node = node
        self.name = name
        self.topic = topic
        self.greeted: set[str] = set()

    async def on_message(self, event: dict[str, Any]) -> None:
        sender = event.get("fromEth") or event["from"]
        data = event.get("data")
        where = "direct" if event.get("direct") else f"on {event.get('topic')}"
        say(self.name, f"message {where} from {sender}: {short(data)}")
        is_reply = isinstance(data, dict) and data.get("kind") == "reply"
        if event.get("direct") and not is_reply:  # never answer a reply: no ping-pong
            reply = {"kind": "reply", "from": self.name, "text": f"{self.name} got it", "re": data}
            try:
                await self.node.send(event["from"], reply)
                say(self.name, f"replied to {sender}")
            except P2PNodeError as exc:
                say(self.name, f"reply to {sender} failed: {exc.code}: {exc.message}")

    async def greet(self, peer: dict[str, Any]) -> None:
        target = peer.get("ethAddress") or peer["peerId"]
        if target in self.greeted or peer["peerId"] == self.node.peer_id:
            return
        self.greeted.add(target)
        greeting = {"kind": "greeting", "from": self.name, "text": f"hello from {self.name}"}
        try:
            await self.node.send(target, greeting)
            say(self.name, f"greeted {peer.get('name') or target}")
        except P2PNodeError as exc:
            self.greeted.discard(target)  # try again at the next discovery
            say(self.name, f"greeting {target} failed: {exc.code}")

    async def handle_events(self) -> None:
        async for event in self.node.events():
            if event["type"] == "message":
                await self.on_message(event)
            elif event["type"] == "peer_discovered" and self.topic in event.get("topics", []):
                await self.greet(event)

    async def discover_forever(self, interval: float) -> None:
        while True:
            try:
                for peer in await self.node.discover(self.topic):
                    await self.greet(peer)
            except P2PNodeError as exc:
                say(self.name, f"discover failed: {exc.code}: {exc.message}")
            await asyncio.sleep(interval)


async def run(args: argparse.Namespace) -> int:
    peers = None
    if args.bootstrap_peers is not None:
        peers = [p for p in args.bootstrap_peers.split(",") if p.strip()]
    node = P2PNode(
        name=args.name,
        port=args.port,
        bootstrap_peers=peers,
        env_file=args.env_file,
        bootstrap=args.bootstrap,
        log_level=args.log_level,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
    except P2PNodeError as exc:
        say(args.name, f"could not start: {exc.code}: {exc.message}")
        return 1
    try:
        say(args.name, f"ready: peer {node.peer_id}, eth {node.eth_address}")
        for addr in node.addrs:
            say(args.name, f"listening on {addr}")
        agent = ExampleAgent(node, args.name, args.topic)
        await node.subscribe(args.topic)
        say(args.name, f"subscribed to {args.topic}")
        tasks = [
            asyncio.create_task(agent.handle_events()),
            asyncio.create_task(agent.discover_forever(args.discover_interval)),
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
        code = await node.stop()
        say(args.name, f"stopped (p2p-node exit status {code})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An example p2pnet agent (uses the SDK)")
    parser.add_argument("--name", default="agent", help="name shown to other agents")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: free)")
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
