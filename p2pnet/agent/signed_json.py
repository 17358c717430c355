"""The one container of every signed agent object: ``signature (65 bytes) || payload``.

The payload is canonical JSON (keys sorted, no spaces, ASCII only) of one object; the signature
is the signer's Ethereum ``personal_sign`` (EIP-191) of the payload bytes, ``r || s || v`` with
``v`` in {27, 28} and low ``s``. Any Ethereum wallet can produce it and anyone can check it by
recovering the signer's address. Presence records (:mod:`p2pnet.agent.record`) and agent
messages (:mod:`p2pnet.agent.envelope`) both use it, each with its own fields and limits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from p2pnet.crypto.eth import PERSONAL_SIGNATURE_SIZE, personal_sign, recover_personal_signer
from p2pnet.errors import CryptoError
from p2pnet.wire.json_bounded import loads_bounded

SIGNATURE_SIZE = PERSONAL_SIGNATURE_SIZE


class SignedJSONError(ValueError):
    """The bytes are not a well-formed signed JSON object (callers raise their own error)."""


class SignedJSONTooLarge(ValueError):
    """The object would not fit in ``max_size`` once signed."""


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, ASCII: one byte string per JSON value, so signatures match."""
    # NaN and Infinity are not JSON: refused here as every parser of ours refuses them
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def seal_json(secret: bytes, obj: dict[str, Any], *, max_size: int) -> bytes:
    """Sign ``obj`` with the secp256k1 ``secret``; raises :class:`SignedJSONTooLarge` beyond
    ``max_size``."""
    payload = canonical_json(obj)
    sealed = personal_sign(secret, payload) + payload
    if len(sealed) > max_size:
        raise SignedJSONTooLarge(f"of {len(sealed)} bytes exceeds {max_size}")
    return sealed


@dataclass(frozen=True)
class SignedJSON:
    """A verified container: who signed it (lowercase 0x address) and what."""

    signer: str
    obj: dict[str, Any]
    payload: bytes


def open_json(
    raw: bytes, *, max_size: int, fields: frozenset[str], optional: frozenset[str] = frozenset()
) -> SignedJSON:
    """Check size, signature, JSON, exactly ``fields`` (plus any of ``optional``) and canonical
    form; returns the signer and the object, or raises :class:`SignedJSONError` saying what is
    wrong."""
    if len(raw) > max_size:
        raise SignedJSONError(f"{len(raw)} bytes exceeds the limit of {max_size}")
    if len(raw) <= SIGNATURE_SIZE:
        raise SignedJSONError("too short for a signature and a payload")
    sig, payload = raw[:SIGNATURE_SIZE], raw[SIGNATURE_SIZE:]
    try:
        signer = recover_personal_signer(payload, sig)
    except CryptoError as exc:
        raise SignedJSONError(f"signature: {exc}") from None
    try:
        obj = loads_bounded(payload.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise SignedJSONError("payload is not ASCII JSON") from None
    if not isinstance(obj, dict) or not fields <= set(obj) <= fields | optional:
        extra = f" (and optionally {sorted(optional)})" if optional else ""
        raise SignedJSONError(f"payload must have exactly the fields {sorted(fields)}{extra}")
    if canonical_json(obj) != payload:
        raise SignedJSONError("payload is not canonical JSON")
    return SignedJSON(signer, obj, payload)
