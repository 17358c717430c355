"""The registry contract and the chain backend against a real anvil, and bad RPC input."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from anvil_chain import Anvil, require_anvil
from eth_account import Account

from p2pnet.clock import VirtualClock
from p2pnet.registry.anvil import ANVIL_KEYS, CONTRACTS_DIR
from p2pnet.registry.chain import ChainRegistry
from p2pnet.registry.errors import RegistrySettingsError, RegistryUnavailable
from p2pnet.registry.guard import RegistryGuard
from p2pnet.registry.registration import (
    build_registration,
    data_uri,
    fetch_registration,
)
from p2pnet.registry.settings import RegistrySettings
from p2pnet.registry.transactions import (
    RegistryWriter,
    TransactionFailed,
    deploy_registry,
    load_artifact,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOYER, ALICE, BOB = ANVIL_KEYS
ALICE_ADDR = Account.from_key(ALICE).address
BOB_ADDR = Account.from_key(BOB).address


@pytest.fixture
async def chain() -> AsyncIterator[tuple[Anvil, str]]:
    require_anvil()
    anvil = await Anvil.start()
    try:
        receipt = await deploy_registry(anvil.url, DEPLOYER)
        assert receipt.contract_address is not None
        yield anvil, receipt.contract_address
    finally:
        await anvil.stop()


def test_artifact_is_up_to_date(tmp_path: Path) -> None:
    """Recompiling contracts/IdentityRegistry.sol with the pinned solc-js gives the committed
    artifact byte for byte."""
    node = shutil.which("node")
    if node is None or not (CONTRACTS_DIR / "node_modules" / "solc").is_dir():
        require_anvil()  # same rule: skip locally, fail in CI
        pytest.skip("solc-js not installed (cd contracts && npm ci)")
    out = tmp_path / "IdentityRegistry.json"
    subprocess.run([node, str(CONTRACTS_DIR / "compile.mjs"), str(out)], check=True, timeout=120)
    committed = ROOT / "p2pnet" / "registry" / "IdentityRegistry.json"
    assert out.read_bytes() == committed.read_bytes(), "stale: run `node contracts/compile.mjs`"
    artifact = load_artifact()
    names = {e["name"] for e in artifact["abi"] if e["type"] in ("function", "event")}
    for needed in (
        "register",
        "setAgentURI",
        "tokenURI",
        "ownerOf",
        "balanceOf",
        "getMetadata",
        "setMetadata",
        "getAgentWallet",
        "Registered",
        "URIUpdated",
        "Transfer",
    ):
        assert needed in names


async def test_deploy_register_resolve(chain: tuple[Anvil, str]) -> None:
    anvil, address = chain
    reg = build_registration("alice", "16Uiu2Peer", ["/ip4/127.0.0.1/tcp/4001"])
    uri = data_uri(reg)
    async with RegistryWriter(anvil.url, address, ALICE) as alice:
        first, _ = await alice.register(uri)
        second, _ = await alice.register(None)
    assert (first, second) == (0, 1)  # agentIds count from 0, as in the ERC's reference
    backend = ChainRegistry(anvil.url, address)
    await backend.connect()
    try:
        assert backend.ref == f"eip155:31337:{address}"
        assert await backend.balance_of(ALICE_ADDR) == 2
        assert await backend.balance_of(BOB_ADDR) == 0
        token = await backend.token(0)
        assert token is not None
        assert token.owner == token.wallet == ALICE_ADDR
        assert token.uri == uri
        assert await backend.token(7) is None
        assert await backend.find_agent_id(ALICE_ADDR) in (0, 1)
        assert await backend.find_agent_id(BOB_ADDR) is None
        file = await fetch_registration(token.uri)
        assert file.name == "alice"
        libp2p = file.libp2p()
        assert libp2p is not None
        assert libp2p["endpoint"] == "/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2Peer"
        kinds = [e.kind for e in await backend.events(0, await backend.latest_block())]
        assert kinds.count("Registered") == 2 and kinds.count("Transfer") == 2
    finally:
        await backend.close()
    async with RegistryWriter(anvil.url, address, BOB) as bob:
        with pytest.raises(TransactionFailed):
            await bob.set_agent_uri(0, "data:,stolen")  # not the owner


async def test_websocket_rpc(chain: tuple[Anvil, str]) -> None:
    anvil, address = chain
    async with RegistryWriter(anvil.ws_url, address, ALICE) as alice:
        agent_id, _ = await alice.register("data:,x")
    backend = ChainRegistry(anvil.ws_url, address)
    await backend.connect()
    try:
        assert await backend.balance_of(ALICE_ADDR) == 1
        token = await backend.token(agent_id)
        assert token is not None and token.uri == "data:,x"
    finally:
        await backend.close()


async def test_guard_follows_events(chain: tuple[Anvil, str]) -> None:
    """Registration, URI update, agentWallet, and a transfer that takes the status away: the
    guard sees each through the events, without waiting for the cache TTL."""
    anvil, address = chain
    guard = RegistryGuard(
        RegistrySettings.parse(address, anvil.url, "enforce"), ttl=3600, poll_interval=3600
    )
    await guard.start()
    try:
        assert await guard.admit(ALICE_ADDR) is not None  # not registered yet
        async with RegistryWriter(anvil.url, address, ALICE) as alice:
            agent_id, _ = await alice.register(data_uri({"name": "alice-1"}))
            assert ALICE_ADDR.lower() in await guard.poll_events()
            assert await guard.admit(ALICE_ADDR) is None
            note = await guard.annotation(ALICE_ADDR, agent_id)
            assert note["registered"] is True and note["agentId"] == agent_id
            assert note["agentName"] == "alice-1"
            await alice.set_agent_uri(agent_id, data_uri({"name": "alice-2"}))
            await guard.poll_events()
            assert (await guard.annotation(ALICE_ADDR, agent_id))["agentName"] == "alice-2"
            # BOB becomes the agentWallet of alice's token: registered through the id it states.
            assert await guard.admit(BOB_ADDR) is not None
            await alice.set_agent_wallet(agent_id, BOB)
            await guard.poll_events()
            assert await guard.admit(BOB_ADDR, agent_id) is None
            assert await guard.admit(BOB_ADDR) is not None  # without stating the id: no
            # Alice gives her token to the deployer: both lose it (the wallet is cleared).
            deployer = Account.from_key(DEPLOYER).address
            await alice.transfer(agent_id, deployer)
        touched = await guard.poll_events()
        assert ALICE_ADDR.lower() in touched
        assert await guard.admit(ALICE_ADDR) is not None
        assert await guard.admit(BOB_ADDR, agent_id) is not None
        assert await guard.admit(deployer) is None
    finally:
        await guard.close()


@pytest.mark.parametrize("transport", ["http", "ws"])
async def test_rpc_killed_and_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, transport: str
) -> None:
    """The chain goes away: known answers come from the cache, unknown agents are refused (fail
    closed) and it is logged; when the chain is back, the guard recovers by itself."""
    require_anvil()
    state = tmp_path / "state.json"
    anvil = await Anvil.start(state=state)
    port = anvil.port
    try:
        address = (await deploy_registry(anvil.url, DEPLOYER)).contract_address
        assert address is not None
        async with RegistryWriter(anvil.url, address, ALICE) as alice:
            await alice.register("data:,a")
        clock = VirtualClock()
        url = anvil.url if transport == "http" else anvil.ws_url
        guard = RegistryGuard(
            RegistrySettings.parse(address, url, "enforce"),
            clock=clock,
            ttl=60,
            poll_interval=0.1,
            rpc_timeout=1.0,
        )
        await guard.start()
        assert await guard.admit(ALICE_ADDR) is None
        caplog.set_level(logging.WARNING, logger="p2pnet.registry")
        await anvil.stop()
        clock.advance(120)  # the entry expires: it must be refreshed, and cannot be
        assert await guard.admit(ALICE_ADDR) is None  # the stale answer still holds
        status = guard.cached(ALICE_ADDR)
        assert status is not None and status.stale
        reason = await guard.admit(BOB_ADDR)
        assert reason is not None and "fail closed" in reason
        assert not guard.available
        assert any("registry unreachable" in r.getMessage() for r in caplog.records)
        anvil = await Anvil.start(port=port, state=state)
        async with asyncio.timeout(10):
            while not guard.available:
                await asyncio.sleep(0.05)
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        assert await guard.admit(BOB_ADDR) is not None
        reason = await guard.admit(BOB_ADDR)
        assert reason is not None and "not a registered agent" in reason
        await guard.close()
    finally:
        await anvil.stop()


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("banana", "http://127.0.0.1:8545"),
        ("0x1234", "http://127.0.0.1:8545"),
        ("0x5FbDB2315678afecb367f032d93F642f64180aA3", "http://127.0.0.1:8545"),  # checksum
        ("0x5FbDB2315678afecb367f032d93F642f64180aa3", "not a url"),
        ("0x5FbDB2315678afecb367f032d93F642f64180aa3", "ftp://127.0.0.1"),
        ("0x5FbDB2315678afecb367f032d93F642f64180aa3", "http://127.0.0.1:99999"),
        ("0x5FbDB2315678afecb367f032d93F642f64180aa3", "http://"),
    ],
)
def test_malformed_settings(address: str, url: str) -> None:
    with pytest.raises(RegistrySettingsError):
        RegistrySettings.parse(address, url, "enforce")


def test_policy_settings() -> None:
    assert RegistrySettings.parse(None, None, None).enabled is False
    with pytest.raises(RegistrySettingsError):
        RegistrySettings.parse(None, None, "enforce")  # needs a registry
    with pytest.raises(RegistrySettingsError):
        RegistrySettings.parse(None, None, "strict")
    with pytest.raises(RegistrySettingsError):
        RegistrySettings.parse(None, None, "off", agent_id="-1")
    s = RegistrySettings.parse(
        "0x5fbdb2315678afecb367f032d93f642f64180aa3", "ws://127.0.0.1:1", None, "0"
    )
    assert s.policy.value == "annotate" and s.agent_id == 0
    assert s.address == "0x5FbDB2315678afecb367f032d93F642f64180aa3"


async def test_caip10_registry_address_checks_the_chain(chain: tuple[Anvil, str]) -> None:
    anvil, address = chain
    backend = ChainRegistry(anvil.url, f"eip155:31337:{address}")
    await backend.connect()
    assert backend.ref == f"eip155:31337:{address}"
    await backend.close()
    backend = ChainRegistry(anvil.url, f"eip155:11155111:{address}")
    with pytest.raises(RegistryUnavailable, match="serves chain 31337"):
        await backend.connect()
    await backend.close()
    with pytest.raises(RegistrySettingsError):
        RegistrySettings.parse(f"eip155:0:{address}", anvil.url, None)


async def test_address_without_code(chain: tuple[Anvil, str]) -> None:
    anvil, _ = chain
    backend = ChainRegistry(anvil.url, BOB_ADDR)
    with pytest.raises(RegistryUnavailable, match="no contract"):
        await backend.connect()
    await backend.close()


async def _deploy_raw(anvil: Anvil, runtime: bytes) -> str:
    from p2pnet.registry.transactions import _send, _web3

    # init code: copy the runtime code that follows it into memory and return it
    n = len(runtime)
    init = bytes([0x60, n, 0x60, 0x0C, 0x60, 0x00, 0x39, 0x60, n, 0x60, 0x00, 0xF3]) + runtime
    w3 = await _web3(anvil.url, 10)
    receipt = await _send(w3, DEPLOYER, {"data": "0x" + init.hex()}, 10)
    return str(receipt["contractAddress"])


@pytest.mark.parametrize(
    "runtime",
    [
        bytes.fromhex("60006000fd"),  # reverts on every call
        # answers every call with the 32-byte word 1 (so supportsInterface says true)
        bytes.fromhex("600160005260206000f3"),
    ],
    ids=["reverts", "answers-one"],
)
async def test_contract_with_another_interface(chain: tuple[Anvil, str], runtime: bytes) -> None:
    anvil, _ = chain
    other = await _deploy_raw(anvil, runtime)
    backend = ChainRegistry(anvil.url, other)
    with pytest.raises(RegistryUnavailable, match="ERC-8004 identity registry interface"):
        await backend.connect()
    await backend.close()


@pytest.fixture
async def fake_rpc() -> AsyncIterator[str]:
    """An HTTP server that misbehaves per path: /garbage, /wrong-json, /hang, /http-500."""
    hang = asyncio.Event()

    async def garbage(_: web.Request) -> web.Response:
        return web.Response(body=b"\x00\xffnot json at all", content_type="application/json")

    async def wrong_json(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"jsonrpc": "2.0", "id": body.get("id"), "result": {"x": [1]}})

    async def hangs(_: web.Request) -> web.Response:
        await hang.wait()
        return web.Response(text="late")

    async def error_500(_: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    app = web.Application()
    app.router.add_post("/garbage", garbage)
    app.router.add_post("/wrong-json", wrong_json)
    app.router.add_post("/hang", hangs)
    app.router.add_post("/http-500", error_500)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        hang.set()
        await runner.cleanup()


@pytest.mark.parametrize("path", ["/garbage", "/wrong-json", "/hang", "/http-500"])
async def test_misbehaving_rpc(fake_rpc: str, path: str) -> None:
    backend = ChainRegistry(
        fake_rpc + path, "0x5FbDB2315678afecb367f032d93F642f64180aa3", timeout=0.5
    )
    async with asyncio.timeout(5):
        with pytest.raises(RegistryUnavailable):
            await backend.connect()
    await backend.close()


async def test_unreachable_rpc() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for url in (f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"):
        backend = ChainRegistry(url, "0x5FbDB2315678afecb367f032d93F642f64180aa3", timeout=1)
        async with asyncio.timeout(5):
            with pytest.raises(RegistryUnavailable):
                await backend.connect()
        await backend.close()


def test_registration_file_bad_input() -> None:
    from p2pnet.registry.registration import (
        RegistrationFileError,
        decode_data_uri,
        parse_registration,
    )

    with pytest.raises(RegistrationFileError):
        parse_registration(b"\xff")
    with pytest.raises(RegistrationFileError):
        parse_registration(b"[1]")
    with pytest.raises(RegistrationFileError):
        parse_registration(json.dumps({"name": "x" * 70_000}).encode())
    with pytest.raises(RegistrationFileError):
        decode_data_uri("data:application/json;base64,@@@")
    assert parse_registration(b'{"name":"n","services":[1,{"name":"libp2p"}]}').services == [
        {"name": "libp2p"}
    ]


async def test_unresolvable_uri_schemes() -> None:
    from p2pnet.registry.registration import RegistrationFileError

    for uri in ("ipfs://bafy", "http://127.0.0.1:1/x", "nothing"):
        with pytest.raises(RegistrationFileError):
            await fetch_registration(uri)


_STARTS_ANVIL_AND_WAITS = """
import asyncio, sys
from p2pnet.registry.anvil import Anvil

async def main():
    anvil = await Anvil.start()
    print(anvil.proc.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux's setpriv (Linux)")
async def test_anvil_ends_when_the_process_that_started_it_is_killed() -> None:
    """anvil runs in a session of its own; a SIGKILLed parent (a test killing `p2pnet devnet`,
    an operator's kill -9) must not leave it running: the kernel sends it SIGTERM."""
    require_anvil()
    import os
    import signal
    import sys

    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _STARTS_ANVIL_AND_WAITS, stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    pidfd = -1
    try:
        async with asyncio.timeout(30):
            line = await parent.stdout.readline()
        pid = int(line)
        pidfd = os.pidfd_open(pid)  # readable once anvil has exited
        parent.kill()
        await parent.wait()
        ended = asyncio.Event()
        asyncio.get_running_loop().add_reader(pidfd, ended.set)
        try:
            async with asyncio.timeout(10):
                await ended.wait()
        finally:
            asyncio.get_running_loop().remove_reader(pidfd)
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        if pidfd >= 0:
            try:  # an anvil the kernel did not stop (the test failed) is not left running
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(pidfd)
