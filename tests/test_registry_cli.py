"""`p2pnet registry` against a real anvil: deploy, register, status, watch; bad input."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from anvil_chain import Anvil, fund, require_anvil
from eth_account import Account

from p2pnet.registry.anvil import ANVIL_KEYS

CLI = [sys.executable, "-m", "p2pnet", "registry"]


async def run(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def anvil() -> AsyncIterator[Anvil]:
    require_anvil()
    chain = await Anvil.start()
    try:
        yield chain
    finally:
        await chain.stop()


async def test_deploy_register_status_watch(anvil: Anvil, tmp_path: Path) -> None:
    code, out, err = await run(
        "deploy", "--rpc-url", anvil.url, "--private-key", ANVIL_KEYS[0], "--json"
    )
    assert code == 0, err
    address = json.loads(out)["address"]
    key = "0x" + "11" * 32
    agent = Account.from_key(key).address
    await fund(anvil.url, agent)
    env = tmp_path / "agent.env"
    env.write_text(f"PRIVATE_KEY={key}\nREGISTRY_ADDRESS={address}\nRPC_URL={anvil.url}\n")

    watcher = await asyncio.create_subprocess_exec(
        *CLI,
        "watch",
        "--env-file",
        str(env),
        "--json",
        "--poll",
        "0.2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert watcher.stdout is not None
        first = json.loads(await asyncio.wait_for(watcher.stdout.readline(), 30))
        assert first["watching"] == f"eip155:31337:{address}"

        code, out, err = await run(
            "register",
            "--env-file",
            str(env),
            "--name",
            "alice",
            "--addr",
            "/ip4/127.0.0.1/tcp/4001",
            "--json",
        )
        assert code == 0, err
        result = json.loads(out)
        assert result["agentId"] == 0
        assert result["agentURI"].startswith("data:application/json;base64,")

        seen = []
        async with asyncio.timeout(15):
            while "Registered" not in seen:
                line = await watcher.stdout.readline()
                assert line, "watch ended"
                seen.append(json.loads(line)["event"])
    finally:
        watcher.terminate()
        await watcher.wait()

    code, out, _ = await run("status", agent, "--env-file", str(env))
    assert code == 0
    assert "registered" in out and "agentId 0" in out and "(alice)" in out
    assert "service libp2p: /ip4/127.0.0.1/tcp/4001/p2p/16Uiu2" in out
    stranger = Account.from_key("0x" + "22" * 32).address
    code, out, _ = await run("status", stranger, "--env-file", str(env), "--json")
    assert code == 3 and json.loads(out)["registered"] is False


async def test_bad_input(anvil: Anvil, tmp_path: Path) -> None:
    code, _, err = await run("deploy", "--rpc-url", "not a url", "--private-key", ANVIL_KEYS[0])
    assert code == 2 and "INVALID_FIELDS" in err
    code, _, err = await run("status", "0x1234", "--rpc-url", anvil.url, "--registry", "banana")
    assert code == 2 and "REGISTRY_ADDRESS" in err
    code, _, err = await run("register", "--rpc-url", anvil.url)
    assert code == 2 and "missing" in err
    no_code = Account.from_key("0x" + "33" * 32).address
    code, _, err = await run("status", no_code, "--rpc-url", anvil.url, "--registry", no_code)
    assert code == 1 and "REGISTRY_UNAVAILABLE" in err and "no contract" in err


async def test_watch_survives_the_chain_going_away(tmp_path: Path) -> None:
    require_anvil()
    state = tmp_path / "chain.json"
    chain = await Anvil.start(state=state)
    watcher = None
    try:
        code, out, err = await run(
            "deploy", "--rpc-url", chain.url, "--private-key", ANVIL_KEYS[0], "--json"
        )
        assert code == 0, err
        address = json.loads(out)["address"]
        watcher = await asyncio.create_subprocess_exec(
            *CLI,
            "watch",
            "--rpc-url",
            chain.url,
            "--registry",
            address,
            "--json",
            "--poll",
            "0.2",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert watcher.stdout is not None

        async def line() -> dict[str, object]:
            assert watcher is not None and watcher.stdout is not None
            raw = await asyncio.wait_for(watcher.stdout.readline(), 30)
            assert raw, "watch ended"
            return dict(json.loads(raw))

        assert "watching" in await line()
        port = chain.port
        await chain.stop()
        assert "unreachable" in await line()
        chain = await Anvil.start(port=port, state=state)
        assert "reachable" in await line()
    finally:
        if watcher is not None and watcher.returncode is None:
            watcher.terminate()
            await watcher.wait()
        await chain.stop()
