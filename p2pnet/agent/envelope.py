"""Signed agent messages: what travels on the agent topics and on direct streams.

An envelope is ``signature (65 bytes) || payload``. The payload is canonical JSON (sorted keys,
no spaces, ASCII)::

    {"data": <any JSON>, "from": "0x<sender ETH address, lowercase>", "kind": "direct" |
     "broadcast" | "announce" | "status", "nonce": "<16 hex>", "peer_id": "<sender PeerID>",
     "to": "0x<recipient>" | null, "topic": "<topic>" | null, "ts": <unix ms>,
     "type": "p2pnet/agent-message/1"}

and the signature is the sender's EIP-191 ``personal_sign`` of the payload, the same scheme as
presence records, so any Ethereum tool can check who wrote a message. A receiver accepts an
envelope only if the signature recovers ``from``, ``peer_id`` is the libp2p identity of that same
key (a secp256k1 PeerID embeds it), the transport's authenticated sender is ``peer_id``, the
timestamp is within the allowed clock skew, and the nonce was not seen before (replay).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from p2pnet.crypto.eth import (
    PERSONAL_SIGNATURE_SIZE,
    eth_address,
    personal_sign,
    recover_personal_signer,
)
from p2pnet.crypto.keys import KeyPair, Secp256k1PrivateKey
from p2pnet.errors import CryptoError, ProtocolError
from p2pnet.peer.peer_id import PeerID
from p2pnet.wire.json_bounded import loads_bounded

ENVELOPE_TYPE = "p2pnet/agent-message/1"
KINDS = frozenset({"direct", "broadcast", "announce", "status"})
MAX_ENVELOPE_SIZE = 256 * 1024
#: Messages older or further in the future than this are refused (replay window).
MAX_CLOCK_SKEW = 300.0
_FIELDS = frozenset({"data", "from", "kind", "nonce", "peer_id", "to", "topic", "ts", "type"})


class InvalidEnvelope(ProtocolError):
    """An agent message failed verification; the sender is penalised where possible."""


@dataclass(frozen=True)
class Envelope:
    kind: str
    sender: str  # lowercase 0x address
    peer_id: PeerID
    data: Any
    to: str | None
    topic: str | None
    ts: int
    nonce: str


def canonical_json(obj: Any) -> bytes:
    # NaN and Infinity are not JSON: refused here as every parser of ours refuses them
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _secret(key: KeyPair) -> bytes:
    if not isinstance(key.private_key, Secp256k1PrivateKey):
        raise CryptoError("agent messages are signed with a secp256k1 (Ethereum) identity")
    return key.private_key.to_bytes()


def seal(
    key: KeyPair,
    kind: str,
    data: Any,
    *,
    now: float,
    nonce: bytes,
    to: str | None = None,
    topic: str | None = None,
) -> bytes:
    """Build and sign an envelope from the agent whose identity is ``key``.

    ``now``: the sender's wall clock (``node.clock.time()``); ``nonce``: 8 random bytes from the
    node's RNG, which makes the envelope unique (replay detection).
    """
    if len(nonce) != 8:
        raise ValueError("the nonce must be 8 bytes")
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind!r}")
    peer = PeerID.from_public_key(key.public_key)
    payload = canonical_json(
        {
            "data": data,
            "from": eth_address(peer).lower(),
            "kind": kind,
            "nonce": nonce.hex(),
            "peer_id": peer.to_base58(),
            "to": to.lower() if to else None,
            "topic": topic,
            "ts": int(now * 1000),
            "type": ENVELOPE_TYPE,
        }
    )
    envelope = personal_sign(_secret(key), payload) + payload
    if len(envelope) > MAX_ENVELOPE_SIZE:
        raise ValueError(f"message of {len(envelope)} bytes exceeds {MAX_ENVELOPE_SIZE}")
    return envelope


def open_envelope(raw: bytes, *, now: float) -> Envelope:
    """Verify signature, structure, identity binding and freshness; raise InvalidEnvelope.

    ``now``: the receiver's wall clock (``node.clock.time()``), for the freshness check.
    """
    if len(raw) > MAX_ENVELOPE_SIZE:
        raise InvalidEnvelope(f"message of {len(raw)} bytes exceeds {MAX_ENVELOPE_SIZE}")
    if len(raw) <= PERSONAL_SIGNATURE_SIZE:
        raise InvalidEnvelope("message too short for a signature")
    sig, payload = raw[:PERSONAL_SIGNATURE_SIZE], raw[PERSONAL_SIGNATURE_SIZE:]
    try:
        signer = recover_personal_signer(payload, sig)
        obj = loads_bounded(payload)
    except (CryptoError, ValueError) as exc:
        raise InvalidEnvelope(f"bad signature or payload: {exc}") from None
    if not isinstance(obj, dict) or set(obj) != _FIELDS or obj["type"] != ENVELOPE_TYPE:
        raise InvalidEnvelope("payload is not an agent message")
    if canonical_json(obj) != payload:
        raise InvalidEnvelope("payload is not canonical JSON")
    kind, sender, ts, nonce = obj["kind"], obj["from"], obj["ts"], obj["nonce"]
    if not isinstance(kind, str) or kind not in KINDS or type(ts) is not int:
        raise InvalidEnvelope("malformed kind, ts or nonce")
    if not isinstance(nonce, str):
        raise InvalidEnvelope("malformed kind, ts or nonce")
    if sender != signer:
        raise InvalidEnvelope(f"signed by {signer}, claims to be from {sender}")
    try:
        peer = PeerID.from_string(obj["peer_id"])
        bound = eth_address(peer).lower()
    except (CryptoError, TypeError, ValueError) as exc:
        raise InvalidEnvelope(f"peer_id is not a secp256k1 identity: {exc}") from None
    if bound != sender:
        raise InvalidEnvelope(f"peer_id {peer} belongs to {bound}, not to {sender}")
    if abs(now - ts / 1000) > MAX_CLOCK_SKEW:
        raise InvalidEnvelope(f"message timestamp is {now - ts / 1000:.0f} s off")
    for name in ("to", "topic"):
        if obj[name] is not None and not isinstance(obj[name], str):
            raise InvalidEnvelope(f"{name} must be a string or null")
    return Envelope(kind, sender, peer, obj["data"], obj["to"], obj["topic"], ts, nonce)


class ReplayGuard:
    """Remembers recent (sender, nonce) pairs; a repeat inside the window is a replay."""

    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def check(self, env: Envelope) -> None:
        key = (env.sender, env.nonce)
        if key in self._seen:
            raise InvalidEnvelope(f"replayed message from {env.sender}")
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
