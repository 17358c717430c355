"""Prometheus metrics of nodes: one registry per node, parsed with prometheus-client's parser,
values that move with traffic, bounded labels, and the /metrics + /healthz server (also as
p2p-node --metrics-port)."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from p2pnet.agent.agent import Agent, AgentConfig
from p2pnet.metrics import MetricsServer, node_registry, render
from p2pnet.metrics.collector import MAX_TOPIC_LABELS
from p2pnet.pubsub.params import GossipsubConfig
from p2pnet.pubsub.router import MAX_TOPIC_STATS, OTHER_TOPICS

FAST = GossipsubConfig(heartbeat_interval=0.2, heartbeat_initial_delay=0.05)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def scrape(agent: Agent) -> Samples:
    return parse(render({"x": node_registry(agent.node, agent)}).decode())


async def wait_until(cond: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.05)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Agent, Agent]]:
    boot = Agent(AgentConfig(name="boot", bootstrap_node=True, pubsub=FAST, bootstrap_peers=[]))
    await boot.start()
    agent = Agent(AgentConfig(name="a", pubsub=FAST, bootstrap_peers=[str(boot.p2p_addrs()[0])]))
    try:
        await agent.start()
        yield boot, agent
    finally:
        await agent.close()
        await boot.close()


async def test_metrics_move_with_traffic(pair: tuple[Agent, Agent]) -> None:
    boot, agent = pair
    await wait_until(lambda: agent.pubsub.mesh_peers("agent-messages"))
    before = scrape(agent)
    assert value(before, "libp2p_connection_manager_connections", direction="outbound") == 1
    assert value(before, "libp2p_connection_manager_connections", direction="inbound") == 0
    assert value(before, "libp2p_swarm_dial_attempt_total") >= 1
    assert value(before, "libp2p_kad_dht_wan_routing_table_size") == 1
    assert value(before, "gossipsub_mesh_peer_count", topicStr="agent-messages") == 1
    assert value(before, "libp2p_protocol_streams_total", protocol="/meshsub/1.2.0",
                 direction="outbound") == 1  # fmt: skip
    assert value(before, "p2pnet_agent_info", peer_id=str(agent.peer_id),
                 eth_address=agent.eth_address, name="a", agent_version="p2pnet/0.1.0",
                 mode="client") == 1  # fmt: skip
    boot_before = scrape(boot)

    for i in range(5):
        await agent.broadcast({"n": i})
    await wait_until(
        lambda: (
            value(scrape(boot), "gossipsub_accepted_messages_total", topic="agent-messages") >= 5
        )
    )
    after = scrape(agent)
    sent = value(after, "libp2p_data_transfer_bytes_total", protocol="global sent")
    assert sent > value(before, "libp2p_data_transfer_bytes_total", protocol="global sent")
    assert value(after, "gossipsub_msg_publish_count_total", topic="agent-messages") == 5
    assert value(after, "p2pnet_agent_messages_out_total") == 5
    boot_after = scrape(boot)
    assert value(boot_after, "p2pnet_agent_messages_in_total") == 5
    received = value(boot_after, "libp2p_data_transfer_bytes_total", protocol="global received")
    assert received > value(
        boot_before, "libp2p_data_transfer_bytes_total", protocol="global received"
    )
    # lookups and heartbeats were timed
    assert value(after, "libp2p_kad_dht_wan_query_time_seconds_count",
                 kind="get_closest_peers") >= 1  # fmt: skip
    assert value(after, "gossipsub_heartbeat_duration_seconds_count") >= 1

    # a dial to a closed port counts as an attempt and a failure
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Exception):  # noqa: B017 - any dial error
        await agent.node.connect(f"/ip4/127.0.0.1/tcp/{port}")
    failed = scrape(agent)
    assert (
        value(failed, "libp2p_swarm_outgoing_connection_error_total")
        == value(after, "libp2p_swarm_outgoing_connection_error_total") + 1
    )

    # bytes of a closed connection stay counted
    total = value(scrape(boot), "libp2p_data_transfer_bytes_total", protocol="global received")
    await agent.node.disconnect(boot.peer_id)
    await wait_until(lambda: not boot.node.peers())
    closed = value(scrape(boot), "libp2p_data_transfer_bytes_total", protocol="global received")
    assert closed >= total
    assert value(scrape(boot), "libp2p_connection_manager_connections", direction="inbound") == 0


async def test_rejected_messages_are_counted_per_topic(pair: tuple[Agent, Agent]) -> None:
    boot, agent = pair
    await wait_until(lambda: agent.pubsub.mesh_peers("agent-messages"))
    # Raw bytes that are no signed envelope: the boot node's validator rejects them.
    await agent.pubsub.publish("agent-messages", b"not an envelope")
    await wait_until(
        lambda: (
            value(scrape(boot), "gossipsub_rejected_messages_total", topic="agent-messages") == 1
        )
    )
    assert value(scrape(boot), "p2pnet_agent_messages_rejected_total") == 1


async def test_topic_labels_are_bounded(pair: tuple[Agent, Agent]) -> None:
    _, agent = pair
    router = agent.pubsub.router
    for i in range(MAX_TOPIC_STATS + 50):
        router._count_topic(f"spam-{i}", "delivered")
    assert len(router.topic_stats) <= MAX_TOPIC_STATS + 1
    samples = scrape(agent)
    topics = {
        dict(labels)["topic"]
        for (name, labels) in samples
        if name == "gossipsub_accepted_messages_total"
    }
    assert len(topics) <= MAX_TOPIC_LABELS + 1
    assert OTHER_TOPICS in topics
    # nothing lost: the per-topic values add up to every count
    counted = sum(s.get("delivered", 0) for s in router.topic_stats.values())
    assert counted >= MAX_TOPIC_STATS + 50
    assert router.topic_stats[OTHER_TOPICS]["delivered"] >= 50
    assert counted == sum(
        v for (name, _), v in samples.items() if name == "gossipsub_accepted_messages_total"
    )


async def test_server_serves_each_node_and_all_labelled(pair: tuple[Agent, Agent]) -> None:
    boot, agent = pair
    registries = {"boot": node_registry(boot.node, boot), "a": node_registry(agent.node, agent)}
    healthy = [True]
    server = MetricsServer(lambda: registries, port=0, health=lambda: (healthy[0], {"why": "test"}))
    async with server, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.port}"
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            both = parse(await resp.text())
        assert value(both, "libp2p_kad_dht_wan_mode", node="boot") == 1
        assert value(both, "libp2p_kad_dht_wan_mode", node="a") == 0
        async with http.get(f"{base}/metrics/a") as resp:
            one = parse(await resp.text())
        assert value(one, "libp2p_kad_dht_wan_mode") == 0
        assert all("node" not in dict(labels) for _, labels in one)
        async with http.get(f"{base}/metrics/nobody") as resp:
            assert resp.status == 404
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok", "nodes": ["a", "boot"], "why": "test"}
        healthy[0] = False
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 503
        async with http.post(f"{base}/metrics") as resp:
            assert resp.status == 405


async def test_p2p_node_metrics_port() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "p2pnet.cli.p2p_node",
        "--metrics-port",
        "0",
        "--bootstrap",
        "--bootstrap-peers",
        "",
        "--name",
        "m",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None

    async def event(kind: str) -> dict[str, object]:
        assert proc.stdout is not None
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            assert line, "p2p-node ended"
            ev = json.loads(line)
            if ev["type"] == kind:
                return ev  # type: ignore[no-any-return]

    try:
        url = str((await event("metrics"))["url"])
        async with aiohttp.ClientSession() as http:
            async with http.get(url.replace("/metrics", "/healthz")) as resp:
                assert resp.status == 503  # not connected yet: no node
            proc.stdin.write(b'{"type":"connect"}\n')
            await event("ready")
            async with http.get(url) as resp:
                samples = parse(await resp.text())
        assert value(samples, "libp2p_kad_dht_wan_mode") == 1
        assert value(samples, "p2pnet_agent_uptime_seconds") > 0
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_metrics_and_status_of_a_node_not_started_yet() -> None:
    agent = Agent(AgentConfig(name="idle"))
    samples = scrape(agent)
    assert value(samples, "libp2p_peers") == 0
    assert not any(name.startswith("gossipsub_") for name, _ in samples)
    status = agent.status()
    assert status["peers"] == 0 and status["mesh"] == {} and status["role"] == "agent"
    await agent.close()
