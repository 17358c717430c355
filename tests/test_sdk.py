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


async def test_sdk_network(nodes: list[P2PNode]) -> None:
    boot = P2PNode("boot", bootstrap=True, bootstrap_peers=[])
    await start_all(nodes, boot)
    assert boot.mode == "server" and boot.peer_id in boot.addrs[0]
    alice = P2PNode("alice", bootstrap_peers=boot.addrs)
    bob = P2PNode("bob", bootstrap_peers=boot.addrs, include_logs=True, log_level="info")
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


async def test_sdk_private_key_sets_the_identity(nodes: list[P2PNode]) -> None:
    key = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
    node = P2PNode("keyed", private_key=key, bootstrap_peers=[])
    await start_all(nodes, node)
    assert node.eth_address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert key[2:] not in " ".join(node.command())  # the key never shows in `ps`


async def test_sdk_process_death_fails_pending_calls_and_ends_events(
    nodes: list[P2PNode],
) -> None:
    node = P2PNode("dies", executable=fake_node(READY + "read()\nsys.exit(3)\n"))
    await start_all(nodes, node)
    events = node.events()
    with pytest.raises(P2PNodeError) as err:
        await node.discover("x")
    assert err.value.code == PROCESS_EXITED and "status 3" in err.value.message
    assert [e async for e in events] == []
    assert await node.stop() == 3


async def test_sdk_timeouts_and_stop_escalation(nodes: list[P2PNode]) -> None:
    silent = P2PNode("silent", executable=fake_node("time.sleep(60)\n"), start_timeout=0.5)
    assert silent.stop_timeout == 10.0  # a node that never answered is not waited for
    stubborn = P2PNode(
        "stubborn",
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
    slow = P2PNode("slow", executable=fake_node("time.sleep(60)\n"))
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
    node = P2PNode("x", bootstrap=True, env_file="a.env", log_level="debug", extra_args=["-p", "5"])
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
