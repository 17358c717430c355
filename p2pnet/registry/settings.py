"""The registry settings of a node: REGISTRY_ADDRESS, RPC_URL, REGISTRY_POLICY, AGENT_ID.

Checked when the node is configured, so a malformed value is an error at start
(``INVALID_FIELDS``), never a silent default.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from p2pnet.crypto.eth import is_eth_address, to_checksum_address
from p2pnet.registry.errors import RegistrySettingsError

RPC_SCHEMES = ("http", "https", "ws", "wss")
_HEX_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


class RegistryPolicy(enum.Enum):
    #: The registry is not consulted.
    OFF = "off"
    #: Events and discover results say whether each agent is registered; nothing is refused.
    ANNOTATE = "annotate"
    #: Topic messages, direct messages and presence records of unregistered agents are refused.
    ENFORCE = "enforce"


def parse_policy(text: str) -> RegistryPolicy:
    try:
        return RegistryPolicy(text.strip().lower())
    except ValueError:
        raise RegistrySettingsError(
            f"REGISTRY_POLICY must be off, annotate or enforce, not {text!r}"
        ) from None


def parse_registry_address(text: str) -> str:
    """A checksummed contract address; a mixed-case address must carry a valid checksum."""
    value = text.strip()
    if not _HEX_ADDRESS.match(value):
        raise RegistrySettingsError(
            f"REGISTRY_ADDRESS must be 0x followed by 40 hex digits, not {text!r}"
        )
    if not is_eth_address(value):
        raise RegistrySettingsError(f"REGISTRY_ADDRESS {text!r} has a wrong EIP-55 checksum")
    return to_checksum_address(value)


_CAIP10 = re.compile(r"^eip155:([1-9][0-9]{0,19}):(.*)$")


def parse_registry_ref(text: str) -> tuple[int | None, str]:
    """``0x<address>`` or the CAIP-10 form ``eip155:<chainId>:0x<address>`` (then the node
    checks that RPC_URL serves that chain); returns ``(chain id or None, checksummed address)``."""
    m = _CAIP10.match(text.strip())
    if m is None:
        return None, parse_registry_address(text)
    return int(m.group(1)), parse_registry_address(m.group(2))


def parse_rpc_url(text: str) -> str:
    value = text.strip()
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError for a malformed port
    except ValueError as exc:
        raise RegistrySettingsError(f"RPC_URL {text!r} is not a URL: {exc}") from None
    if parts.scheme not in RPC_SCHEMES:
        raise RegistrySettingsError(f"RPC_URL must be an http(s):// or ws(s):// URL, not {text!r}")
    if not parts.hostname or any(c.isspace() for c in value):
        raise RegistrySettingsError(f"RPC_URL {text!r} has no valid host")
    del port
    return value


def parse_agent_id(text: str | int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise RegistrySettingsError(f"AGENT_ID must be an integer, not {text!r}") from None
    if not 0 <= value < 2**256:
        raise RegistrySettingsError(f"AGENT_ID {value} is out of range (0 .. 2**256-1)")
    return value


@dataclass(frozen=True)
class RegistrySettings:
    """Validated registry settings; ``policy`` OFF means the registry is not used at all."""

    policy: RegistryPolicy
    address: str | None = None
    rpc_url: str | None = None
    #: The agentId this node states in its presence record and announcements; None: found on
    #: chain (the token our address owns or is the agentWallet of), if any.
    agent_id: int | None = None
    #: The chain REGISTRY_ADDRESS names (its CAIP-10 form); None: whatever RPC_URL serves.
    chain_id: int | None = None

    @classmethod
    def parse(
        cls,
        address: str | None,
        rpc_url: str | None,
        policy: str | RegistryPolicy | None,
        agent_id: str | int | None = None,
        *,
        backend_given: bool = False,
    ) -> RegistrySettings:
        """Check the settings together. Without a policy: ``annotate`` when a registry is
        configured, ``off`` when not. A policy other than off needs both address and URL
        (unless the caller brings its own backend, ``backend_given``)."""
        chain_id, addr = parse_registry_ref(address) if address else (None, None)
        url = parse_rpc_url(rpc_url) if rpc_url else None
        if isinstance(policy, RegistryPolicy):
            pol = policy
        elif policy:
            pol = parse_policy(policy)
        else:
            configured = addr or url or backend_given
            pol = RegistryPolicy.ANNOTATE if configured else RegistryPolicy.OFF
        if pol is not RegistryPolicy.OFF and not backend_given:
            if addr is None:
                raise RegistrySettingsError(f"REGISTRY_POLICY={pol.value} needs REGISTRY_ADDRESS")
            if url is None:
                raise RegistrySettingsError(f"REGISTRY_POLICY={pol.value} needs RPC_URL")
        aid = parse_agent_id(agent_id) if agent_id is not None and agent_id != "" else None
        return cls(policy=pol, address=addr, rpc_url=url, agent_id=aid, chain_id=chain_id)

    @property
    def enabled(self) -> bool:
        return self.policy is not RegistryPolicy.OFF
