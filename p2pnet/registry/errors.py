"""Errors of the agent registry. Each carries the stable code p2p-node reports."""

from __future__ import annotations

from p2pnet.errors import P2PError


class RegistryError(P2PError):
    code = "INTERNAL"


class RegistrySettingsError(RegistryError, ValueError):
    """A malformed REGISTRY_ADDRESS, RPC_URL or REGISTRY_POLICY."""

    code = "INVALID_FIELDS"


class RegistryUnavailable(RegistryError):
    """The chain cannot be asked (unreachable, hanging or garbage RPC), or the address does not
    hold a registry (no code, another interface, another chain than expected)."""

    code = "REGISTRY_UNAVAILABLE"


class RegistryRevert(RegistryError):
    """The contract answered with a revert (e.g. ``ownerOf`` of an id that does not exist)."""


class RegistryBadAnswer(RegistryUnavailable):
    """The contract answered, but not in the shape the interface defines (undecodable)."""
