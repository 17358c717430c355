"""Signed agent messages: what travels on the agent topics and on direct streams.

An envelope is ``signature (65 bytes) || payload``. The payload is canonical JSON (sorted keys,
no spaces, ASCII)::

    {"data": <any JSON>, "from": "0x<sender ETH address, lowercase>", "kind": "direct" |
     "broadcast" | "announce" | "status", "nonce": "<16 hex>", "peer_id": "<sender PeerID>",
     "to": "0x<recipient>" | null, "topic": "<topic>" | null, "ts": <unix ms>,
     "type": "p2pnet/agent-message/1"}

and the signature is the sender's EIP-191 ``personal_sign`` of the payload: the signed JSON
container of :mod:`p2pnet.agent.signed_json`, shared with presence records, so any Ethereum tool
can check who wrote a message. A receiver accepts an
envelope only if the signature recovers ``from``, ``peer_id`` is the libp2p identity of that same
key (a secp256k1 PeerID embeds it), the transport's authenticated sender is ``peer_id``, the
timestamp is within the allowed clock skew, and the nonce was not seen before (replay).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from p2pnet.agent.signed_json import (
    SignedJSONError,
    SignedJSONTooLarge,
    canonical_json,
    open_json,
    seal_json,
)
from p2pnet.crypto.eth import eth_address
from p2pnet.crypto.keys import KeyPair, Secp256k1PrivateKey
from p2pnet.errors import CryptoError, ProtocolError
from p2pnet.peer.peer_id import PeerID

ENVELOPE_TYPE = "p2pnet/agent-message/1"
KINDS = frozenset({"direct", "broadcast", "announce", "status"})
MAX_ENVELOPE_SIZE = 256 * 1024
#: Messages older or further in the future than this are refused (replay window).
MAX_CLOCK_SKEW = 300.0
_FIELDS = frozenset({"data", "from", "kind", "nonce", "peer_id", "to", "topic", "ts", "type"})


class EnvelopeTooLarge(ValueError):
    """The sealed message would exceed :data:`MAX_ENVELOPE_SIZE`."""


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
    try:
        return seal_json(
            _secret(key),
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
            },
            max_size=MAX_ENVELOPE_SIZE,
        )
    except SignedJSONTooLarge as exc:
        raise EnvelopeTooLarge(f"message {exc}") from None


def open_envelope(raw: bytes, *, now: float) -> Envelope:
    """Verify signature, structure, identity binding and freshness; raise InvalidEnvelope.

    ``now``: the receiver's wall clock (``node.clock.time()``), for the freshness check.
    """
    try:
        signed = open_json(raw, max_size=MAX_ENVELOPE_SIZE, fields=_FIELDS)
    except SignedJSONError as exc:
        raise InvalidEnvelope(f"not a signed agent message: {exc}") from None
    obj, signer = signed.obj, signed.signer
    if obj["type"] != ENVELOPE_TYPE:
        raise InvalidEnvelope("payload is not an agent message")
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


__all__ = [
    "ENVELOPE_TYPE",
    "KINDS",
    "MAX_CLOCK_SKEW",
    "MAX_ENVELOPE_SIZE",
    "Envelope",
    "EnvelopeTooLarge",
    "InvalidEnvelope",
    "ReplayGuard",
    "canonical_json",
    "open_envelope",
    "seal",
]
