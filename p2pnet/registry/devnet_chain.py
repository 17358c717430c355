"""The devnet's chain: anvil started from the npm package, our registry deployed on it, the
bootstrap nodes and agents registered, and the intruder scene (an unregistered agent whose
broadcasts and direct messages are refused under ``enforce``), narrated.

Without anvil (no Node.js / ``npm ci`` not run in contracts/) the devnet says so and runs with
the registry policy off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from p2pnet.crypto.keys import KeyPair
from p2pnet.peer.peer_id import PeerID
from p2pnet.registry.errors import RegistryError

Say = Callable[[str, str], None]


def new_eth_key() -> str:
    return "0x" + os.urandom(32).hex()


def peer_of(key: str) -> str:
    return str(PeerID.from_public_key(KeyPair.from_eth_private_key(key).public_key))


class DevnetChain:
    """anvil + our IdentityRegistry; ``agent_settings()`` are the AgentConfig fields."""

    def __init__(self, anvil: Any, address: str, policy: str, say: Say) -> None:
        self.anvil = anvil
        self.address = address
        self.policy = policy
        self.say = say
        self.agent_ids: dict[str, int] = {}

    @classmethod
    async def start(cls, policy: str, say: Say) -> DevnetChain | None:
        from p2pnet.registry.anvil import ANVIL_KEYS, Anvil, AnvilUnavailable, anvil_binary

        if anvil_binary() is None:
            say(
                "registry",
                "anvil not found (needs Node.js: `cd contracts && npm ci`, which ./run.sh does): "
                "running with REGISTRY_POLICY=off",
            )
            return None
        try:
            from p2pnet.registry.transactions import deploy_registry
        except ImportError as exc:
            say("registry", f"web3 missing ({exc}; pip install 'p2pnet[registry]'): policy off")
            return None
        try:
            anvil = await Anvil.start()
        except AnvilUnavailable as exc:
            say("registry", f"anvil did not start ({exc}): running with REGISTRY_POLICY=off")
            return None
        try:
            receipt = await deploy_registry(anvil.url, ANVIL_KEYS[0])
        except BaseException:
            await anvil.stop()
            raise
        assert receipt.contract_address is not None
        say("registry", f"anvil (chain 31337) at {anvil.url}")
        say("registry", f"IdentityRegistry (ERC-8004) deployed at {receipt.contract_address}")
        return cls(anvil, receipt.contract_address, policy, say)

    def agent_settings(self) -> dict[str, Any]:
        return {
            "registry_address": self.address,
            "rpc_url": self.anvil.url,
            "registry_policy": self.policy,
        }

    async def register(self, entries: Sequence[tuple[str, str]]) -> None:
        """Register each ``(name, key)``: fund the key, register with a registration file
        naming its libp2p endpoint (PeerID; the addresses follow once it listens)."""

        async def one(name: str, key: str) -> None:
            from eth_account import Account

            from p2pnet.registry.registration import build_registration, data_uri
            from p2pnet.registry.transactions import RegistryWriter

            await self._fund(Account.from_key(key).address)
            uri = data_uri(build_registration(name, peer_of(key), []))
            async with RegistryWriter(self.anvil.url, self.address, key) as writer:
                agent_id, _ = await writer.register(uri)
            self.agent_ids[name] = agent_id

        await asyncio.gather(*(one(n, k) for n, k in entries))
        self.say("registry", f"registered {len(entries)} agents (agentIds 0..{len(entries) - 1})")

    async def publish_addrs(self, entries: Sequence[tuple[str, str, list[str]]]) -> None:
        """setAgentURI with each agent's listen addresses (``(name, key, addrs)``)."""
        from p2pnet.registry.registration import build_registration, data_uri
        from p2pnet.registry.transactions import RegistryWriter

        async def one(name: str, key: str, addrs: list[str]) -> None:
            uri = data_uri(build_registration(name, peer_of(key), addrs))
            async with RegistryWriter(self.anvil.url, self.address, key) as writer:
                await writer.set_agent_uri(self.agent_ids[name], uri)

        await asyncio.gather(*(one(*e) for e in entries))
        self.say("registry", "every agentURI now lists its libp2p addresses (URIUpdated events)")

    async def _fund(self, address: str) -> None:
        from p2pnet.registry.transactions import _web3

        w3 = await _web3(self.anvil.url, 10)
        try:
            await w3.provider.make_request("anvil_setBalance", [address, hex(10**20)])
        finally:
            await w3.provider.disconnect()

    async def stop(self) -> None:
        await self.anvil.stop()


async def intruder_scene(
    chain: DevnetChain, agent_factory: Callable[[str], Any], members: Sequence[Any], say: Say
) -> dict[str, Any]:
    """An unregistered agent joins, broadcasts and writes to an agent; under enforce both are
    refused. Returns the scene's figures for the RESULT line."""
    from p2pnet.errors import P2PError

    class Narrate(logging.Handler):  # the refusals, as the nodes log them
        def emit(self, record: logging.LogRecord) -> None:
            say("refused", record.getMessage())

    handler = Narrate(logging.WARNING)
    logging.getLogger("p2pnet.registry").addHandler(handler)
    target = members[0]
    intruder = agent_factory(new_eth_key())
    refused_before = sum(m.registry.refused for m in members if m.registry is not None)
    result: dict[str, Any] = {"policy": chain.policy}
    try:
        await intruder.start()
        say(intruder.name, f"joined as {intruder.eth_address}: NOT registered in the registry")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                # Pubsub has no mesh-change event; poll its state a few times a second.
                while not intruder.pubsub.mesh_peers("agent-messages"):  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
        for n in range(3):
            await intruder.broadcast({"broadcast": f"buy my tokens #{n}", "from": intruder.name})
        say(intruder.name, "broadcast 3 messages on agent-messages")
        try:
            await intruder.send(str(target.peer_id), {"hello": target.name, "from": intruder.name})
            result["direct_refused"] = False
            say(intruder.name, f"direct message to {target.name} was delivered")
        except P2PError as exc:
            result["direct_refused"] = True
            say(intruder.name, f"direct message to {target.name} refused: {exc}")
        await asyncio.sleep(1.0)  # let the broadcasts reach every validator
        refused = sum(m.registry.refused for m in members if m.registry is not None)
        result["refusals"] = refused - refused_before
        scores = [m.pubsub.peer_score(intruder.peer_id) for m in members]
        result["lowest_score"] = round(min(scores), 2) if scores else 0.0
        say(
            "registry",
            f"the network refused {result['refusals']} messages of the intruder; its lowest "
            f"peer score is {result['lowest_score']}",
        )
    except (P2PError, RegistryError) as exc:
        say(intruder.name, f"scene failed: {exc}")
        result["error"] = str(exc)
    finally:
        await intruder.close()
        logging.getLogger("p2pnet.registry").removeHandler(handler)
    return result
