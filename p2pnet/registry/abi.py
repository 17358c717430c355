"""The part of the ERC-8004 Identity Registry interface p2pnet relies on.

Only these functions and events are ever used, so a node works against any contract with this
interface (the ERC's reference deployment included), never only against our own contract.
"""

from __future__ import annotations

from typing import Any

from eth_hash.auto import keccak


def _fn(
    name: str,
    inputs: list[tuple[str, str]],
    outputs: list[tuple[str, str]],
    mutability: str = "view",
) -> dict[str, Any]:
    return {
        "type": "function",
        "name": name,
        "inputs": [{"name": n, "type": t} for n, t in inputs],
        "outputs": [{"name": n, "type": t} for n, t in outputs],
        "stateMutability": mutability,
    }


def _event(name: str, inputs: list[tuple[str, str, bool]]) -> dict[str, Any]:
    return {
        "type": "event",
        "name": name,
        "anonymous": False,
        "inputs": [{"name": n, "type": t, "indexed": i} for n, t, i in inputs],
    }


IDENTITY_REGISTRY_ABI: list[dict[str, Any]] = [
    _fn("register", [], [("agentId", "uint256")], "nonpayable"),
    _fn("register", [("agentURI", "string")], [("agentId", "uint256")], "nonpayable"),
    _fn("setAgentURI", [("agentId", "uint256"), ("newURI", "string")], [], "nonpayable"),
    _fn("tokenURI", [("tokenId", "uint256")], [("", "string")]),
    _fn("ownerOf", [("tokenId", "uint256")], [("", "address")]),
    _fn("balanceOf", [("owner", "address")], [("", "uint256")]),
    _fn("getMetadata", [("agentId", "uint256"), ("metadataKey", "string")], [("", "bytes")]),
    _fn(
        "setMetadata",
        [("agentId", "uint256"), ("metadataKey", "string"), ("metadataValue", "bytes")],
        [],
        "nonpayable",
    ),
    _fn("getAgentWallet", [("agentId", "uint256")], [("", "address")]),
    _fn(
        "setAgentWallet",
        [
            ("agentId", "uint256"),
            ("newWallet", "address"),
            ("deadline", "uint256"),
            ("signature", "bytes"),
        ],
        [],
        "nonpayable",
    ),
    _fn("supportsInterface", [("interfaceId", "bytes4")], [("", "bool")]),
    _fn(
        "transferFrom",
        [("from", "address"), ("to", "address"), ("tokenId", "uint256")],
        [],
        "nonpayable",
    ),
    _event(
        "Registered",
        [("agentId", "uint256", True), ("agentURI", "string", False), ("owner", "address", True)],
    ),
    _event(
        "URIUpdated",
        [("agentId", "uint256", True), ("newURI", "string", False), ("updatedBy", "address", True)],
    ),
    _event(
        "Transfer",
        [("from", "address", True), ("to", "address", True), ("tokenId", "uint256", True)],
    ),
    _event(
        "MetadataSet",
        [
            ("agentId", "uint256", True),
            ("indexedMetadataKey", "string", True),
            ("metadataKey", "string", False),
            ("metadataValue", "bytes", False),
        ],
    ),
]

ERC721_INTERFACE_ID = bytes.fromhex("80ac58cd")


def event_topic(signature: str) -> str:
    return "0x" + keccak(signature.encode()).hex()


REGISTERED_TOPIC = event_topic("Registered(uint256,string,address)")
URI_UPDATED_TOPIC = event_topic("URIUpdated(uint256,string,address)")
TRANSFER_TOPIC = event_topic("Transfer(address,address,uint256)")
METADATA_SET_TOPIC = event_topic("MetadataSet(uint256,string,string,bytes)")
FOLLOWED_TOPICS = [REGISTERED_TOPIC, URI_UPDATED_TOPIC, TRANSFER_TOPIC, METADATA_SET_TOPIC]
