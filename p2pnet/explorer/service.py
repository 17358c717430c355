"""The explorer: an ordinary client node that watches the agent network and serves a page.

It joins like any agent (DHT client, the three agent topics) and learns the network only from
what the network carries: signed node-status reports and announcements, identify, and crawls of
the DHT servers' routing tables. :class:`~p2pnet.explorer.view.NetworkView` keeps the bounded
picture; :mod:`p2pnet.explorer.web` serves it. When no bootstrap peer answers, the explorer
keeps retrying with backoff and says so on the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from multiaddr import Multiaddr

from p2pnet.agent.agent import Agent, AgentConfig
from p2pnet.agent.constants import ANNOUNCEMENTS_TOPIC, MESSAGES_TOPIC, STATUS_TOPIC
from p2pnet.agent.envelope import InvalidEnvelope, open_envelope
from p2pnet.backoff import BootstrapSchedule, ExponentialBackoff
from p2pnet.backoff import BootstrapState as ScheduleState
from p2pnet.errors import P2PError
from p2pnet.explorer.crawler import crawl
from p2pnet.explorer.view import NetworkView, ViewConfig
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.peerstore import TEMP_ADDR_TTL
from p2pnet.protocols.identify import IdentifyInfo
from p2pnet.pubsub.gossipsub import Subscription
from p2pnet.pubsub.params import GossipsubConfig
from p2pnet.tasks import TaskOwner

log = logging.getLogger("p2pnet.explorer")

WATCHED_TOPICS = (ANNOUNCEMENTS_TOPIC, STATUS_TOPIC, MESSAGES_TOPIC)
#: DHT servers crawled per round at most, and at once.
MAX_CRAWL_SERVERS = 64
CRAWL_CONCURRENCY = 4


@dataclass
class ExplorerConfig:
    name: str = "explorer"
    bootstrap_peers: list[str] = field(default_factory=list)
    private_key: str | None = None
    key_file: str | None = None
    listen_host: str = "127.0.0.1"
    port: int = 0
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    #: Seconds without news after which a node leaves the page.
    node_ttl: float = 90.0
    max_nodes: int = 2000
    crawl_interval: float = 30.0
    crawl_timeout: float = 10.0
    #: How often the page gets changes (server-sent events), and the expiry sweep runs.
    push_interval: float = 1.0
    #: Bootstrap retry backoff: first delay, doubled up to the maximum.
    retry_initial: float = 1.0
    retry_max: float = 30.0
    status_interval: float = 30.0
    rate_bucket: float = 5.0
    rate_buckets: int = 60
    pubsub: GossipsubConfig = field(default_factory=GossipsubConfig)


@dataclass
class BootstrapStatus:
    state: str = "starting"  # starting | connected | retrying | none (no bootstrap peers)
    attempts: int = 0
    last_error: str = ""
    next_retry_at: float | None = None
    connected_at: float | None = None

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "state": self.state,
            "attempts": self.attempts,
            "lastError": self.last_error,
            "nextRetryIn": None
            if self.next_retry_at is None
            else max(0.0, round(self.next_retry_at - now, 1)),
        }


Listener = Callable[[str, str], None]


class Explorer:
    """``async with Explorer(ExplorerConfig(...)) as ex:``; the web server is separate
    (:class:`p2pnet.explorer.web.ExplorerWeb`)."""

    def __init__(self, config: ExplorerConfig | None = None) -> None:
        self.config = cfg = config or ExplorerConfig()
        self.agent = Agent(
            AgentConfig(
                name=cfg.name,
                private_key=cfg.private_key,
                key_file=cfg.key_file,
                listen_host=cfg.listen_host,
                port=cfg.port,
                bootstrap_peers=[],  # we dial them ourselves, retrying (see _bootstrap_loop)
                status_interval=cfg.status_interval,
                pubsub=cfg.pubsub,
                role="explorer",
            )
        )
        self.view = NetworkView(
            str(self.agent.peer_id),
            ViewConfig(
                node_ttl=cfg.node_ttl,
                max_nodes=cfg.max_nodes,
                rate_bucket=cfg.rate_bucket,
                rate_buckets=cfg.rate_buckets,
            ),
        )
        self.view.observed.update(WATCHED_TOPICS)
        self.bootstrap = BootstrapStatus(state="starting" if cfg.bootstrap_peers else "none")
        self.crawls = 0
        self.crawl_failures = 0
        self._tasks = TaskOwner(f"explorer {self.agent.peer_id}")
        self._subs: list[Subscription] = []
        self._listeners: list[Listener] = []
        self._changed = asyncio.Event()
        self._crawl_candidates: dict[PeerID, list[Multiaddr]] = {}
        self._started = False

    @property
    def peer_id(self) -> PeerID:
        return self.agent.peer_id

    def now(self) -> float:
        return self.agent.node.clock.monotonic()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.agent.start()
        node = self.agent.node
        node.identify_service.on_identified(self._on_identified)
        for topic in WATCHED_TOPICS:
            sub = self.agent.pubsub.subscribe(topic)
            self._subs.append(sub)
            self._tasks.spawn(self._consume(topic, sub), name=f"explorer {topic}")
        self._update_self()
        self._tasks.spawn(self._bootstrap_loop(), name="explorer bootstrap")
        self._tasks.spawn(self._crawl_loop(), name="explorer crawl")
        self._tasks.spawn(self._push_loop(), name="explorer push")

    async def close(self) -> None:
        await self._tasks.close()
        for sub in self._subs:
            sub.cancel()
        await self.agent.close()

    async def __aenter__(self) -> Explorer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- listeners (the web server's event stream) ----------------------------------------------

    def on_event(self, listener: Listener) -> None:
        """``listener(event name, JSON text)`` for every change the page should see."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _emit(self, name: str, payload: Any) -> None:
        text = json.dumps(payload, separators=(",", ":"))
        for listener in list(self._listeners):
            listener(name, text)

    # -- what the page reads --------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        now = self.now()
        return {
            "explorer": self.explorer_info(now),
            "rates": self.view.rates(now),
            "announcements": list(self.view.announcements),
            "dht": self.view.dht(now),
        }

    def explorer_info(self, now: float) -> dict[str, Any]:
        return {
            "peerId": str(self.peer_id),
            "bootstrap": self.bootstrap.to_json(now),
            "bootstrapPeers": list(self.config.bootstrap_peers),
            "connectedPeers": len(self.agent.node.peers()),
            "nodes": len(self.view.nodes),
            "ignoredStatuses": self.view.ignored_statuses,
            "lastIgnored": self.view.last_ignored,
            "evicted": self.view.evicted,
            "crawls": self.crawls,
            "crawlFailures": self.crawl_failures,
        }

    # -- facts from the network -----------------------------------------------------------------

    def _update_self(self) -> None:
        now = self.now()
        agent = self.agent
        self.view.set_self(agent.name, agent.eth_address, [str(a) for a in agent.p2p_addrs()], now)
        self.view.set_own_peers([str(p) for p in agent.node.peers()], now)

    def _on_identified(self, info: IdentifyInfo) -> None:
        self.view.on_identify(
            str(info.peer),
            info.agent_version,
            list(info.protocols),
            [str(a) for a in info.listen_addrs],
            self.now(),
        )

    async def _consume(self, topic: str, sub: Subscription) -> None:
        async for msg in sub:
            now = self.now()
            self.view.on_message(topic, now)
            if topic == MESSAGES_TOPIC:
                continue
            # The agent's validator accepted it already; open it again for its content.
            try:
                env = open_envelope(msg.data, now=self.agent.clock.time())
            except InvalidEnvelope:
                continue
            if env.peer_id == self.peer_id:
                continue
            if topic == STATUS_TOPIC:
                self.view.on_status(str(env.peer_id), env.sender, env.data, len(msg.data), now)
            else:
                before = self.view.announcements_version
                self.view.on_announcement(str(env.peer_id), env.sender, env.data, now)
                if self.view.announcements_version != before:
                    self._remember_addrs(env.peer_id, env.data)

    def _remember_addrs(self, peer: PeerID, data: Any) -> None:
        addrs = data.get("addrs") if isinstance(data, dict) else None
        if not isinstance(addrs, list):
            return
        parsed = []
        for text in addrs[:8]:
            with contextlib.suppress(Exception):  # multiaddr raises several types
                parsed.append(Multiaddr(text))
        if parsed:
            self.agent.node.host.peerstore.add_addrs(peer, parsed, TEMP_ADDR_TTL)

    # -- background work ------------------------------------------------------------------------

    async def _bootstrap_loop(self) -> None:
        """Reach the bootstrap peers, and again whenever every connection is lost; when and how
        often is the node's :class:`~p2pnet.backoff.BootstrapSchedule` decision."""
        cfg = self.config
        if not cfg.bootstrap_peers:
            return
        node = self.agent.node
        schedule = BootstrapSchedule(ExponentialBackoff(cfg.retry_initial, cfg.retry_max, node.rng))
        status = self.bootstrap
        while True:
            if schedule.state is ScheduleState.CONNECTED:
                if node.peers():
                    await asyncio.sleep(cfg.push_interval)
                    continue
                delay = schedule.peers_lost()
                if delay is not None:
                    self._set_bootstrap("retrying", "lost every connection", delay)
                    await asyncio.sleep(delay)
            status.attempts = schedule.attempt_started()
            try:
                await node.bootstrap(cfg.bootstrap_peers)
            except (P2PError, ValueError, OSError, TimeoutError) as exc:
                delay = schedule.attempt_failed()
                log.info("explorer: bootstrap peers unreachable (retry in %.1f s): %s", delay, exc)
                self._set_bootstrap("retrying", str(exc), delay)
                await asyncio.sleep(delay)
                continue
            schedule.attempt_succeeded()
            self._set_bootstrap("connected", "", None)

    def _set_bootstrap(self, state: str, error: str, retry_in: float | None) -> None:
        status = self.bootstrap
        status.state = state
        status.last_error = error[:300]
        status.next_retry_at = None if retry_in is None else self.now() + retry_in
        if state == "connected":
            status.connected_at = self.now()
        self._changed.set()

    async def _crawl_loop(self) -> None:
        cfg = self.config
        while True:
            if self.agent.node.peers():
                await self.crawl_once()
            await asyncio.sleep(cfg.crawl_interval)

    async def crawl_once(self) -> int:
        """Crawl every known DHT server once; returns how many answered."""
        host = self.agent.node.host
        servers = [PeerID.from_string(p) for p in self.view.servers()]
        seen = set(servers)
        for peer, addrs in list(self._crawl_candidates.items()):
            if peer not in seen and peer != self.peer_id:
                host.peerstore.add_addrs(peer, addrs, TEMP_ADDR_TTL)
                servers.append(peer)
                seen.add(peer)
        self._crawl_candidates.clear()
        servers = servers[:MAX_CRAWL_SERVERS]
        gate = asyncio.Semaphore(CRAWL_CONCURRENCY)

        async def one(server: PeerID) -> bool:
            async with gate:
                try:
                    result = await crawl(
                        host, server, timeout=self.config.crawl_timeout, rng=self.agent.node.rng
                    )
                except (P2PError, TimeoutError, OSError) as exc:
                    self.crawl_failures += 1
                    log.debug("crawl of %s failed: %s", server, exc)
                    return False
            buckets = {cpl: sorted(str(p) for p in peers) for cpl, peers in result.buckets.items()}
            self.view.on_crawl(str(server), buckets, self.now())
            for info in result.peers():
                if info.peer not in seen and info.peer != self.peer_id and info.addrs:
                    if len(self._crawl_candidates) < MAX_CRAWL_SERVERS:
                        self._crawl_candidates[info.peer] = list(info.addrs)
            return True

        answered = sum(await asyncio.gather(*(one(s) for s in servers)))
        self.crawls += 1
        return answered

    async def _push_loop(self) -> None:
        """Expire departed nodes and hand changes to the page, at most every push_interval."""
        sent = (-1, -1, -1, -1, -1)
        last_bucket = -1
        last_info = ""
        graph_due = 0.0
        while True:
            now = self.now()
            self._update_self()
            self.view.expire(now)
            view = self.view
            bucket = int(now // view.config.rate_bucket)
            graph_version = sent[0]
            if view.version != sent[0] and now >= graph_due:
                # A big network's graph takes a while to build and send: keep that under a
                # tenth of the time (a 2000-node graph is about 6 MB).
                started = self.now()
                self._emit("graph", view.graph())
                graph_due = now + 10 * (self.now() - started)
                graph_version = view.version
            if view.rates_version != sent[1] or bucket != last_bucket:
                self._emit("rates", view.rates(now))
            if view.announcements_version != sent[2]:
                self._emit("announcements", list(view.announcements))
            info = json.dumps(self.explorer_info(now), sort_keys=True)
            if info != last_info:
                self._emit("explorer", self.explorer_info(now))
                last_info = info
            if view.dht_version != sent[3]:
                self._emit("dht", view.dht(now))
            if view.status_version != sent[4]:
                self._emit("statuses", {"version": view.status_version})
            sent = (
                graph_version,
                view.rates_version,
                view.announcements_version,
                view.dht_version,
                view.status_version,
            )
            last_bucket = bucket
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.config.push_interval)
