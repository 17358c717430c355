"""`p2pnet devnet` as a user runs it: a real process, its output checked."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from p2pnet.registry.anvil import anvil_binary


async def test_devnet_every_agent_finds_every_other_and_messages_arrive() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "p2pnet",
        "devnet",
        "--agents",
        "5",
        "--duration",
        "1",
        "--no-explorer",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text[-3000:] + err.decode()[-3000:]
    result_lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert len(result_lines) == 1
    result = json.loads(result_lines[0][len("RESULT ") :])
    assert result["agents"] == 5 and result["bootstrap"] == 4
    assert result["resolved"] == result["resolve_expected"] == 20
    assert result["resolve_failed"] == 0
    assert result["direct_sent"] == 20 and result["broadcast_sent"] == 5
    assert result["direct_delivered"] == result["direct_expected"] == 20
    assert result["broadcast_delivered"] == result["broadcast_expected"] == 20
    assert result["discovered"] == result["discover_expected"] == 4
    assert result["errors"] == []
    # With anvil installed the devnet runs on a chain with REGISTRY_POLICY=enforce, and the
    # unregistered intruder is refused; without it, it says so and runs with the policy off.
    scene = result["registry"]
    if anvil_binary() is not None:
        assert scene["policy"] == "enforce"
        assert scene["direct_refused"] is True
        assert scene["refusals"] >= 1 and scene["lowest_score"] < 0
        for needle in ("IdentityRegistry (ERC-8004) deployed at 0x", "NOT registered", "refused"):
            assert needle in text, needle
    else:
        assert scene["policy"] == "off" and "REGISTRY_POLICY=off" in text
    # The narration shows the steps a user should see.
    for needle in (
        "bootstrap (DHT server) up",
        "joined as 0x",
        "via DHT",
        "<- direct from",
        "<- broadcast on agent-messages",
        "status: peers=",
        "all nodes closed",
    ):
        assert needle in text, needle


def _ignore_sigint() -> None:
    # What `p2pnet devnet &` in a non-interactive shell does to the child.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def test_devnet_ctrl_c_closes_everything() -> None:
    """Ctrl-C works even when SIGINT was ignored at start (devnet run in the background from a
    script), and the result line is still printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "p2pnet",
        "devnet",
        "--agents",
        "2",
        "--explorer-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_ignore_sigint,
    )
    assert proc.stdout is not None
    seen = []
    try:
        async with asyncio.timeout(60):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "devnet ended before the exchange"
                seen.append(line)
                if "exchanged messages" in line:
                    break
        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130
    text = rest.decode()
    assert "all nodes closed" in text
    assert "Traceback" not in text
    results = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 1, text
    result = json.loads(results[0][len("RESULT ") :])
    assert result["interrupted"] is True and result["direct_delivered"] == 2


async def test_devnet_refuses_a_negative_duration() -> None:
    for bad in ("-1", "nan", "soon"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "p2pnet",
            "devnet",
            "--duration",
            bad,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2 and out == b"", (bad, out)
        assert b"--duration" in err


async def test_devnet_runs_the_explorer_and_metrics() -> None:
    """`p2pnet devnet` (what ./run.sh runs) prints the explorer's URL; the page's JSON shows
    the four bootstrap nodes, the agents and the explorer; /metrics labels every node."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "p2pnet",
        "devnet",
        "--agents",
        "3",
        "--duration",
        "30",
        "--explorer-port",
        "0",
        "--metrics-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    urls: dict[str, str] = {}
    try:
        async with asyncio.timeout(60):
            while len(urls) < 2:
                line = (await proc.stdout.readline()).decode()
                assert line, "devnet ended early"
                for key, marker in (("explorer", "in your browser: "), ("metrics", "node: ")):
                    if marker in line:
                        urls[key] = line.split(marker, 1)[1].strip()
            async with aiohttp.ClientSession() as http:
                while True:
                    async with http.get(urls["explorer"] + "api/graph") as resp:
                        graph = await resp.json()
                    roles = [n["role"] for n in graph["nodes"]]
                    if roles.count("bootstrap") == 4 and roles.count("agent") == 3:
                        break
                    await asyncio.sleep(0.2)
                assert roles.count("explorer") == 1
                async with http.get(urls["metrics"]) as resp:
                    text = await resp.text()
        nodes = {
            s.labels["node"]
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if fam.name == "libp2p_kad_dht_wan_mode"
        }
        assert nodes == {
            "boot-us-east",
            "boot-us-west",
            "boot-eu-west",
            "boot-sea",
            "agent-1",
            "agent-2",
            "agent-3",
            "explorer",
        }
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_devnet_without_anvil_says_so_and_runs_with_the_policy_off() -> None:
    import os

    env = {**os.environ, "P2PNET_ANVIL": "/nonexistent/anvil"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "p2pnet",
        "devnet",
        "--agents",
        "2",
        "--duration",
        "0",
        "--no-explorer",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text[-3000:] + err.decode()[-3000:]
    assert "anvil not found" in text and "REGISTRY_POLICY=off" in text
    result = json.loads(next(ln for ln in text.splitlines() if ln.startswith("RESULT "))[7:])
    assert result["registry"] == {"policy": "off"} and result["errors"] == []
