"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader) drives a real p2p-node over gRPC: the
original design's TypeScript agents talking to their node, with the .proto as the only shared
artifact."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from p2pnet.sdk import P2PNode

from .conftest import ensure_interop
from .jspeer import INTEROP_DIR, node_executable

PROTO = Path(__file__).resolve().parents[2] / "p2pnet" / "rpc" / "agent_node.proto"
SCRIPT = INTEROP_DIR / "grpc_agent.mjs"
TIMEOUT = 60.0


async def test_js_client_connects_subscribes_sends_and_receives() -> None:
    ensure_interop()
    node_bin = node_executable()
    assert node_bin is not None
    boot = P2PNode("boot", bootstrap=True, bootstrap_peers=[])
    bob = P2PNode("bob")
    target = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "p2pnet.cli.p2p_node",
        "--name",
        "js-driven",
        "-g",
        "0",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    js: asyncio.subprocess.Process | None = None
    try:
        await boot.start()
        bob.bootstrap_peers = boot.addrs
        await bob.start()
        bob_events = bob.events()
        assert target.stdout is not None
        first = json.loads(await asyncio.wait_for(target.stdout.readline(), TIMEOUT))
        assert first["type"] == "grpc_listening"
        js = await asyncio.create_subprocess_exec(
            node_bin,
            str(SCRIPT),
            str(PROTO),
            f"127.0.0.1:{first['grpcPort']}",
            boot.addrs[0],
            bob.eth_address,
            "js-room",
            cwd=str(INTEROP_DIR),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        # Bob answers the Node.js agent's message with a direct message of his own.
        hello = await bob_events.wait_for(
            "message", lambda e: isinstance(e["data"], dict) and e["data"].get("from") == "js"
        )
        assert hello["direct"] is True and hello["data"]["text"] == "hello from Node.js"
        await bob.send(hello["fromEth"], {"reply": "hi, Node.js"})
        out, err = await asyncio.wait_for(js.communicate(), TIMEOUT)
        steps: dict[str, dict[str, Any]] = {}
        for line in out.decode().splitlines():
            step = json.loads(line)
            steps[step["step"]] = step
        assert js.returncode == 0, (out.decode(), err.decode())
        assert (
            steps["info"]["connected"] is False and steps["info"]["grpcPort"] == first["grpcPort"]
        )
        assert steps["send-before-connect"]["code"] == "FAILED_PRECONDITION"
        assert steps["send-before-connect"]["details"].startswith("NOT_CONNECTED: ")
        assert steps["ready"]["ethAddress"] == hello["fromEth"]
        assert steps["sent"]["to"] == bob.peer_id
        assert steps["message"]["data"] == {"reply": "hi, Node.js"}
        assert steps["message"]["direct"] is True
        kinds, seqs = steps["events"]["kinds"], steps["events"]["seqs"]
        assert kinds[0] == "ready" and "peer_connected" in kinds and "message" in kinds
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # every event, in order
        assert "shutdown" in steps
        assert await asyncio.wait_for(target.wait(), TIMEOUT) == 0  # stdin still open
    finally:
        for proc in (js, target):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        await asyncio.gather(bob.stop(), boot.stop())
