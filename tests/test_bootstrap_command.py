"""`p2pnet bootstrap`: a bootstrap node as a service (docs/deploy.md), run as a real process."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
from test_p2p_node import NodeProc

BOOTSTRAP = [sys.executable, "-m", "p2pnet", "bootstrap"]


async def test_bootstrap_refuses_to_start_without_a_stable_identity(tmp_path: Path) -> None:
    env = tmp_path / "node.env"
    env.write_text("BOOTSTRAP_PEERS=\n")
    for extra in ([], ["-e", str(env)]):
        proc = await asyncio.create_subprocess_exec(
            *BOOTSTRAP,
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2 and out == b""
        assert b"stable identity" in err


async def test_bootstrap_serves_agents_and_health(tmp_path: Path) -> None:
    args = ("--key-file", str(tmp_path / "boot.key"), "--port", "0", "--host", "127.0.0.1")
    boot = await NodeProc.spawn(
        *args, "--metrics-port", "0", "--bootstrap-peers", "", cmd=BOOTSTRAP, name="boot"
    )
    agent = await NodeProc.spawn("--bootstrap-peers", "", name="agent")
    try:
        metrics = await boot.expect("metrics")
        boot.ready = await boot.expect("ready")
        assert boot.ready["mode"] == "server"
        assert all("/127.0.0.1/" in a for a in boot.addrs)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{metrics['port']}/healthz") as resp:
                assert resp.status == 503  # alone: no peer yet
            await agent.connect(bootstrapPeers=boot.addrs)
            await boot.expect("peer_connected", peerId=agent.peer_id)
            async with http.get(f"http://127.0.0.1:{metrics['port']}/healthz") as resp:
                assert resp.status == 200
                body = await resp.json()
                assert body["status"] == "ok" and list(body["peers"].values()) == [1]
        assert boot.proc.stdin is not None
        boot.proc.stdin.close()  # runs on with stdin closed (--ignore-eof is the default)
        await agent.ok({"type": "status"}, "node-status")
        assert boot.proc.returncode is None
        boot.proc.send_signal(signal.SIGTERM)
        assert await boot.wait_exit() == 0
        assert boot.events[-1]["type"] == "shutdown"
    finally:
        await asyncio.gather(boot.close(), agent.close())
    boot.assert_clean()
    agent.assert_clean()
