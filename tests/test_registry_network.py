"""The registry policies end to end: real p2p-node processes against a real anvil chain."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from anvil_chain import Anvil, fund, require_anvil
from eth_account import Account
from test_p2p_node import TIMEOUT, NodeProc, _broadcast_until, _discover_until, spawn

from p2pnet.registry.anvil import ANVIL_KEYS
from p2pnet.registry.registration import build_registration, data_uri
from p2pnet.registry.transactions import RegistryWriter, deploy_registry

__all__ = ["spawn"]  # the fixture, shared with test_p2p_node


class Chain:
    def __init__(self, anvil: Anvil, address: str, tmp: Path) -> None:
        self.anvil = anvil
        self.address = address
        self.tmp = tmp

    def env_file(self, name: str, key: str, policy: str, url: str | None = None) -> str:
        path = self.tmp / f"{name}.env"
        path.write_text(
            f"PRIVATE_KEY={key}\nREGISTRY_ADDRESS={self.address}\n"
            f"RPC_URL={url or self.anvil.url}\nREGISTRY_POLICY={policy}\n"
        )
        return str(path)

    async def register(self, key: str, uri: str | None = None) -> int:
        await fund(self.anvil.url, Account.from_key(key).address)
        async with RegistryWriter(self.anvil.url, self.address, key) as writer:
            agent_id, _ = await writer.register(uri)
        return agent_id


@pytest.fixture
async def chain(tmp_path: Path) -> AsyncIterator[Chain]:
    require_anvil()
    anvil = await Anvil.start()
    try:
        receipt = await deploy_registry(anvil.url, ANVIL_KEYS[0])
        assert receipt.contract_address is not None
        yield Chain(anvil, receipt.contract_address, tmp_path)
    finally:
        await anvil.stop()


def new_key() -> str:
    return "0x" + os.urandom(32).hex()


async def _start(
    spawn: Any, chain: Chain, name: str, key: str, policy: str, *extra: str, url: str | None = None
) -> NodeProc:
    env = chain.env_file(name, key, policy, url=url)
    node: NodeProc = await spawn("--name", name, "--env-file", env, *extra, name=name)
    return node


async def _send_until_ok(node: NodeProc, to: str, data: Any, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while True:
            event = await node.request({"type": "send", "peerId": to, "data": data}, "sent")
            if event["type"] == "sent":
                return
            await asyncio.sleep(0.3)


async def _send_until_refused(node: NodeProc, to: str, timeout: float = TIMEOUT) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            event = await node.request({"type": "send", "peerId": to, "data": "x"}, "sent")
            if event["type"] == "error":
                return event
            await asyncio.sleep(0.3)


async def test_enforce_end_to_end(spawn: Any, chain: Chain) -> None:
    boot_key, alice_key, mallory_key, late_key = new_key(), new_key(), new_key(), new_key()
    boot_id = await chain.register(boot_key)
    alice_id = await chain.register(alice_key, data_uri({"name": "alice-agent"}))
    boot = await _start(spawn, chain, "boot", boot_key, "enforce", "--bootstrap")
    await boot.connect(bootstrapPeers=[])
    assert boot.ready["mode"] == "server"
    alice, mallory, late = await asyncio.gather(
        _start(spawn, chain, "alice", alice_key, "enforce"),
        _start(spawn, chain, "mallory", mallory_key, "enforce"),
        _start(spawn, chain, "late", late_key, "enforce"),
    )
    # The unregistered agents start and join all the same (they may register later).
    await asyncio.gather(*(n.connect(bootstrapPeers=boot.addrs) for n in (alice, mallory, late)))
    status = await boot.ok({"type": "status"}, "node-status")
    assert status["registry"]["agentId"] == boot_id
    assert status["registry"]["agentRegistry"] == f"eip155:31337:{chain.address}"
    assert status["registry"]["policy"] == "enforce"

    for node in (boot, alice, mallory):
        await node.ok({"type": "subscribe", "topic": "news"}, "subscribed")
    # A registered agent is delivered, with its registration in the event.
    await _broadcast_until(boot, alice, "news", "from-boot")
    got = next(m for m in alice.messages() if m["from"] == boot.peer_id)
    assert got["registry"]["registered"] is True
    assert got["registry"]["agentId"] == boot_id
    await _send_until_ok(alice, boot.peer_id, {"hello": "boot"})
    direct = await boot.expect("message", data={"hello": "boot"})
    assert direct["registry"]["registered"] is True

    # The intruder: its broadcasts are rejected, its direct messages refused.
    for n in range(5):
        await mallory.ok({"type": "send", "topic": "news", "data": {"m": n}}, "sent")
    refused = await _send_until_refused(mallory, alice.peer_id)
    assert refused["code"] == "SEND_FAILED" and "not a registered agent" in refused["message"]
    await _broadcast_until(boot, alice, "news", "after-mallory")
    assert not [m for m in alice.messages() if m["from"] == mallory.peer_id]
    alice_status = await alice.ok({"type": "status"}, "node-status")
    assert alice_status["registry"]["refused"] >= 1

    # A registration made while the network runs takes effect within seconds, no restart.
    refused = await _send_until_refused(late, alice.peer_id)
    assert "not a registered agent" in refused["message"]
    late_id = await chain.register(late_key)
    await _send_until_ok(late, alice.peer_id, {"late": True}, timeout=10)
    msg = await alice.expect("message", data={"late": True})
    assert msg["registry"]["registered"] is True
    del late_id

    # Alice gives her token away: she loses her status within seconds.
    async with RegistryWriter(chain.anvil.url, chain.address, alice_key) as writer:
        await writer.transfer(alice_id, Account.from_key(ANVIL_KEYS[1]).address)
    refused = await _send_until_refused(alice, boot.peer_id, timeout=10)
    assert "not a registered agent" in refused["message"]


async def test_annotate_end_to_end(spawn: Any, chain: Chain) -> None:
    boot_key, alice_key, mallory_key = new_key(), new_key(), new_key()
    await chain.register(boot_key)
    reg = build_registration("alice-agent", "16Uiu2HAm", ["/ip4/127.0.0.1/tcp/1"])
    alice_id = await chain.register(alice_key, data_uri(reg))
    boot = await _start(spawn, chain, "boot", boot_key, "annotate", "--bootstrap")
    await boot.connect(bootstrapPeers=[])
    alice, mallory = await asyncio.gather(
        # alice talks to the chain over WebSocket, the others over HTTP
        _start(spawn, chain, "alice", alice_key, "annotate", url=chain.anvil.ws_url),
        _start(spawn, chain, "mallory", mallory_key, "annotate"),
    )
    await asyncio.gather(
        alice.connect(bootstrapPeers=boot.addrs), mallory.connect(bootstrapPeers=boot.addrs)
    )
    for node in (alice, mallory):
        await node.ok({"type": "subscribe", "topic": "news"}, "subscribed")
    found = await _discover_until(boot, "news", {alice.peer_id, mallory.peer_id})
    a = found[alice.peer_id]["registry"]
    assert a["registered"] is True and a["agentId"] == alice_id
    assert a["agentName"] == "alice-agent"
    assert a["services"][0]["name"] == "libp2p"
    assert found[mallory.peer_id]["registry"]["registered"] is False
    status = await alice.ok({"type": "status"}, "node-status")  # over WebSocket
    assert status["registry"]["available"] is True
    assert status["registry"]["agentId"] == alice_id
    # annotate refuses nothing: mallory's direct message arrives, marked unregistered.
    await _send_until_ok(mallory, boot.peer_id, {"hi": 1})
    msg = await boot.expect("message", data={"hi": 1})
    assert msg["registry"]["registered"] is False and msg["registry"]["agentId"] is None


# -- bad settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "REGISTRY_ADDRESS=banana\nRPC_URL=http://127.0.0.1:1\n",
        "REGISTRY_ADDRESS=0x5FbDB2315678afecb367f032d93F642f64180aa3\nRPC_URL=not a url\n",
        "REGISTRY_POLICY=enforce\n",
        "REGISTRY_POLICY=maybe\n",
    ],
)
async def test_malformed_registry_settings_exit_2(spawn: Any, tmp_path: Path, line: str) -> None:
    env = tmp_path / "bad.env"
    env.write_text(line)
    node = await spawn("--env-file", str(env), name="bad")
    event = await node.expect("error", code="INVALID_FIELDS")
    assert "REGISTRY" in event["message"] or "RPC_URL" in event["message"]
    assert await node.wait_exit() == 2


async def test_registry_unavailable_on_connect(spawn: Any, chain: Chain) -> None:
    # An address without code, then an RPC nobody listens on: connect fails clearly, the node
    # stays up and unconnected.
    no_code = Account.from_key(new_key()).address
    env = chain.tmp / "nocode.env"
    env.write_text(f"REGISTRY_ADDRESS={no_code}\nRPC_URL={chain.anvil.url}\n")
    node = await spawn("--env-file", str(env), name="nocode")
    event = await node.error({"type": "connect", "bootstrapPeers": []}, "REGISTRY_UNAVAILABLE")
    assert "no contract" in event["message"]
    status = await node.ok({"type": "status"}, "node-status")
    assert status["connected"] is False

    down = chain.env_file("down", new_key(), "enforce", url="http://127.0.0.1:9")
    node = await spawn("--env-file", down, name="down")
    event = await node.error({"type": "connect", "bootstrapPeers": []}, "REGISTRY_UNAVAILABLE")
    assert "127.0.0.1:9" in event["message"]


async def test_rpc_killed_mid_run_and_restarted(spawn: Any, tmp_path: Path) -> None:
    """The chain goes away under a running enforce network: a known agent is still delivered
    (cache), an agent the node never checked is refused (fail closed), both reported as log
    events; when the chain comes back the refused agent gets through, no restart."""
    require_anvil()
    state = tmp_path / "chain.json"
    anvil = await Anvil.start(state=state)
    try:
        receipt = await deploy_registry(anvil.url, ANVIL_KEYS[0])
        assert receipt.contract_address is not None
        chain = Chain(anvil, receipt.contract_address, tmp_path)
        boot_key, alice_key, carol_key = new_key(), new_key(), new_key()
        for key in (boot_key, alice_key, carol_key):
            await chain.register(key)
        boot = await _start(spawn, chain, "boot", boot_key, "enforce", "--bootstrap")
        await boot.connect(bootstrapPeers=[])
        alice = await _start(spawn, chain, "alice", alice_key, "enforce")
        await alice.connect(bootstrapPeers=boot.addrs)
        await _send_until_ok(alice, boot.peer_id, {"n": 1})

        port = anvil.port
        await anvil.stop()
        down = await boot.wait_for(
            lambda e: e["type"] == "log" and "registry unreachable" in e["message"]
        )
        assert down["level"] == "warning"
        await _send_until_ok(alice, boot.peer_id, {"n": 2})  # known: the cache decides
        await boot.expect("message", data={"n": 2})
        # carol is registered, but boot never checked her and cannot now: refused.
        path = tmp_path / "carol-off.env"
        path.write_text(f"PRIVATE_KEY={carol_key}\n")
        carol: NodeProc = await spawn("--name", "carol", "--env-file", str(path), name="carol")
        await carol.connect(bootstrapPeers=boot.addrs)
        refused = await _send_until_refused(carol, boot.peer_id)
        assert "fail closed" in refused["message"]

        anvil = await Anvil.start(port=port, state=state)
        await boot.wait_for(lambda e: e["type"] == "log" and "reachable again" in e["message"])
        await _send_until_ok(carol, boot.peer_id, {"carol": "back"})
        msg = await boot.expect("message", data={"carol": "back"})
        assert msg["registry"]["registered"] is True
    finally:
        await anvil.stop()
