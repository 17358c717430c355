"""``p2pnet devnet``: a whole agent network on loopback, narrated as it happens.

Four bootstrap nodes (DHT servers, one per region name of ``BOOTSTRAP_REGIONS``) connect to each
other; N agents (DHT clients, each with its own Ethereum key) join through them, publish their
presence in the DHT, find every other agent by ETH address through DHT queries, exchange direct
and broadcast messages, and report node-status. The last line is a machine-readable summary
(``RESULT {...}``) that the tests check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from p2pnet.agent.agent import Agent, AgentConfig, AgentDiscovered, AgentMessage
from p2pnet.agent.constants import BOOTSTRAP_REGIONS, MESSAGES_TOPIC
from p2pnet.cli.explorer import DevnetExtras
from p2pnet.errors import P2PError
from p2pnet.pubsub.params import GossipsubConfig
from p2pnet.registry.devnet_chain import DevnetChain, intruder_scene, new_eth_key

CHAT_TOPIC = "devnet-chat"


@dataclass
class Tally:
    resolved: int = 0
    resolve_failed: int = 0
    direct_sent: int = 0
    direct_received: int = 0
    broadcast_sent: int = 0
    broadcast_received: int = 0
    discovered: int = 0
    errors: list[str] = field(default_factory=list)
    expected: int = 0
    all_delivered: asyncio.Event = field(default_factory=asyncio.Event)

    def received(self) -> None:
        if min(self.direct_received, self.broadcast_received) >= self.expected:
            self.all_delivered.set()


class Narrator:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()

    def say(self, who: str, text: str) -> None:
        self.out.write(f"[{time.monotonic() - self.t0:7.2f}s] {who:<18} {text}\n")
        self.out.flush()


def _short(text: object, n: int = 12) -> str:
    s = str(text)
    return s if len(s) <= n + 3 else s[:n] + "..."


async def run_devnet(
    agents: int,
    duration: float | None,
    out: TextIO = sys.stdout,
    *,
    explorer_port: int | None = None,
    metrics_port: int | None = None,
    registry: str = "enforce",
) -> int:
    say = Narrator(out).say
    extras = DevnetExtras()
    fast = GossipsubConfig(heartbeat_interval=0.5)
    boots: list[Agent] = []
    members: list[Agent] = []
    tally = Tally()
    expected_direct = expected_broadcast = tally.expected = agents * (agents - 1)
    listeners: list[asyncio.Task[None]] = []
    interrupted = False
    # 0. The chain: anvil, the registry, every node registered (registry/devnet_chain.py).
    chain = await DevnetChain.start(registry, say) if registry != "off" else None
    keys = {f"boot-{r}": new_eth_key() for r in BOOTSTRAP_REGIONS}
    keys.update({f"agent-{i + 1}": new_eth_key() for i in range(agents)})
    chained: dict[str, Any] = chain.agent_settings() if chain is not None else {}
    scene: dict[str, Any] = {"policy": "off"}

    def summarize() -> dict[str, Any]:
        return {
            "agents": agents,
            "bootstrap": len(boots),
            "resolved": tally.resolved,
            "resolve_failed": tally.resolve_failed,
            "resolve_expected": expected_direct,
            "direct_sent": tally.direct_sent,
            "direct_delivered": tally.direct_received,
            "direct_expected": expected_direct,
            "broadcast_sent": tally.broadcast_sent,
            "broadcast_delivered": tally.broadcast_received,
            "broadcast_expected": expected_broadcast,
            "discovered": tally.discovered,
            "discover_expected": agents - 1,
            "errors": tally.errors[:20],
            "interrupted": interrupted,
            "registry": scene,
        }

    try:
        try:
            if chain is not None:
                await chain.register(list(keys.items()))
            # 1. Bootstrap nodes, each joining the ones already up; then a full mesh between them.
            for region in BOOTSTRAP_REGIONS:
                seeds = [str(b.p2p_addrs()[0]) for b in boots]
                boot = Agent(
                    AgentConfig(
                        name=f"boot-{region}",
                        bootstrap_node=True,
                        bootstrap_peers=seeds,
                        pubsub=fast,
                        status_interval=5.0,
                        private_key=keys[f"boot-{region}"],
                        **chained,
                    )
                )
                await boot.start()
                boots.append(boot)
                say(boot.name, f"bootstrap (DHT server) up at {boot.p2p_addrs()[0]}")
            for boot in boots:
                for other in boots:
                    if other is not boot:
                        await boot.node.connect(other.p2p_addrs()[0])
            say("devnet", f"{len(boots)} bootstrap nodes connected to each other")
            await extras.start(
                [str(b.p2p_addrs()[0]) for b in boots],
                explorer_port,
                metrics_port,
                lambda: boots + members,
                say,
                status_interval=5.0,
            )

            # 2. Agents join through the bootstrap nodes.
            seeds = [str(b.p2p_addrs()[0]) for b in boots]
            members = [
                Agent(
                    AgentConfig(
                        name=f"agent-{i + 1}",
                        bootstrap_peers=seeds,
                        pubsub=fast,
                        status_interval=5.0,
                        private_key=keys[f"agent-{i + 1}"],
                        **chained,
                    )
                )
                for i in range(agents)
            ]
            for agent in members:
                listeners.append(asyncio.create_task(_listen(agent, say, tally)))
            await asyncio.gather(*(a.start() for a in members))
            for agent in members:
                say(agent.name, f"joined as {agent.eth_address} ({_short(agent.peer_id, 16)})")
            await asyncio.gather(*(_wait_presence(a) for a in members))
            say("devnet", "every agent published its presence record in the DHT")
            await asyncio.gather(*(a.subscribe(CHAT_TOPIC) for a in members))

            # 3. Every agent finds every other by ETH address, through the DHT.
            async def find_all(agent: Agent) -> None:
                for other in members:
                    if other is agent:
                        continue
                    try:
                        peer = await agent.resolve(other.eth_address)
                    except P2PError as exc:
                        tally.resolve_failed += 1
                        tally.errors.append(f"{agent.name} -> {other.name}: {exc}")
                        say(agent.name, f"could not find {other.name}: {exc}")
                        continue
                    ok = peer == other.peer_id
                    tally.resolved += ok
                    say(
                        agent.name,
                        f"found {other.name} {_short(other.eth_address)} via DHT "
                        f"-> {_short(peer, 16)}{'' if ok else ' (WRONG PEER)'}",
                    )

            await asyncio.gather(*(find_all(a) for a in members))

            # 4. Direct messages: everyone to everyone, addressed by ETH address.
            async def greet_all(agent: Agent) -> None:
                for other in members:
                    if other is agent:
                        continue
                    try:
                        greeting = {"hello": other.name, "from": agent.name}
                        await agent.send(other.eth_address, greeting)
                        tally.direct_sent += 1
                    except P2PError as exc:
                        tally.errors.append(f"send {agent.name} -> {other.name}: {exc}")
                        say(agent.name, f"direct message to {other.name} failed: {exc}")

            await asyncio.gather(*(greet_all(a) for a in members))

            # 5. Broadcasts on agent-messages.
            await _wait_mesh(members, MESSAGES_TOPIC)
            for agent in members:
                await agent.broadcast({"broadcast": f"hi all, this is {agent.name}"})
                tally.broadcast_sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tally.all_delivered.wait(), 10)

            # 5b. The registry at work: addresses in the agentURIs, then the intruder scene.
            if chain is not None:
                await chain.publish_addrs(
                    [
                        (a.name, keys[a.name], [str(x) for x in a.p2p_addrs()])
                        for a in boots + members
                    ]
                )
                scene = await intruder_scene(
                    chain,
                    lambda key: Agent(
                        AgentConfig(
                            name="intruder",
                            private_key=key,
                            bootstrap_peers=seeds,
                            pubsub=fast,
                            status_interval=5.0,
                            **chained,
                        )
                    ),
                    boots + members,
                    say,
                )

            # 6. Discovery by topic, then node-status until the time is up.
            found = await members[0].discover(CHAT_TOPIC)
            say(members[0].name, f"discover {CHAT_TOPIC!r}: {len(found)} agents")
            tally.discovered = len(found)
            say(
                "devnet",
                "all agents found each other and exchanged messages"
                if not tally.errors
                else f"{len(tally.errors)} errors",
            )
            start = time.monotonic()
            while duration is None or time.monotonic() - start < duration:
                await asyncio.sleep(min(5.0, duration or 5.0))
                for agent in boots + members:
                    st = agent.status()
                    say(
                        agent.name,
                        f"status: peers={st['peers']} dht={st['dhtTableSize']} "
                        f"in={st['messagesIn']} out={st['messagesOut']} "
                        f"mesh={sum(st['mesh'].values())} "
                        f"node-status reports from {len(agent.statuses)} nodes",
                    )
        except asyncio.CancelledError:
            # Ctrl-C (asyncio.run cancels us): still say how far the network got, then close.
            me = asyncio.current_task()
            if me is None or me.uncancel() > 0:
                raise  # cancelled for another reason as well
            interrupted = True
            say("devnet", "interrupted (Ctrl-C)")
        out.write("RESULT " + json.dumps(summarize()) + "\n")
        out.flush()
        complete = (
            tally.resolved == expected_direct
            and tally.direct_received == expected_direct
            and tally.broadcast_received == expected_broadcast
        )
        if interrupted:
            return 130
        return 0 if complete else 1
    finally:
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        await extras.close()
        await asyncio.gather(*(a.close() for a in members + boots), return_exceptions=True)
        if chain is not None:
            await chain.stop()
        say("devnet", "all nodes closed")


async def _listen(agent: Agent, say: Any, tally: Tally) -> None:
    async for ev in agent.events():
        if isinstance(ev, AgentMessage):
            name = ev.data.get("from", "?") if isinstance(ev.data, dict) else "?"
            if ev.direct:
                tally.direct_received += 1
                tally.received()
                say(agent.name, f"<- direct from {name}: {json.dumps(ev.data)}")
            elif ev.topic == MESSAGES_TOPIC:
                tally.broadcast_received += 1
                tally.received()
                say(agent.name, f"<- broadcast on {ev.topic}: {json.dumps(ev.data)}")
        elif isinstance(ev, AgentDiscovered) and ev.name:
            say(agent.name, f"sees {ev.name} announce itself ({_short(ev.eth_address)})")


async def _wait_presence(agent: Agent, timeout: float = 20.0) -> None:
    await asyncio.wait_for(agent.presence.published.wait(), timeout)


async def _wait_mesh(agents: list[Agent], topic: str, timeout: float = 10.0) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            # Pubsub has no mesh-change event; poll its state a few times a second.
            while any(not a.pubsub.mesh_peers(topic) for a in agents):  # noqa: ASYNC110
                await asyncio.sleep(0.05)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "devnet", help="run a local agent network on loopback (4 bootstrap nodes + N agents)"
    )
    p.add_argument("--agents", type=int, default=6, help="number of agents (default 6)")
    p.add_argument(
        "--duration",
        type=_duration,
        default=None,
        help="seconds to keep running after the exchange (default: until Ctrl-C)",
    )
    p.add_argument(
        "--explorer-port",
        type=int,
        default=8080,
        help="serve the explorer page on 127.0.0.1:PORT (default 8080; a free one if taken)",
    )
    p.add_argument("--no-explorer", action="store_true", help="do not start the explorer")
    p.add_argument("--metrics-port", type=int, default=None, help="serve /metrics, /healthz")
    p.add_argument(
        "--registry",
        choices=("enforce", "annotate", "off"),
        default="enforce",
        help="registry policy on a local anvil chain (default enforce; needs Node.js)",
    )
    p.set_defaults(func=_main)


def _duration(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds >= 0 or seconds == float("inf"):  # also refuses NaN
        raise argparse.ArgumentTypeError(f"--duration must be 0 or more seconds, not {text}")
    return seconds


def _main(args: argparse.Namespace) -> int:
    if args.agents < 2:
        print("devnet needs at least 2 agents", file=sys.stderr)
        return 2
    # Started in the background by a script (`p2pnet devnet &`), a shell leaves SIGINT ignored
    # and asyncio then installs no handler: Ctrl-C (or kill -INT) would do nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    explorer_port = None if args.no_explorer else args.explorer_port
    return asyncio.run(
        run_devnet(
            args.agents,
            args.duration,
            explorer_port=explorer_port,
            metrics_port=args.metrics_port,
            registry=args.registry,
        )
    )
