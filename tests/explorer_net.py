"""A small agent network and an explorer on loopback, with short timeouts, for the explorer
tests (JSON endpoints and the browser)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from p2pnet.agent.agent import Agent, AgentConfig
from p2pnet.agent.constants import ANNOUNCEMENTS_TOPIC
from p2pnet.agent.envelope import seal
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.explorer import Explorer, ExplorerConfig, ExplorerWeb
from p2pnet.peer.peer_id import PeerID
from p2pnet.pubsub.messages import build_message
from p2pnet.pubsub.params import GossipsubConfig, SignaturePolicy

FAST = GossipsubConfig(heartbeat_interval=0.2, heartbeat_initial_delay=0.05)
STATUS_INTERVAL = 0.5


def agent_config(name: str, seeds: list[str], **kw: Any) -> AgentConfig:
    return AgentConfig(
        name=name, bootstrap_peers=seeds, pubsub=FAST, status_interval=STATUS_INTERVAL, **kw
    )


def explorer_config(seeds: list[str], **kw: Any) -> ExplorerConfig:
    settings: dict[str, Any] = {
        "bootstrap_peers": seeds,
        "http_port": 0,
        "node_ttl": 3.0,
        "crawl_interval": 0.5,
        "crawl_timeout": 3.0,
        "push_interval": 0.2,
        "retry_initial": 0.2,
        "retry_max": 0.5,
        "status_interval": STATUS_INTERVAL,
        "rate_bucket": 1.0,
        "pubsub": FAST,
    }
    settings.update(kw)
    return ExplorerConfig(**settings)


class Net:
    """``boots`` DHT servers, then the explorer, then ``agents`` agents."""

    def __init__(self) -> None:
        self.boots: list[Agent] = []
        self.agents: list[Agent] = []
        self.explorer: Explorer | None = None
        self.web: ExplorerWeb | None = None
        self.http: aiohttp.ClientSession | None = None

    @property
    def seeds(self) -> list[str]:
        return [str(b.p2p_addrs()[0]) for b in self.boots]

    async def start(self, boots: int = 2, agents: int = 3, **explorer_kw: Any) -> Net:
        for i in range(boots):
            boot = Agent(agent_config(f"boot-{i}", self.seeds, bootstrap_node=True))
            await boot.start()
            self.boots.append(boot)
        for boot in self.boots:
            for other in self.boots:
                if other is not boot:
                    await boot.node.connect(other.p2p_addrs()[0])
        self.explorer = Explorer(explorer_config(self.seeds, **explorer_kw))
        await self.explorer.start()
        self.web = ExplorerWeb(self.explorer, port=0)
        await self.web.start()
        self.http = aiohttp.ClientSession()
        for i in range(agents):
            await self.add_agent(f"agent-{i}")
        return self

    async def add_agent(self, name: str) -> Agent:
        agent = Agent(agent_config(name, self.seeds))
        await agent.start()
        self.agents.append(agent)
        return agent

    async def crash(self, agent: Agent) -> None:
        """Stop a node the way a crash does: connections drop, no leave announcement."""
        await agent.node.close()

    @property
    def url(self) -> str:
        assert self.web is not None
        return self.web.url

    async def get(self, path: str) -> tuple[int, Any]:
        assert self.http is not None
        async with self.http.get(self.url + path.lstrip("/")) as resp:
            body = await resp.text()
            try:
                return resp.status, json.loads(body)
            except ValueError:
                return resp.status, body

    async def graph(self) -> dict[str, Any]:
        status, body = await self.get("/api/graph")
        assert status == 200
        return body  # type: ignore[no-any-return]

    async def roles(self) -> dict[str, str]:
        return {n["id"]: n["role"] for n in (await self.graph())["nodes"]}

    def expected_roles(self) -> dict[str, str]:
        assert self.explorer is not None
        roles = {str(b.peer_id): "bootstrap" for b in self.boots}
        roles.update({str(a.peer_id): "agent" for a in self.agents if not a.node.host._closed})
        roles[str(self.explorer.peer_id)] = "explorer"
        return roles

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.web is not None:
            await self.web.close()
        if self.explorer is not None:
            await self.explorer.close()
        await asyncio.gather(*(a.close() for a in self.agents + self.boots))


async def eventually(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1) -> Any:
    """Poll an async or sync ``check`` until it returns something truthy (the explorer has no
    event to wait on from outside but its HTTP API)."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(interval)


async def flood_announcements(publisher: Agent, count: int, batch: int = 100) -> list[PeerID]:
    """``count`` announcements, each from a fresh identity, published through ``publisher``'s
    gossipsub as messages authored (and signed) by those identities."""
    router = publisher.pubsub.router
    peers = []
    for start in range(0, count, batch):
        for i in range(start, min(start + batch, count)):
            key = KeyPair.generate(KeyType.Secp256k1)
            peer = PeerID.from_public_key(key.public_key)
            data = {"event": "join", "name": f"fake-{i}", "addrs": [], "topics": []}
            envelope = seal(
                key,
                "announce",
                data,
                topic=ANNOUNCEMENTS_TOPIC,
                now=publisher.clock.time(),
                nonce=os.urandom(8),
            )
            msg = build_message(
                ANNOUNCEMENTS_TOPIC,
                envelope,
                policy=SignaturePolicy.STRICT_SIGN,
                key=key,
                peer_id=peer,
                seqno=1,
            )
            router.publish_message(msg, asyncio.get_running_loop().time())
            peers.append(peer)
        publisher.pubsub._pump()
        await asyncio.sleep(0.05)  # let the writer drain between batches
    return peers


async def dead_bootstrap_network() -> tuple[Net, Callable[[], Awaitable[None]]]:
    """An explorer whose one bootstrap peer is down (nothing listens at its address); the
    returned ``boot_up()`` starts that bootstrap node (same key, same port) and an agent."""
    key = KeyPair.generate(KeyType.Secp256k1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{PeerID.from_public_key(key.public_key)}"
    net = Net()
    net.explorer = Explorer(explorer_config([addr]))
    await net.explorer.start()
    net.web = ExplorerWeb(net.explorer, port=0)
    await net.web.start()
    net.http = aiohttp.ClientSession()

    async def boot_up() -> None:
        boot = Agent(
            agent_config(
                "boot",
                [],
                private_key="0x" + key.private_key.to_bytes().hex(),
                port=port,
                bootstrap_node=True,
            )
        )
        await boot.start()
        net.boots.append(boot)
        await net.add_agent("agent")

    return net, boot_up
