"""Agent presence records: where the agent with an Ethereum address can be reached.

Key: ``/agent/0x<40 lowercase hex digits>`` (the agent's ETH address).

Value: the signed JSON container of :mod:`p2pnet.agent.signed_json`,
``signature (65 bytes) || payload``, where

* ``payload`` is canonical JSON (keys sorted, no spaces, ASCII) of
  ``{"addrs": [<multiaddr text>, ...], "address": "0x<lowercase>", "peer_id": "<base58>",
  "seq": <int>, "timestamp": <unix seconds, int>, "type": "p2pnet/agent-presence/1"}``, plus,
  for an agent of an on-chain registry, ``"agentRegistry": "eip155:<chainId>:<address>"`` and
  optionally ``"agentId": <int>`` (docs/registry.md);
* ``signature`` is an Ethereum ``personal_sign`` (EIP-191) signature of the payload bytes:
  secp256k1 ECDSA over ``keccak256("\\x19Ethereum Signed Message:\\n" + len(payload) +
  payload)``, written ``r (32) || s (32) || v (1)`` with ``v`` in {27, 28} and low ``s``
  (EIP-2). Any Ethereum wallet can produce it, and anyone can check it by recovering the
  signer's address (``ethers.verifyMessage``, ``eth_account``, noble-curves).

A record is valid when the value is at most :data:`MAX_AGENT_RECORD_SIZE` bytes, the payload is
canonical and well formed, its ``address`` equals the key's, and the signature recovers that
address. Of several valid records the one with the highest ``seq`` wins (then the later
``timestamp``; on a full tie the first one seen).

The DHT knows nothing of this namespace: an :class:`~p2pnet.agent.agent.Agent` registers
:class:`AgentRecordValidator` on its node (``node.register_validator("agent", ...)``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from coincurve import PrivateKey as _CCPrivateKey
from multiaddr import Multiaddr

from p2pnet.agent.signed_json import SignedJSONError, open_json, seal_json
from p2pnet.clock import SYSTEM_CLOCK
from p2pnet.crypto.eth import eth_address_from_public_key, is_eth_address
from p2pnet.crypto.keys import KeyPair, Secp256k1PrivateKey, Secp256k1PublicKey
from p2pnet.errors import CryptoError
from p2pnet.kad.errors import InvalidRecord
from p2pnet.kad.records import Validator, split_key
from p2pnet.peer.peer_id import PeerID

AGENT_NAMESPACE = "agent"
RECORD_TYPE = "p2pnet/agent-presence/1"
MAX_AGENT_RECORD_SIZE = 4096
MAX_AGENT_ADDRS = 32
MAX_ADDR_TEXT = 256
_FIELDS = frozenset({"addrs", "address", "peer_id", "seq", "timestamp", "type"})
_OPTIONAL_FIELDS = frozenset({"agentRegistry", "agentId"})
# CAIP-10 form; chain id 0 is the static registry of chain-less networks (docs/registry.md).
_REGISTRY_REF = re.compile(r"^eip155:(?:0|[1-9][0-9]{0,19}):0x[0-9a-fA-F]{40}$")


@dataclass(frozen=True)
class AgentPresence:
    """The content of a valid agent presence record."""

    address: str  # 0x + 40 lowercase hex
    peer_id: PeerID
    addrs: list[Multiaddr] = field(default_factory=list)
    seq: int = 0
    timestamp: int = 0
    #: ``eip155:<chainId>:<address>`` of the agent registry it states, and its agentId there.
    agent_registry: str | None = None
    agent_id: int | None = None


def agent_key(address: str) -> bytes:
    """The DHT key of an ETH address: ``/agent/0x<lowercase hex>``."""
    if not is_eth_address(address):
        raise ValueError(f"not an Ethereum address: {address!r}")
    return f"/{AGENT_NAMESPACE}/{address.lower()}".encode("ascii")


def _secret_of(key: KeyPair | Secp256k1PrivateKey | bytes) -> bytes:
    if isinstance(key, KeyPair):
        if isinstance(key.private_key, Secp256k1PrivateKey):
            return key.private_key.to_bytes()
    elif isinstance(key, Secp256k1PrivateKey):
        return key.to_bytes()
    if isinstance(key, (bytes, bytearray)) and len(key) == 32:
        return bytes(key)
    raise CryptoError("agent records are signed with a secp256k1 key (KeyPair or 32-byte secret)")


def eth_address_of_key(key: KeyPair | Secp256k1PrivateKey | bytes) -> str:
    """The lowercase ETH address of a secp256k1 private key."""
    public = _CCPrivateKey(_secret_of(key)).public_key.format(compressed=True)
    return eth_address_from_public_key(Secp256k1PublicKey(public)).lower()


def sign_agent_record(
    key: KeyPair | Secp256k1PrivateKey | bytes,
    peer_id: PeerID,
    addrs: Iterable[Multiaddr | str],
    seq: int,
    timestamp: int | None = None,
    *,
    agent_registry: str | None = None,
    agent_id: int | None = None,
) -> tuple[bytes, bytes]:
    """Build and sign a presence record; returns ``(dht key, value)``.

    ``key`` is the agent's secp256k1 key (its ETH address becomes the record key); it need not
    be the key of ``peer_id``. ``timestamp`` is wall-clock unix seconds: a node passes its
    clock's ``time()``; None takes the system clock's.
    """
    secret = _secret_of(key)
    address = eth_address_of_key(secret)
    addr_texts = [str(a) for a in addrs]
    if len(addr_texts) > MAX_AGENT_ADDRS:
        raise ValueError(f"at most {MAX_AGENT_ADDRS} addresses fit in an agent record")
    if not 0 <= seq < 2**63:
        raise ValueError("seq must be in 0 .. 2**63-1")
    fields: dict[str, Any] = {
        "addrs": addr_texts,
        "address": address,
        "peer_id": peer_id.to_base58(),
        "seq": seq,
        "timestamp": int(SYSTEM_CLOCK.time() if timestamp is None else timestamp),
        "type": RECORD_TYPE,
    }
    if agent_registry is not None:
        if not _REGISTRY_REF.match(agent_registry):
            raise ValueError(
                f"agentRegistry must be eip155:<chainId>:<address>: {agent_registry!r}"
            )
        fields["agentRegistry"] = agent_registry
        if agent_id is not None:
            if not 0 <= agent_id < 2**256:
                raise ValueError("agentId must be in 0 .. 2**256-1")
            fields["agentId"] = agent_id
    value = seal_json(secret, fields, max_size=MAX_AGENT_RECORD_SIZE)
    return agent_key(address), value


def verify_agent_record(key: bytes, value: bytes) -> AgentPresence:
    """Check a presence record fully; returns its content or raises :class:`InvalidRecord`."""
    namespace, rest = split_key(key)
    if namespace != AGENT_NAMESPACE:
        raise InvalidRecord(f"not an agent record key: namespace {namespace!r}")
    try:
        key_address = rest.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRecord("agent record key is not ASCII") from None
    if not is_eth_address(key_address) or key_address != key_address.lower():
        raise InvalidRecord("agent record key must be /agent/0x<40 lowercase hex digits>")
    try:
        signed = open_json(
            value, max_size=MAX_AGENT_RECORD_SIZE, fields=_FIELDS, optional=_OPTIONAL_FIELDS
        )
    except SignedJSONError as exc:
        raise InvalidRecord(f"agent record: {exc}") from None
    if signed.signer != key_address:
        raise InvalidRecord("agent record is not signed by the key's address")
    presence = _parse_payload(signed.obj)
    if presence.address != key_address:
        raise InvalidRecord("agent record payload names another address than its key")
    return presence


def _parse_payload(obj: dict[str, Any]) -> AgentPresence:
    if obj["type"] != RECORD_TYPE:
        raise InvalidRecord(f"agent record type {obj['type']!r} is not {RECORD_TYPE!r}")
    seq, ts = obj["seq"], obj["timestamp"]
    for name, num in (("seq", seq), ("timestamp", ts)):
        if type(num) is not int or not 0 <= num < 2**63:
            raise InvalidRecord(f"agent record {name} must be an integer in 0 .. 2**63-1")
    address = obj["address"]
    if not isinstance(address, str) or not is_eth_address(address) or address != address.lower():
        raise InvalidRecord("agent record address must be 0x + 40 lowercase hex digits")
    try:
        peer = PeerID.from_base58(obj["peer_id"]) if isinstance(obj["peer_id"], str) else None
    except CryptoError:
        peer = None
    if peer is None:
        raise InvalidRecord("agent record peer_id is not a peer ID")
    texts = obj["addrs"]
    if not isinstance(texts, list) or len(texts) > MAX_AGENT_ADDRS:
        raise InvalidRecord(f"agent record addrs must be a list of at most {MAX_AGENT_ADDRS}")
    addrs: list[Multiaddr] = []
    for text in texts:
        if not isinstance(text, str) or len(text) > MAX_ADDR_TEXT:
            raise InvalidRecord("agent record addrs must be multiaddr strings")
        try:
            addrs.append(Multiaddr(text))
        except Exception:  # the multiaddr package raises several unrelated types
            raise InvalidRecord(f"agent record address {text!r} is not a multiaddr") from None
    registry = obj.get("agentRegistry")
    if registry is not None and (
        not isinstance(registry, str) or not _REGISTRY_REF.match(registry)
    ):
        raise InvalidRecord("agent record agentRegistry must be eip155:<chainId>:<address>")
    agent_id = obj.get("agentId")
    if agent_id is not None:
        if registry is None:
            raise InvalidRecord("agent record agentId without agentRegistry")
        if type(agent_id) is not int or not 0 <= agent_id < 2**256:
            raise InvalidRecord("agent record agentId must be an integer in 0 .. 2**256-1")
    return AgentPresence(
        address=address,
        peer_id=peer,
        addrs=addrs,
        seq=seq,
        timestamp=ts,
        agent_registry=registry,
        agent_id=agent_id,
    )


class AgentRecordValidator(Validator):
    """Validator and selector of the ``/agent/`` namespace (see the module docstring)."""

    def validate(self, key: bytes, value: bytes) -> None:
        verify_agent_record(key, value)

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        best, best_rank = -1, (-1, -1)
        for i, value in enumerate(values):
            try:
                p = verify_agent_record(key, value)
            except InvalidRecord:
                continue
            rank = (p.seq, p.timestamp)
            if rank > best_rank:
                best, best_rank = i, rank
        if best < 0:
            raise InvalidRecord("no valid agent record to select")
        return best
