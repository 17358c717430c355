"""The ``--metrics-port`` HTTP server: ``/metrics`` (Prometheus text) and ``/healthz``.

One process may run several nodes (the devnet does): each has its own registry. ``/metrics``
then serves all of them, every sample labelled ``node="<name>"``; ``/metrics/<name>`` serves one
node alone. With a single node, ``/metrics`` is that node's registry unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from p2pnet.metrics.collector import node_registry
from p2pnet.web_site import start_site

if TYPE_CHECKING:
    from p2pnet.agent.agent import Agent

log = logging.getLogger("p2pnet.metrics")

#: name -> registry, read on every request (nodes may appear later, as p2p-node's does).
RegistrySource = Callable[[], Mapping[str, CollectorRegistry]]
#: ``(healthy, details)`` for ``/healthz``.
HealthCheck = Callable[[], tuple[bool, dict[str, object]]]


class LabelledUnion(Collector):
    """Several registries as one, each sample labelled with the name of its registry."""

    def __init__(self, registries: Mapping[str, CollectorRegistry], label: str = "node") -> None:
        self.registries = registries
        self.label = label

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for name, registry in self.registries.items():
            for fam in registry.collect():
                out = merged.get(fam.name)
                if out is None:
                    out = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                for s in fam.samples:
                    out.add_sample(
                        s.name, {**s.labels, self.label: name}, s.value, s.timestamp, s.exemplar
                    )
        yield from merged.values()


def render(registries: Mapping[str, CollectorRegistry]) -> bytes:
    """Prometheus text for one registry as it is, or several labelled by node."""
    if len(registries) == 1:
        return generate_latest(next(iter(registries.values())))
    union = CollectorRegistry(auto_describe=False)
    union.register(LabelledUnion(registries))
    return generate_latest(union)


class MetricsServer:
    """``async with MetricsServer(source, port=9090) as server: ...``; ``server.port`` is the
    bound port (pass 0 for a free one)."""

    def __init__(
        self,
        source: RegistrySource,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        health: HealthCheck | None = None,
    ) -> None:
        self.source = source
        self.host = host
        self.port = port
        self.health = health
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/metrics/{name}", self._metrics_of)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def start(self) -> int:
        self._runner, self.port = await start_site(self.app(), self.host, self.port)
        log.info("metrics at http://%s:%d/metrics", self.host, self.port)
        return self.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _metrics(self, request: web.Request) -> web.Response:
        registries = self.source()
        return _exposition(render(registries))

    async def _metrics_of(self, request: web.Request) -> web.Response:
        registry = self.source().get(request.match_info["name"])
        if registry is None:
            raise web.HTTPNotFound(text="no node of that name\n")
        return _exposition(generate_latest(registry))

    async def _healthz(self, request: web.Request) -> web.Response:
        nodes = sorted(self.source())
        ok, details = self.health() if self.health is not None else (True, {})
        body: dict[str, object] = {"status": "ok" if ok else "unhealthy", "nodes": nodes}
        body.update(details)
        return web.json_response(body, status=200 if ok else 503)


def _exposition(data: bytes) -> web.Response:
    # CONTENT_TYPE_LATEST carries a charset parameter; aiohttp wants it apart.
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


class AgentRegistries:
    """Registries for agents that come and go (p2p-node creates its agent on ``connect``):
    ``AgentRegistries(lambda: [agent, ...])`` is a :data:`RegistrySource`."""

    def __init__(self, agents: Callable[[], list[Agent]]) -> None:
        self.agents = agents
        self._cache: dict[int, tuple[Agent, CollectorRegistry]] = {}

    def __call__(self) -> dict[str, CollectorRegistry]:
        live = self.agents()
        ids = {id(a) for a in live}
        for key in [k for k in self._cache if k not in ids]:
            del self._cache[key]
        out: dict[str, CollectorRegistry] = {}
        for agent in live:
            entry = self._cache.get(id(agent))
            if entry is None:
                entry = self._cache[id(agent)] = (agent, node_registry(agent.node, agent))
            out[agent.name or str(agent.peer_id)] = entry[1]
        return out


async def serve_agent_metrics(
    port: int, agents: Callable[[], list[Agent]], host: str = "127.0.0.1"
) -> MetricsServer:
    """Start a metrics server for the agents ``agents()`` returns; OSError if ``port`` is taken.
    ``/healthz`` is healthy while every agent has at least one connection."""

    def health() -> tuple[bool, dict[str, object]]:
        live = agents()
        peers = {a.name or str(a.peer_id): len(a.node.peers()) for a in live}
        return bool(live) and all(peers.values()), {"peers": peers}

    server = MetricsServer(AgentRegistries(agents), host=host, port=port, health=health)
    await server.start()
    return server
