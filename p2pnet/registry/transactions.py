"""Writing to an agent registry: deploy our contract, register an agent, update its URI,
transfer its token. Transactions are signed locally with the Ethereum key (eth-account) and
sent raw, so any RPC endpoint works (no unlocked accounts needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from p2pnet.crypto.eth import to_checksum_address
from p2pnet.registry.abi import IDENTITY_REGISTRY_ABI, REGISTERED_TOPIC
from p2pnet.registry.chain import ChainRegistry, http_provider
from p2pnet.registry.errors import RegistryError, RegistryUnavailable
from p2pnet.registry.settings import parse_rpc_url

ARTIFACT = "IdentityRegistry.json"


def load_artifact() -> dict[str, Any]:
    """ABI and bytecode of our IdentityRegistry (compiled by contracts/compile.mjs)."""
    text = resources.files("p2pnet.registry").joinpath(ARTIFACT).read_text(encoding="utf-8")
    artifact: dict[str, Any] = json.loads(text)
    return artifact


class TransactionFailed(RegistryError):
    """A transaction was mined but reverted, or could not be sent."""


@dataclass(frozen=True)
class Receipt:
    tx_hash: str
    block: int
    contract_address: str | None = None


async def _send(w3: Any, private_key: str, tx: dict[str, Any], timeout: float) -> Any:
    from eth_account import Account

    account = Account.from_key(private_key)
    tx.setdefault("from", account.address)
    tx["nonce"] = await w3.eth.get_transaction_count(account.address, "pending")
    tx["chainId"] = await w3.eth.chain_id
    if "gas" not in tx:
        tx["gas"] = int(await w3.eth.estimate_gas(tx) * 1.2) + 10_000
    if "maxFeePerGas" not in tx and "gasPrice" not in tx:
        block = await w3.eth.get_block("latest")
        base = int(block.get("baseFeePerGas", 0) or 0)
        tip = 1_000_000_000
        tx["maxPriorityFeePerGas"] = tip
        tx["maxFeePerGas"] = 2 * base + tip
    signed = account.sign_transaction(tx)
    tx_hash = await w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = await w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout)
    if receipt["status"] != 1:
        raise TransactionFailed(f"transaction 0x{bytes(tx_hash).hex()} reverted")
    return receipt


async def _web3(rpc_url: str, timeout: float) -> Any:
    from web3 import AsyncWeb3, WebSocketProvider

    url = parse_rpc_url(rpc_url)
    if url.startswith(("ws://", "wss://")):
        provider = WebSocketProvider(url, request_timeout=timeout, max_connection_retries=1)
        await provider.connect()
        return AsyncWeb3(provider)
    return AsyncWeb3(http_provider(url, timeout))


async def _guarded(coro: Any) -> Any:
    from web3.exceptions import ContractLogicError

    try:
        return await coro
    except RegistryError:
        raise
    except ContractLogicError as exc:
        raise TransactionFailed(f"the contract refused: {exc}") from exc
    except Exception as exc:  # aiohttp, websockets, JSON, web3: the RPC is unusable
        raise RegistryUnavailable(f"RPC failed: {exc!r}") from exc


async def deploy_registry(rpc_url: str, private_key: str, timeout: float = 60.0) -> Receipt:
    """Deploy our IdentityRegistry; returns the receipt with ``contract_address``."""
    artifact = load_artifact()
    w3 = await _web3(rpc_url, timeout)
    try:

        async def go() -> Receipt:
            tx = {"data": artifact["bytecode"]}
            receipt = await _send(w3, private_key, tx, timeout)
            return Receipt(
                "0x" + bytes(receipt["transactionHash"]).hex(),
                int(receipt["blockNumber"]),
                to_checksum_address(receipt["contractAddress"]),
            )

        result: Receipt = await _guarded(go())
        return result
    finally:
        await w3.provider.disconnect()


class RegistryWriter:
    """Transactions on an existing registry (checked like a node checks it)."""

    def __init__(self, rpc_url: str, address: str, private_key: str, timeout: float = 60.0):
        self.chain = ChainRegistry(rpc_url, address, timeout=min(timeout, 10.0))
        self.private_key = private_key
        self.timeout = timeout

    async def __aenter__(self) -> RegistryWriter:
        await self.chain.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.chain.close()

    def _fns(self) -> Any:
        w3 = self.chain.web3
        return w3.eth.contract(address=self.chain.address, abi=IDENTITY_REGISTRY_ABI).functions

    async def _transact(self, call: Any) -> Any:
        from eth_account import Account

        sender = Account.from_key(self.private_key).address

        async def go() -> Any:
            tx = await call.build_transaction({"from": sender})
            data = {"to": tx["to"], "data": tx["data"], "from": sender}
            return await _send(self.chain.web3, self.private_key, data, self.timeout)

        return await _guarded(go())

    async def register(self, agent_uri: str | None) -> tuple[int, Receipt]:
        """Register the key's address; returns the new agentId (from the Registered event)."""
        fns = self._fns()
        call = fns.register(agent_uri) if agent_uri is not None else fns.register()
        receipt = await self._transact(call)
        for entry in receipt["logs"]:
            topics = entry["topics"]
            if topics and "0x" + bytes(topics[0]).hex() == REGISTERED_TOPIC:
                agent_id = int.from_bytes(bytes(topics[1]), "big")
                return agent_id, Receipt(
                    "0x" + bytes(receipt["transactionHash"]).hex(), receipt["blockNumber"]
                )
        raise TransactionFailed("the register transaction emitted no Registered event")

    async def set_agent_uri(self, agent_id: int, uri: str) -> Receipt:
        receipt = await self._transact(self._fns().setAgentURI(agent_id, uri))
        return Receipt("0x" + bytes(receipt["transactionHash"]).hex(), receipt["blockNumber"])

    async def transfer(self, agent_id: int, to: str) -> Receipt:
        from eth_account import Account

        sender = Account.from_key(self.private_key).address
        call = self._fns().transferFrom(sender, to_checksum_address(to), agent_id)
        receipt = await self._transact(call)
        return Receipt("0x" + bytes(receipt["transactionHash"]).hex(), receipt["blockNumber"])

    async def set_agent_wallet(self, agent_id: int, wallet_key: str) -> Receipt:
        """Make the address of ``wallet_key`` the agentWallet of ``agent_id``: the wallet signs
        the ERC-8004 EIP-712 ``AgentWalletSet`` message, the owner (our key) sends it."""
        from eth_account import Account
        from eth_account.messages import encode_typed_data

        w3 = self.chain.web3
        owner = Account.from_key(self.private_key).address
        wallet = Account.from_key(wallet_key)
        block = await _guarded(w3.eth.get_block("latest"))
        deadline = int(block["timestamp"]) + 120
        typed = {
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "AgentWalletSet": [
                    {"name": "agentId", "type": "uint256"},
                    {"name": "newWallet", "type": "address"},
                    {"name": "owner", "type": "address"},
                    {"name": "deadline", "type": "uint256"},
                ],
            },
            "primaryType": "AgentWalletSet",
            "domain": {
                "name": "ERC8004IdentityRegistry",
                "version": "1",
                "chainId": self.chain.chain_id,
                "verifyingContract": self.chain.address,
            },
            "message": {
                "agentId": agent_id,
                "newWallet": wallet.address,
                "owner": owner,
                "deadline": deadline,
            },
        }
        signature = wallet.sign_message(encode_typed_data(full_message=typed)).signature
        call = self._fns().setAgentWallet(agent_id, wallet.address, deadline, bytes(signature))
        receipt = await self._transact(call)
        return Receipt("0x" + bytes(receipt["transactionHash"]).hex(), receipt["blockNumber"])
