"""``p2pnet explorer``: join a network as a client node and serve the explorer page."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable

from p2pnet.agent.agent import Agent
from p2pnet.config import ConfigError, common_env_settings, read_env_file, split_list
from p2pnet.explorer import Explorer, ExplorerConfig, ExplorerWeb
from p2pnet.metrics.server import MetricsServer, serve_agent_metrics
from p2pnet.pubsub.params import GossipsubConfig


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "explorer",
        help="watch an agent network and serve a live page of it (http://127.0.0.1:8080)",
        description="Join the network as an ordinary client node and serve a read-only page "
        "of it: nodes, connections, gossipsub meshes, message rates, announcements and the "
        "DHT servers' routing tables (docs/explorer.md).",
    )
    p.add_argument(
        "--bootstrap-peers", help="comma-separated multiaddrs with /p2p/ (overrides the env file)"
    )
    p.add_argument("-e", "--env-file", help="KEY=value file (BOOTSTRAP_PEERS, PRIVATE_KEY)")
    p.add_argument("--key-file", help="keep the explorer's identity in this file")
    p.add_argument("--name", default="explorer", help="the explorer node's name")
    p.add_argument("--host", default="127.0.0.1", help="p2p listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="p2p TCP port (default: free)")
    p.add_argument("--http-host", default="127.0.0.1", help="page address (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=8080, help="page port (default 8080)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve /metrics and /healthz")
    p.add_argument(
        "--node-ttl", type=float, default=90.0, help="seconds without news before a node leaves"
    )
    p.add_argument("--crawl-interval", type=float, default=30.0, help="seconds between crawls")
    p.add_argument("--retry-max", type=float, default=30.0, help="longest bootstrap retry delay")
    p.set_defaults(func=_main)


def config_from_args(args: argparse.Namespace) -> ExplorerConfig:
    env = read_env_file(args.env_file) if args.env_file else {}
    settings = common_env_settings(env)
    peers = settings.get("bootstrap_peers", [])
    if args.bootstrap_peers is not None:
        peers = split_list(args.bootstrap_peers)
    return ExplorerConfig(
        name=args.name,
        bootstrap_peers=list(peers),
        private_key=settings.get("private_key"),
        key_file=args.key_file,
        listen_host=args.host,
        port=args.port,
        http_host=args.http_host,
        http_port=args.http_port,
        node_ttl=args.node_ttl,
        crawl_interval=args.crawl_interval,
        retry_max=args.retry_max,
    )


async def run_explorer(config: ExplorerConfig, metrics_port: int | None = None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    explorer = Explorer(config)
    web = ExplorerWeb(explorer, config.http_host, config.http_port)
    metrics = None
    await explorer.start()
    try:
        try:
            await web.start()
        except OSError as exc:
            print(f"explorer: cannot serve on {config.http_host}:{config.http_port}: {exc}",
                  file=sys.stderr)  # fmt: skip
            return 2
        if metrics_port is not None:
            metrics = await serve_agent_metrics(metrics_port, lambda: [explorer.agent])
            print(f"metrics: {metrics.url}", flush=True)
        print(f"explorer: {web.url}", flush=True)
        print(f"explorer node: {explorer.agent.p2p_addrs()[0]}", flush=True)
        await stop.wait()
    finally:
        if metrics is not None:
            await metrics.close()
        await web.close()
        await explorer.close()
    return 0


def _main(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"explorer: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run_explorer(config, args.metrics_port))


class DevnetExtras:
    """The explorer and the metrics server that ``p2pnet devnet`` runs beside its nodes."""

    def __init__(self) -> None:
        self.explorer: Explorer | None = None
        self.web: ExplorerWeb | None = None
        self.metrics: MetricsServer | None = None

    async def start(
        self,
        seeds: list[str],
        explorer_port: int | None,
        metrics_port: int | None,
        agents: Callable[[], list[Agent]],
        say: Callable[[str, str], None],
        status_interval: float,
    ) -> None:
        if explorer_port is not None:
            self.explorer = Explorer(
                ExplorerConfig(
                    bootstrap_peers=seeds,
                    status_interval=status_interval,
                    crawl_interval=10.0,
                    pubsub=GossipsubConfig(heartbeat_interval=0.5),
                )
            )
            await self.explorer.start()
            self.web = ExplorerWeb(self.explorer, port=explorer_port)
            try:
                await self.web.start()
            except OSError as exc:
                say("explorer", f"port {explorer_port} is taken ({exc.strerror}): using a free one")
                self.web = ExplorerWeb(self.explorer, port=0)
                await self.web.start()
            say("explorer", f"the network live in your browser: {self.web.url}")
        if metrics_port is not None:
            explorer = self.explorer

            def nodes() -> list[Agent]:
                return agents() + ([explorer.agent] if explorer is not None else [])

            self.metrics = await serve_agent_metrics(metrics_port, nodes)
            say("metrics", f"Prometheus metrics of every node: {self.metrics.url}")

    async def close(self) -> None:
        if self.metrics is not None:
            await self.metrics.close()
        if self.web is not None:
            await self.web.close()
        if self.explorer is not None:
            await self.explorer.close()
