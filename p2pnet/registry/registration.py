"""ERC-8004 registration files: the JSON an agentURI points at (name, services, registrations).

p2pnet writes one with a ``libp2p`` service (the agent's PeerID and multiaddrs) and reads any,
from ``data:`` URIs (base64 or percent-encoded) and ``https:`` URLs (bounded in size and time).
``ipfs:`` and other schemes are reported as not resolvable.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

log = logging.getLogger("p2pnet.registry")

REGISTRATION_TYPE = "https://eips.ethereum.org/EIPS/eip-8004#registration-v1"
LIBP2P_SERVICE = "libp2p"
MAX_REGISTRATION_FILE = 64 * 1024


class RegistrationFileError(ValueError):
    """A registration file that cannot be fetched or parsed."""


@dataclass(frozen=True)
class RegistrationFile:
    name: str
    description: str = ""
    #: Each ``{"name": ..., "endpoint": ..., ...}`` as found (only dicts with a string name).
    services: list[dict[str, Any]] = field(default_factory=list)

    def libp2p(self) -> dict[str, Any] | None:
        for service in self.services:
            if service.get("name") == LIBP2P_SERVICE:
                return service
        return None


def build_registration(
    name: str,
    peer_id: str,
    addrs: Sequence[str],
    *,
    description: str = "",
    registrations: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The registration file of a p2pnet agent: a ``libp2p`` service naming its PeerID and
    multiaddrs (the endpoint is the first multiaddr with ``/p2p/<PeerID>``)."""
    full = [a if "/p2p/" in a else f"{a}/p2p/{peer_id}" for a in addrs]
    service: dict[str, Any] = {
        "name": LIBP2P_SERVICE,
        "endpoint": full[0] if full else f"/p2p/{peer_id}",
        "version": "1.0.0",
        "peerId": peer_id,
        "addrs": full,
    }
    return {
        "type": REGISTRATION_TYPE,
        "name": name,
        "description": description or f"p2pnet agent {name}",
        "services": [service],
        "active": True,
        "registrations": list(registrations),
    }


def data_uri(document: dict[str, Any]) -> str:
    """``data:application/json;base64,...`` of a JSON document (stored on chain as is)."""
    raw = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return "data:application/json;base64," + base64.b64encode(raw).decode("ascii")


def parse_registration(raw: bytes) -> RegistrationFile:
    if len(raw) > MAX_REGISTRATION_FILE:
        raise RegistrationFileError(f"registration file larger than {MAX_REGISTRATION_FILE} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RegistrationFileError(f"registration file is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RegistrationFileError("registration file is not a JSON object")
    name = doc.get("name")
    if not isinstance(name, str):
        raise RegistrationFileError("registration file has no name")
    description = doc.get("description")
    services_raw = doc.get("services", doc.get("endpoints", []))
    services = []
    if isinstance(services_raw, list):
        services = [
            s for s in services_raw if isinstance(s, dict) and isinstance(s.get("name"), str)
        ]
    return RegistrationFile(
        name=name[:256],
        description=description[:1024] if isinstance(description, str) else "",
        services=services[:32],
    )


def decode_data_uri(uri: str) -> bytes:
    """The bytes of an RFC 2397 ``data:`` URI."""
    if not uri.startswith("data:") or "," not in uri:
        raise RegistrationFileError("not a data: URI")
    meta, _, payload = uri[5:].partition(",")
    if len(payload) > 2 * MAX_REGISTRATION_FILE:
        raise RegistrationFileError("data: URI too large")
    if meta.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except ValueError as exc:
            raise RegistrationFileError(f"bad base64 in data: URI: {exc}") from None
    return unquote_to_bytes(payload)


async def fetch_registration(uri: str, timeout: float = 3.0) -> RegistrationFile:
    """Fetch and parse the registration file at ``uri`` (``data:`` or ``https:``)."""
    if uri.startswith("data:"):
        return parse_registration(decode_data_uri(uri))
    if uri.startswith("https://"):
        import aiohttp

        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
                session.get(uri, allow_redirects=True, max_redirects=3) as response,
            ):
                if response.status != 200:
                    raise RegistrationFileError(f"{uri}: HTTP {response.status}")
                raw = await response.content.read(MAX_REGISTRATION_FILE + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RegistrationFileError(f"cannot fetch {uri}: {exc!r}") from None
        return parse_registration(raw)
    scheme = uri.split(":", 1)[0] if ":" in uri else "(none)"
    raise RegistrationFileError(f"agentURI scheme {scheme!r} is not resolved (data: and https:)")
