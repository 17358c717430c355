"""The victim of the adversarial tests: one ordinary node in its own process.

Run as ``python tests/adversarial/victim.py``. It prints ``{"addrs": [...]}`` once listening,
then every 100 ms a JSON line with its RSS, peak RSS, task count, open fds and the resource
manager's usage; it logs warnings and errors (with tracebacks) to stderr, and exits at EOF on
stdin. Nothing else: whatever an attacker does must not show up as a traceback or a crash.

Options (environment): ``VICTIM_NOFILE`` (its fd limit), ``VICTIM_HOLD_FDS`` (fds it holds for
other things), ``VICTIM_KAD_LIVENESS`` = ``interval,grace,max_checks,timeout`` (the DHT's periodic
liveness check, seconds; interval 0 turns it off), ``VICTIM_AGENT=1`` (run as an agent: the
node carries an ETH identity and the agent topics; see :func:`agent_main`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import sys

from p2pnet.agent.agent import Agent, AgentConfig
from p2pnet.config import NodeConfig
from p2pnet.kad.config import KadConfig, Mode
from p2pnet.node import Node

TOPIC = "adversarial"


def _status_kib(field: str) -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:  # out of fds ourselves, for a moment
        pass
    return 0


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # out of fds ourselves, for a moment
        return -1


def kad_config() -> KadConfig:
    liveness = os.environ.get("VICTIM_KAD_LIVENESS")
    if not liveness:
        return KadConfig(mode=Mode.SERVER)
    interval, grace, checks, timeout = liveness.split(",")
    return KadConfig(
        mode=Mode.SERVER,
        liveness_interval=float(interval),
        liveness_grace=float(grace),
        max_liveness_checks=int(checks),
        liveness_timeout=float(timeout),
    )


def _pubsub_stat(node: Node, name: str) -> int:
    return node.pubsub.router.stats.get(name, 0) if node.pubsub is not None else 0


async def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    nofile = os.environ.get("VICTIM_NOFILE")
    if nofile:  # a victim short of file descriptors (the limits scale from this)
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(nofile), hard))
    # fds the application holds for other things (files, its own sockets): what is left for
    # connections is less than the resource manager's share of the limit
    held_elsewhere = [
        os.open(os.devnull, os.O_RDONLY) for _ in range(int(os.environ.get("VICTIM_HOLD_FDS", "0")))
    ]
    async with contextlib.AsyncExitStack() as stack:
        agent: Agent | None = None
        if os.environ.get("VICTIM_AGENT") == "1":
            # an agent (ETH identity, agent topics) that serves the DHT, with no bootstrap peers
            agent = Agent(
                AgentConfig(
                    name="victim",
                    bootstrap_node=True,
                    bootstrap_peers=[],
                    relay_service=False,
                    autonat_server=False,
                    kad=kad_config(),
                )
            )
            await stack.enter_async_context(agent)
            node = agent.node
        else:
            node = await stack.enter_async_context(Node(NodeConfig(kad=kad_config())))
        sub = node.subscribe(TOPIC)
        print(json.dumps({"addrs": [str(a) for a in node.p2p_addrs()]}), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        eof = asyncio.ensure_future(reader.read())
        resources = node.host.resources
        store = node.host.peerstore
        samples = 0
        while not eof.done():
            if samples % 10 == 0:
                # a full collection every second (not every sample: in a victim holding many
                # objects it takes tens of ms, which the legitimate peer would see as latency)
                gc.collect()
            samples += 1
            stat = {
                "rss_kib": _status_kib("VmRSS"),
                "hwm_kib": _status_kib("VmHWM"),
                "tasks": len(asyncio.all_tasks()),
                "fds": _open_fds(),
                "conns": len(node.host.connections()),
                "memory": resources.system.used("memory"),
                "streams": resources.system.used("streams_inbound"),
                "refused": sum(resources.refused.values()),
                "evicted": sum(n for k, n in resources.refused.items() if k.endswith("_evicted")),
                "rpc_graylisted": _pubsub_stat(node, "rpc_graylisted"),
                "max_peer_addrs": max((len(store.addrs(p)) for p in store.peers()), default=0),
                "dht_records": len(node.dht.records) if node.dht is not None else 0,
                "dht_providers": len(node.dht.providers) if node.dht is not None else 0,
                "kad_table": len(node.dht.routing_table) if node.dht is not None else 0,
                "agent_statuses": len(agent.statuses) if agent is not None else 0,
                "agent_announced": len(agent.announced) if agent is not None else 0,
            }
            print(json.dumps(stat), flush=True)
            await asyncio.wait([eof], timeout=0.1)
        del sub
    for fd in held_elsewhere:
        os.close(fd)


if __name__ == "__main__":
    asyncio.run(main())
