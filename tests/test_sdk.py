"""The SDK (p2pnet.sdk.P2PNode) against real p2p-node processes, and against small fake
executables for the failures a real node does not produce on demand (hangs, crashes)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from p2pnet.sdk import PROCESS_EXITED, TIMEOUT, P2PNode, P2PNodeError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "agent.py"
TIMEOUT_S = 15.0


def fake_node(body: str) -> list[str]:
    """A stand-in for p2p-node: a Python script with ``read()`` (one command) and ``say()``."""
    prelude = textwrap.dedent(
        """
        import json, os, sys, time
        def read():
            line = sys.stdin.readline()
            return json.loads(line) if line else None
        def say(obj):
            sys.stdout.write(json.dumps(obj) + "\\n"); sys.stdout.flush()
        """
    )
    return [sys.executable, "-c", prelude + textwrap.dedent(body)]


READY = """
cmd = read()
say({"type": "ready", "id": cmd["id"], "peerId": "16Uiu2fake", "ethAddress": "0x" + "00" * 20,
     "addrs": [], "name": "fake", "mode": "client"})
"""


@pytest.fixture
async def nodes() -> AsyncIterator[list[P2PNode]]:
    """Nodes a test registers here are stopped (and reaped) even when the test fails; no task
    of the SDK may outlive them."""
    before = asyncio.all_tasks()
    started: list[P2PNode] = []
    try:
        yield started
    finally:
        await asyncio.gather(*(n.stop() for n in started), return_exceptions=True)
        for n in started:
            assert n.returncode is not None, f"{n.name} still running"
        current = asyncio.current_task()
        leaked = [t for t in asyncio.all_tasks() - before if not t.done() and t is not current]
        assert leaked == [], leaked


def data_is(data: Any, topic: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def match(event: dict[str, Any]) -> bool:
        return event["data"] == data and (topic is None or event.get("topic") == topic)

    return match


async def start_all(registry: list[P2PNode], *new: P2PNode) -> None:
    registry.extend(new)
    await asyncio.gather(*(n.start() for n in new))


@pytest.mark.parametrize("interface", ["grpc", "json"])
async def test_sdk_network(nodes: list[P2PNode], interface: str) -> None:
    boot = P2PNode("boot", bootstrap=True, bootstrap_peers=[], interface=interface)
    await start_all(nodes, boot)
    assert boot.mode == "server" and boot.peer_id in boot.addrs[0]
    alice = P2PNode("alice", bootstrap_peers=boot.addrs, interface=interface)
    bob = P2PNode(
        "bob", bootstrap_peers=boot.addrs, include_logs=True, log_level="info", interface=interface
    )
    bob_logs = bob.events()  # from before the start: sees the start's logs
    await start_all(nodes, alice, bob)
    assert alice.eth_address.startswith("0x") and alice.mode == "client"

    bob_events = bob.events()
    await asyncio.gather(alice.subscribe("room"), bob.subscribe("room"))
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            found = await alice.discover("room")
            if bob.peer_id in {p["peerId"] for p in found}:
                break
            await asyncio.sleep(0.2)
    mine = next(p for p in found if p["peerId"] == bob.peer_id)
    assert mine["ethAddress"] == bob.eth_address and "room" in mine["topics"]

    assert await alice.send(bob.peer_id, {"n": 1}) == bob.peer_id
    assert await alice.send(bob.eth_address, {"n": 2}) == bob.peer_id
    for n in (1, 2):
        msg = await bob_events.wait_for("message", data_is({"n": n}))
        assert msg["from"] == alice.peer_id and msg["fromEth"] == alice.eth_address
        assert msg["direct"] is True
    async with asyncio.timeout(TIMEOUT_S):
        for n in range(100):
            await alice.broadcast({"b": n}, "room")
            try:
                await bob_events.wait_for("message", data_is({"b": n}, topic="room"), 0.5)
                break
            except TimeoutError:
                continue
    log = await bob_logs.wait_for("log", timeout=5)  # include_logs: logs are events too
    assert log["level"] in ("info", "warning", "error") and log["namespace"].startswith("p2pnet")

    status = await alice.status()
    assert status["connected"] is True and status["peers"] >= 1

    with pytest.raises(P2PNodeError) as err:
        await alice.send("0x" + os.urandom(20).hex(), "nobody")
    assert err.value.code == "PEER_NOT_FOUND"
    with pytest.raises(P2PNodeError) as err:
        await alice.send("0x12", "bad")
    assert err.value.code == "INVALID_FIELDS" and err.value.event is not None

    # Concurrent calls are matched to their own answers.
    sends = [alice.send(bob.peer_id, {"c": i}) for i in range(10)]
    results, status, _ = await asyncio.gather(
        asyncio.gather(*sends), alice.status(), alice.discover("room")
    )
    assert results == [bob.peer_id] * 10 and status["type"] == "node-status"

    assert await bob.stop() == 0
    assert not bob.running
    assert [e async for e in bob_events if e["type"] == "message" and "c" in e["data"]]
    with pytest.raises(P2PNodeError) as err:
        await bob.subscribe("late")
    assert err.value.code == PROCESS_EXITED
    assert await bob.stop() == 0  # idempotent


async def test_sdk_start_errors_leave_no_process(nodes: list[P2PNode], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        in_use = P2PNode("busy", port=busy.getsockname()[1], bootstrap_peers=[])
        nodes.append(in_use)
        with pytest.raises(P2PNodeError) as err:
            await in_use.start()
    assert err.value.code == "PORT_IN_USE" and in_use.returncode == 0

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    dead = f"/ip4/127.0.0.1/tcp/{free}/p2p/16Uiu2HAmBUswuXdATx1MDhJ8NhisSbp2De8YyDSkHz35ZWeRfL9p"
    unreachable = P2PNode("lost", bootstrap_peers=[dead])
    bad_key = P2PNode("badkey", private_key="0x1234", bootstrap_peers=[])
    env = tmp_path / "bad.env"
    env.write_text("PRIVATE_KEY=not-a-key\n")
    bad_env = P2PNode("badenv", env_file=env)
    nodes.extend([unreachable, bad_key, bad_env])
    outcomes = await asyncio.gather(
        unreachable.start(), bad_key.start(), bad_env.start(), return_exceptions=True
    )
    codes = [e.code if isinstance(e, P2PNodeError) else e for e in outcomes]
    assert codes == ["DIAL_FAILED", "INVALID_FIELDS", "INVALID_FIELDS"], outcomes
    assert all(n.returncode is not None for n in (unreachable, bad_key, bad_env))
    assert bad_env.returncode == 2

    never = P2PNode("never")
    with pytest.raises(P2PNodeError) as err:
        await never.send("0x" + "00" * 20, 1)
    assert err.value.code == PROCESS_EXITED


@pytest.mark.parametrize("interface", ["grpc", "json"])
async def test_sdk_retry_bootstrap_starts_without_a_bootstrap_peer(
    nodes: list[P2PNode], interface: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    dead = f"/ip4/127.0.0.1/tcp/{free}/p2p/16Uiu2HAmBUswuXdATx1MDhJ8NhisSbp2De8YyDSkHz35ZWeRfL9p"
    patient = P2PNode("patient", bootstrap_peers=[dead], retry_bootstrap=True, interface=interface)
    events = patient.events()
    await start_all(nodes, patient)
    assert patient.ready["peerId"].startswith("16Uiu2")
    failed = await events.wait_for("bootstrap_failed")
    assert failed["attempt"] == 1 and failed["retryIn"] > 0


async def test_sdk_private_key_sets_the_identity(nodes: list[P2PNode]) -> None:
    key = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
    node = P2PNode("keyed", private_key=key, bootstrap_peers=[])
    await start_all(nodes, node)
    assert node.eth_address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert key[2:] not in " ".join(node.command())  # the key never shows in `ps`


async def test_sdk_process_death_fails_pending_calls_and_ends_events(
    nodes: list[P2PNode],
) -> None:
    node = P2PNode("dies", interface="json", executable=fake_node(READY + "read()\nsys.exit(3)\n"))
    await start_all(nodes, node)
    events = node.events()
    with pytest.raises(P2PNodeError) as err:
        await node.discover("x")
    assert err.value.code == PROCESS_EXITED and "status 3" in err.value.message
    assert [e async for e in events] == []
    assert await node.stop() == 3


async def test_sdk_timeouts_and_stop_escalation(nodes: list[P2PNode]) -> None:
    silent = P2PNode(
        "silent", interface="json", executable=fake_node("time.sleep(60)\n"), start_timeout=0.5
    )
    assert silent.stop_timeout == 10.0  # a node that never answered is not waited for
    stubborn = P2PNode(
        "stubborn",
        interface="json",
        executable=fake_node(
            "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            + READY
            + "while True:\n    read() or time.sleep(60)\n"
        ),
        command_timeout=0.5,
        stop_timeout=0.5,
    )
    nodes.extend([silent, stubborn])
    with pytest.raises(P2PNodeError) as err:
        await silent.start()
    assert err.value.code == TIMEOUT and silent.returncode is not None

    await stubborn.start()
    with pytest.raises(P2PNodeError) as err:
        await stubborn.subscribe("t")
    assert err.value.code == TIMEOUT
    assert await stubborn.stop() == -signal.SIGKILL  # ignored shutdown, EOF and SIGTERM


async def test_sdk_cancelled_start_reaps_the_process(nodes: list[P2PNode]) -> None:
    slow = P2PNode("slow", interface="json", executable=fake_node("time.sleep(60)\n"))
    nodes.append(slow)
    task = asyncio.create_task(slow.start())
    async with asyncio.timeout(10):  # cancel once the process exists (start waits for "ready")
        while slow.pid is None:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slow.returncode is not None


async def test_sdk_async_with_and_events_end(nodes: list[P2PNode]) -> None:
    async with P2PNode("ctx", bootstrap_peers=[]) as node:
        events = node.events()
        assert node.running and node.pid is not None
    assert node.returncode == 0 and not node.running
    assert [e async for e in events] == []


async def test_example_agent_replies_and_greets(nodes: list[P2PNode]) -> None:
    boot = P2PNode("boot", bootstrap=True, bootstrap_peers=[])
    await start_all(nodes, boot)
    me = P2PNode("me", bootstrap_peers=boot.addrs)
    example = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "--name",
        "example",
        "--bootstrap-peers",
        boot.addrs[0],
        "--topic",
        "demo",
        "--discover-interval",
        "0.5",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        await start_all(nodes, me)
        events = me.events()
        await me.subscribe("demo")
        # The example discovers us on its topic and greets us.
        greeting = await events.wait_for(
            "message", lambda e: isinstance(e["data"], dict) and e["data"].get("kind") == "greeting"
        )
        assert greeting["data"]["from"] == "example" and greeting["direct"] is True
        # It answers a direct message with a reply.
        await me.send(greeting["fromEth"], {"question": "are you there?"})
        reply = await events.wait_for(
            "message", lambda e: isinstance(e["data"], dict) and e["data"].get("kind") == "reply"
        )
        assert reply["data"]["re"] == {"question": "are you there?"}
        # It prints what it does (the reply's line comes once our acknowledgement arrived).
        assert example.stdout is not None
        lines: list[str] = []
        async with asyncio.timeout(TIMEOUT_S):
            while not any("replied to" in line for line in lines):
                lines.append((await example.stdout.readline()).decode())
                assert lines[-1], f"example ended early: {lines}"
        example.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(example.communicate(), TIMEOUT_S)
        assert example.returncode == 0
        text = "".join(lines) + out.decode()
        assert "ready: peer" in text and "greeted" in text and "message direct from" in text
        assert "stopped (p2p-node exit status 0)" in text
    finally:
        if example.returncode is None:
            example.kill()
            await example.wait()


async def test_default_command_runs_this_interpreter() -> None:
    node = P2PNode(
        "x",
        bootstrap=True,
        env_file="a.env",
        log_level="debug",
        extra_args=["-p", "5"],
        interface="json",
    )
    cmd = node.command()
    assert cmd[:3] == [sys.executable, "-m", "p2pnet.cli.p2p_node"]
    assert cmd[3:] == [
        "--name",
        "x",
        "--env-file",
        "a.env",
        "--bootstrap",
        "--log-level",
        "debug",
        "-p",
        "5",
    ]
    with pytest.raises(ValueError):
        P2PNode(log_level="loud")


async def test_agent_in_the_design_flow(nodes: list[P2PNode]) -> None:
    from p2pnet.sdk import Agent, Message

    key = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
    boot = P2PNode("boot", bootstrap=True, bootstrap_peers=[])
    await start_all(nodes, boot)
    with pytest.raises(P2PNodeError) as err:
        await Agent("nobody", 0, key).start()
    assert err.value.code == "UNAVAILABLE" and "start P2PNode('nobody'" in err.value.message

    node = P2PNode("design", 0, key, bootstrap_peers=boot.addrs)  # grpc_port given: no join
    await start_all(nodes, node)
    assert node.ready["connected"] is False and node.grpc_port > 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        p2p_port = s.getsockname()[1]
    agent = Agent("design", p2p_port, key)
    info = await agent.start()
    assert info["ethAddress"] == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert any(f"/tcp/{p2p_port}/" in a for a in agent.addrs)
    # Another handle on the same node, found by its gRPC port, agrees on the port ...
    same = Agent("design", p2p_port, grpc_port=node.grpc_port)
    assert (await same.start())["peerId"] == agent.peer_id
    await same.stop()
    # ... one that wants another port is told the node joined elsewhere.
    other = Agent("design", p2p_port + 1 if p2p_port < 65535 else 1, node=node)
    with pytest.raises(P2PNodeError) as err:
        await other.start()
    assert err.value.code == "ALREADY_CONNECTED"

    peer = P2PNode("peer", bootstrap_peers=boot.addrs)
    await start_all(nodes, peer)
    got: asyncio.Queue[Message] = asyncio.Queue()

    @agent.on_message
    async def collect(message: Message) -> None:
        await got.put(message)

    room = agent.messages("room")  # registered now: nothing from here on is missed
    await agent.subscribe("room")
    await peer.subscribe("room")
    await peer.send(agent.eth_address, {"direct": True})
    direct = await asyncio.wait_for(got.get(), TIMEOUT_S)
    assert direct.data == {"direct": True} and direct.direct and direct.from_eth == peer.eth_address
    # Which connection carried it: a direct TCP one here (the peer dialled the agent).
    assert direct.via is not None and direct.via.startswith("/ip4/127.0.0.1/tcp/"), direct
    assert "/p2p-circuit" not in direct.via
    async with asyncio.timeout(TIMEOUT_S):
        while True:  # until the topic's mesh formed
            await peer.broadcast({"room": 1}, "room")
            try:
                msg = await room.next(timeout=0.5)
                break
            except TimeoutError:
                continue
    assert msg.topic == "room" and msg.data == {"room": 1} and not msg.direct and msg.via is None
    assert peer.peer_id in await agent.peers()
    assert await agent.send(peer.eth_address, "hi") == peer.peer_id
    await agent.unsubscribe("room")
    await agent.stop()
    rest = [m async for m in room]  # what was still queued, then the end
    assert all(m.data == {"room": 1} for m in rest)
    with pytest.raises(P2PNodeError):
        await agent.send(peer.eth_address, "after stop")


async def test_grpc_interface_needs_a_node_that_serves_grpc(nodes: list[P2PNode]) -> None:
    json_only = P2PNode("old", executable=fake_node("say({'type': 'hello'})\nread()\n"))
    nodes.append(json_only)
    with pytest.raises(P2PNodeError) as err:
        await json_only.start()  # its first line is no grpc_listening
    assert err.value.code == "UNAVAILABLE" and "reported no gRPC port" in err.value.message
    assert json_only.returncode is not None
    crash = P2PNode("crash", executable=fake_node("sys.exit(4)\n"))
    nodes.append(crash)
    with pytest.raises(P2PNodeError) as err:
        await crash.start()
    assert err.value.code == PROCESS_EXITED and "status 4" in err.value.message


async def test_grpc_node_ends_with_its_application() -> None:
    app = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(
            """
            import asyncio, sys
            from p2pnet.sdk import P2PNode
            async def main():
                node = P2PNode("orphan", bootstrap_peers=[])
                await node.start()
                print(node.pid, flush=True)
                await asyncio.sleep(60)
            asyncio.run(main())
            """
        ),
        stdout=asyncio.subprocess.PIPE,
    )
    assert app.stdout is not None
    node_pid = int(await asyncio.wait_for(app.stdout.readline(), TIMEOUT_S))
    app.kill()  # the application dies without stopping its node
    await app.wait()
    try:
        async with asyncio.timeout(TIMEOUT_S):  # the node sees EOF on stdin and stops
            while _alive(node_pid):
                await asyncio.sleep(0.1)
    finally:
        if _alive(node_pid):
            os.kill(node_pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status.split("State:")[1].split("\n")[0]


async def test_agent_raises_when_its_node_is_killed(nodes: list[P2PNode]) -> None:
    from p2pnet.sdk import Agent

    node = P2PNode("doomed", 0, bootstrap_peers=[])
    await start_all(nodes, node)
    agent = Agent("doomed")
    await agent.start()
    messages = agent.messages()
    assert node.pid is not None
    os.kill(node.pid, signal.SIGKILL)
    with pytest.raises(P2PNodeError) as err:
        await asyncio.wait_for(agent.send("0x" + "11" * 20, 1), TIMEOUT_S)
    assert err.value.code == PROCESS_EXITED and "status -9" in err.value.message
    assert [m async for m in messages] == []  # ends
    await agent.stop()
