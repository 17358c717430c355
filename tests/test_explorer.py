"""The explorer's JSON endpoints and event stream against a real loopback network, its DHT
crawl, and bad input: malformed and oversized status reports, 1000 announcing identities,
bootstrap peers down at start. The page itself is tested in test_explorer_browser.py."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from explorer_net import (
    Net,
    dead_bootstrap_network,
    eventually,
    flood_announcements,
)

from p2pnet.agent.agent import Agent
from p2pnet.agent.constants import STATUS_TOPIC
from p2pnet.agent.envelope import seal
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.explorer.crawler import crawl
from p2pnet.explorer.view import MAX_STATUS_BYTES, NetworkView, ViewConfig, sanitize_status
from p2pnet.explorer.web import MAX_EVENT_CLIENTS
from p2pnet.kad.errors import KadProtocolError
from p2pnet.node import Node
from p2pnet.peer.peer_id import PeerID


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    network = Net()
    try:
        yield await network.start(boots=2, agents=3)
    finally:
        await network.close()


async def test_graph_nodes_roles_edges_and_details(net: Net) -> None:
    expected = net.expected_roles()
    await eventually(lambda: _same_roles(net, expected))
    graph = await net.graph()
    by_id = {n["id"]: n for n in graph["nodes"]}
    agent = net.agents[0]
    assert by_id[str(agent.peer_id)]["name"] == "agent-0"
    assert by_id[str(agent.peer_id)]["ethAddress"].lower() == agent.eth_address.lower()
    # every agent is connected to the bootstrap nodes; the explorer too
    edges = {frozenset((e["source"], e["target"])) for e in graph["edges"]}

    def linked() -> bool:
        return all(
            frozenset((str(a.peer_id), str(net.boots[0].peer_id))) in edges for a in net.agents
        )

    async def fresh_edges() -> bool:
        nonlocal edges
        g = await net.graph()
        edges = {frozenset((e["source"], e["target"])) for e in g["edges"]}
        return linked()

    await eventually(fresh_edges)
    assert net.explorer is not None
    me = str(net.explorer.peer_id)
    assert frozenset((me, str(net.boots[0].peer_id))) in edges
    # mesh links per topic
    graph = await net.graph()
    assert graph["mesh"]["node-status"]

    async def reported() -> Any:
        status, details = await net.get(f"/api/nodes/{agent.peer_id}")
        assert status == 200
        return details if details["statusAge"] is not None else None

    details = await eventually(reported)
    assert details["name"] == "agent-0" and details["role"] == "agent"
    assert details["agentVersion"] == "p2pnet/0.1.0"
    assert details["dhtTableSize"] == 2 and details["mode"] == "client"
    assert details["registry"] is None  # not reported until the registry lands
    assert str(net.boots[0].peer_id) in details["scores"]
    assert details["uptime"] > 0 and details["messagesOut"] >= 0
    assert set(details["topics"]) >= {"agent-announcements", "agent-messages", "node-status"}

    assert (await net.get(f"/api/nodes/{PeerID.from_public_key(_key().public_key)}"))[0] == 404
    assert (await net.get("/api/nodes/not-a-peer-id"))[0] == 404
    assert (await net.get("/api/nodes/" + "x" * 5000))[0] == 404
    assert net.http is not None
    async with net.http.post(net.url + "api/graph") as resp:
        assert resp.status == 405  # read-only


async def test_later_node_appears_crashed_and_leaving_nodes_disappear(net: Net) -> None:
    await eventually(lambda: _same_roles(net, net.expected_roles()))
    late = await net.add_agent("late")
    await eventually(lambda: _has(net, late, "agent"))
    crashed = net.agents[0]
    await net.crash(crashed)
    # no status, no connection: gone after node_ttl (3 s here, 90 s by default)
    await eventually(lambda: _gone(net, crashed), timeout=10)
    leaving = net.agents[1]
    await leaving.close()  # announces "leave": gone at once
    await eventually(lambda: _gone(net, leaving), timeout=2.5)
    await eventually(lambda: _same_roles(net, net.expected_roles()))


async def test_event_stream_carries_graph_and_moving_rates(net: Net) -> None:
    await eventually(lambda: _same_roles(net, net.expected_roles()))
    assert net.http is not None
    async with net.http.get(net.url + "api/events") as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = _sse(resp)
        first = {}
        while len(first) < 5:
            name, data = await asyncio.wait_for(events.__anext__(), 5)
            first[name] = data
        assert {"graph", "explorer", "rates", "announcements", "dht"} <= set(first)
        assert len(first["graph"]["nodes"]) == len(net.expected_roles())
        before = first["rates"]["totals"].get("agent-messages", 0)
        await _wait_mesh(net.agents)
        for i in range(6):
            await net.agents[i % len(net.agents)].broadcast({"n": i})
        async with asyncio.timeout(10):
            while True:
                name, data = await events.__anext__()
                if name == "rates" and data["totals"].get("agent-messages", 0) >= before + 6:
                    break


async def test_crawl_reads_each_servers_buckets() -> None:
    network = Net()
    try:
        await network.start(boots=4, agents=1)
        assert network.explorer is not None
        host = network.explorer.agent.node.host
        for boot in network.boots:
            result = await crawl(host, boot.peer_id, timeout=5)
            table = boot.dht.routing_table
            want = {c: set(table.bucket(c)) for c in table.bucket_sizes()}
            got = {c: set(peers) for c, peers in result.buckets.items()}
            assert got == want and sum(len(v) for v in want.values()) == 3
        # the explorer's own crawl loop shows them on /api/state
        _, state = await eventually(lambda: _crawled(network, 4))
        rows = {row["id"]: row for row in state["dht"]}
        boot = network.boots[0]
        assert {p for peers in rows[str(boot.peer_id)]["buckets"].values() for p in peers} == {
            str(b.peer_id) for b in network.boots[1:]
        }
    finally:
        await network.close()


async def test_malformed_and_oversized_status_reports_are_ignored(net: Net) -> None:
    liar = net.agents[0]
    await eventually(lambda: _has(net, liar, "agent"))
    assert net.explorer is not None
    view = net.explorer.view
    await _wait_mesh(net.agents, STATUS_TOPIC)
    await eventually(lambda: view.nodes[str(liar.peer_id)].status is not None)
    bad_reports: list[Any] = [
        "not an object",
        {"name": 5},
        {**liar.status(), "peers": -1},
        {**liar.status(), "connectedPeers": "everyone"},
        {**liar.status(), "uptime": float("inf")},
        {**liar.status(), "name": "x" * (MAX_STATUS_BYTES + 10)},  # oversized
    ]
    ignored = view.ignored_statuses
    for report in bad_reports:
        try:
            envelope = seal(liar.node.key, "status", report, topic=STATUS_TOPIC, **fresh(liar))
        except ValueError:  # inf is not JSON: send what a buggy node would (a string)
            report = {**report, "uptime": "inf"}
            envelope = seal(liar.node.key, "status", report, topic=STATUS_TOPIC, **fresh(liar))
        await liar.pubsub.publish(STATUS_TOPIC, envelope)
    await eventually(lambda: view.ignored_statuses >= ignored + len(bad_reports))
    # the node keeps its last good report, the explorer keeps serving
    node = view.nodes.get(str(liar.peer_id))
    assert node is not None and node.status is not None and node.status["name"] == "agent-0"
    status, state = await net.get("/api/state")
    assert status == 200 and state["explorer"]["ignoredStatuses"] >= len(bad_reports)
    assert (await net.get(f"/api/nodes/{liar.peer_id}"))[0] == 200


async def test_a_thousand_announcing_identities_keep_memory_bounded() -> None:
    network = Net()
    try:
        await network.start(boots=1, agents=2, max_nodes=300)
        assert network.explorer is not None
        explorer = network.explorer
        await _wait_mesh(network.agents, "agent-announcements")
        await eventually(lambda: _same_roles(network, network.expected_roles()))
        fakes = await flood_announcements(network.agents[0], 1000)
        await eventually(lambda: explorer.view.evicted >= 600, timeout=30)
        view = explorer.view
        assert len(view.nodes) <= 300
        assert len(view.announcements) <= view.config.max_announcements
        assert len(explorer.agent.announced) <= 1024
        # the real nodes stay (they keep reporting), the page's JSON stays bounded
        await eventually(lambda: _same_roles_subset(network, network.expected_roles()))
        status, graph = await network.get("/api/graph")
        assert status == 200 and len(graph["nodes"]) <= 300
        assert len(json.dumps(graph)) < 300 * 400
        shown = {n["id"] for n in graph["nodes"]}
        assert len(shown & {str(f) for f in fakes}) > 0
    finally:
        await network.close()


async def test_bootstrap_down_at_start_is_reported_and_retried() -> None:
    network, boot_up = await dead_bootstrap_network()
    try:

        async def retrying() -> Any:
            _, state = await network.get("/api/state")
            b = state["explorer"]["bootstrap"]
            return b["state"] == "retrying" and b["attempts"] >= 2 and b["lastError"] and state

        state = await eventually(retrying, timeout=10)
        assert state["explorer"]["connectedPeers"] == 0
        # the bootstrap node comes up at that address: the explorer gets in on its own
        await boot_up()

        async def connected() -> bool:
            _, state = await network.get("/api/state")
            return bool(state["explorer"]["bootstrap"]["state"] == "connected")

        await eventually(connected, timeout=10)
        await eventually(lambda: _same_roles(network, network.expected_roles()))
    finally:
        await network.close()


def test_sanitize_status_keeps_documented_fields_and_bounds() -> None:
    key = _key()
    pid = str(PeerID.from_public_key(key.public_key))
    report = {
        "name": "n" * 500,
        "ethAddress": "0x" + "ab" * 20,
        "uptime": 1.5,
        "peers": 1,
        "mesh": {"t": 1},
        "dhtTableSize": 3,
        "messagesIn": 1,
        "messagesOut": 2,
        "rejected": 0,
        "connectedPeers": [pid] * 500 + ["<script>"],
        "unknown": "dropped",
        "role": "overlord",
    }
    clean = sanitize_status(report)
    assert len(clean["name"]) == 64 and "unknown" not in clean
    assert clean["role"] == "agent"  # unknown roles become agents
    assert len(clean["connectedPeers"]) == 50 and "<script>" not in clean["connectedPeers"]
    view = NetworkView("self", ViewConfig(max_nodes=10))
    for i in range(50):
        other = str(PeerID.from_public_key(_key().public_key))
        view.on_status(other, "0x" + "00" * 20, {**report, "name": f"n{i}"}, 100, float(i))
    assert len(view.nodes) == 10 and view.evicted == 40
    assert not view.on_status(pid, "0x", report, MAX_STATUS_BYTES + 1, 60.0)


# -- helpers ----------------------------------------------------------------------------------


def fresh(agent: Agent) -> dict[str, Any]:
    """The time and nonce an agent signs an envelope with."""
    return {"now": agent.clock.time(), "nonce": agent.node.rng.randbytes(8)}


def _key() -> KeyPair:
    return KeyPair.generate(KeyType.Secp256k1)


async def _same_roles(net: Net, expected: dict[str, str]) -> bool:
    return await net.roles() == expected


async def _same_roles_subset(net: Net, expected: dict[str, str]) -> bool:
    roles = await net.roles()
    return all(roles.get(p) == r for p, r in expected.items())


async def _has(net: Net, agent: Agent, role: str) -> bool:
    return (await net.roles()).get(str(agent.peer_id)) == role


async def _gone(net: Net, agent: Agent) -> bool:
    return str(agent.peer_id) not in await net.roles()


async def _crawled(net: Net, servers: int) -> Any:
    status, state = await net.get("/api/state")
    rows = [r for r in state["dht"] if r["buckets"]]
    return (status, state) if len(rows) >= servers else None


async def _wait_mesh(agents: list[Agent], topic: str = "agent-messages") -> None:
    await eventually(lambda: all(a.pubsub.mesh_peers(topic) for a in agents))


async def _sse(resp: Any) -> AsyncIterator[tuple[str, Any]]:
    name = ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield name, json.loads(line[6:])


async def test_event_streams_are_limited(net: Net) -> None:
    assert net.http is not None
    streams = []
    try:
        for _ in range(MAX_EVENT_CLIENTS):
            resp = await net.http.get(net.url + "api/events")
            assert resp.status == 200
            streams.append(resp)
        async with net.http.get(net.url + "api/events") as resp:
            assert resp.status == 503
    finally:
        for resp in streams:
            resp.close()
    # closed streams free their slots
    await eventually(lambda: _stream_ok(net))


async def _stream_ok(net: Net) -> bool:
    assert net.http is not None
    async with net.http.get(net.url + "api/events") as resp:
        return resp.status == 200


async def test_crawl_of_a_lying_or_silent_server_fails_cleanly() -> None:
    """A "DHT server" that answers garbage, or nothing: the crawl fails with a protocol error
    or a timeout, the stream is reset, the explorer counts the failure and carries on."""
    async with Node() as liar, Node() as silent, Node() as asker:

        async def garbage(stream: Any) -> None:
            await stream.read()
            await stream.write(b"\x05\xff\xff\xff\xff\xff")  # a frame that is no kad message
            await stream.close()

        async def mute(stream: Any) -> None:
            await asyncio.sleep(30)

        liar.set_stream_handler("/ipfs/kad/1.0.0", garbage)
        silent.set_stream_handler("/ipfs/kad/1.0.0", mute)
        await asker.connect(liar.p2p_addrs()[0])
        await asker.connect(silent.p2p_addrs()[0])
        with pytest.raises(KadProtocolError):
            await crawl(asker.host, liar.peer_id, timeout=5)
        with pytest.raises(TimeoutError):
            await crawl(asker.host, silent.peer_id, timeout=0.5)
        kad = [
            s
            for c in asker.host.connections()
            for s in c.muxed.streams
            if s.protocol == "/ipfs/kad/1.0.0"
        ]
        assert kad == []  # both crawl streams were reset


async def test_explorer_command_serves_the_page_and_metrics(tmp_path: Any) -> None:
    """`p2pnet explorer -e env` as a user runs it, its bootstrap peer down: it prints the URL,
    says it is retrying, serves /metrics, and stops cleanly on SIGTERM."""
    key = _key()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{PeerID.from_public_key(key.public_key)}"
    env = tmp_path / "explorer.env"
    env.write_text(f"BOOTSTRAP_PEERS={addr}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pnet", "explorer", "-e", str(env), "--http-port", "0",
        "--metrics-port", "0", "--retry-max", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    urls: dict[str, str] = {}
    try:
        async with asyncio.timeout(30):
            while "explorer" not in urls:
                line = (await proc.stdout.readline()).decode()
                assert line, "explorer ended early"
                name, _, url = line.partition(": ")
                urls[name] = url.strip()
            async with aiohttp.ClientSession() as http:
                while True:
                    async with http.get(urls["explorer"] + "api/state") as resp:
                        state = await resp.json()
                    if state["explorer"]["bootstrap"]["state"] == "retrying":
                        break
                    await asyncio.sleep(0.1)
                assert state["explorer"]["bootstrapPeers"] == [addr]
                async with http.get(urls["explorer"]) as resp:
                    assert "p2pnet explorer" in await resp.text()
                async with http.get(urls["metrics"]) as resp:
                    assert "libp2p_swarm_outgoing_connection_error_total" in await resp.text()
                async with http.get(urls["metrics"].replace("/metrics", "/healthz")) as resp:
                    assert resp.status == 503  # no connection yet
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_rates_of_unwatched_topics_come_from_published_counters() -> None:
    view = NetworkView("self", ViewConfig(rate_bucket=5.0, rate_buckets=12))
    view.observed.add("agent-messages")
    peer = str(PeerID.from_public_key(_key().public_key))
    base = {
        "name": "n",
        "ethAddress": "0x" + "ab" * 20,
        "uptime": 1.0,
        "peers": 0,
        "mesh": {},
        "dhtTableSize": 0,
        "messagesIn": 0,
        "messagesOut": 0,
        "rejected": 0,
    }

    def report(chat: int, watched: int) -> dict[str, Any]:
        counters = {"chat": {"published": chat}, "agent-messages": {"published": watched}}
        return {**base, "topicCounters": counters}

    assert view.on_status(peer, "0x", report(0, 0), 100, 100.0)
    assert view.on_status(peer, "0x", report(10, 50), 100, 110.0)  # 10 in 10 s
    rates = view.rates(110.0)
    assert rates["totals"] == {"chat": 10}  # the watched topic is counted from messages only
    assert rates["series"]["chat"][-3:] == [1.0, 1.0, 0.0]  # 5 per 5-s bucket: 1 msg/s
    # a restarted node (counter went back) adds nothing
    assert view.on_status(peer, "0x", report(3, 0), 100, 115.0)
    assert view.rates(115.0)["totals"] == {"chat": 10}
    view.on_message("agent-messages", 115.0)
    assert view.rates(115.0)["totals"] == {"agent-messages": 1, "chat": 10}


def test_connected_peers_stay_and_silent_ones_expire() -> None:
    view = NetworkView("self", ViewConfig(node_ttl=10.0))
    plain, gone = (str(PeerID.from_public_key(_key().public_key)) for _ in range(2))
    view.on_identify(plain, "js-libp2p/1.0", ["/ipfs/id/1.0.0"], [], 0.0)
    view.on_identify(gone, "go-libp2p/1.0", ["/ipfs/kad/1.0.0"], [], 0.0)
    assert view.nodes[gone].role == "bootstrap" and view.nodes[plain].role == "agent"
    for t in range(1, 30):
        view.set_own_peers([plain], float(t))  # still connected to `plain` only
        view.expire(float(t))
    assert plain in view.nodes and gone not in view.nodes


async def test_explorer_command_with_its_port_taken_exits_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "p2pnet", "explorer", "--http-port", str(port),
            "--bootstrap-peers", "",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 2
    assert f"cannot serve on 127.0.0.1:{port}" in err.decode()
    assert "Traceback" not in err.decode()
