"""NodeConfig: every setting of a :class:`~p2pnet.node.Node` in one typed object.

It can be built in code, or loaded from an env file / the environment (``PRIVATE_KEY``,
``BOOTSTRAP_PEERS``, ``LISTEN_ADDRS``, ``DHT_MODE``, ``REGISTRY_ADDRESS``, ``RPC_URL``,
``REGISTRY_POLICY``, ``AGENT_ID``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pnet.clock import Clock, SystemClock
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.errors import P2PError
from p2pnet.host.config import HostConfig
from p2pnet.kad.config import KadConfig, Mode
from p2pnet.pubsub.params import GossipsubConfig
from p2pnet.pubsub.score import PeerScoreParams


class ConfigError(P2PError, ValueError):
    """A setting is missing, malformed or contradicts another."""


@dataclass
class NodeConfig:
    #: Multiaddrs to listen on. Port 0 picks a free port.
    listen_addrs: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    #: The node's identity. If unset: ``private_key`` (an Ethereum key, hex), else a new key.
    identity: KeyPair | None = None
    #: An Ethereum private key (hex, with or without 0x): the node's secp256k1 identity.
    private_key: str | None = None
    #: Key type of a freshly generated identity.
    key_type: KeyType = KeyType.Ed25519
    #: Peers to connect to at start (multiaddrs with /p2p/<id>).
    bootstrap_peers: list[str] = field(default_factory=list)
    #: A failed bootstrap (or losing every bootstrap peer) is retried after this many seconds,
    #: doubling per failure up to ``bootstrap_retry_max`` (with jitter from the node's RNG).
    bootstrap_retry_initial: float = 1.0
    bootstrap_retry_max: float = 300.0
    #: Run the Kademlia DHT.
    enable_dht: bool = True
    #: Run gossipsub.
    enable_pubsub: bool = True
    host: HostConfig = field(default_factory=HostConfig)
    kad: KadConfig = field(default_factory=lambda: KadConfig(mode=Mode.CLIENT))
    pubsub: GossipsubConfig = field(default_factory=GossipsubConfig)
    #: Gossipsub peer-score parameters (topics without parameters score no P1-P4).
    pubsub_score: PeerScoreParams = field(default_factory=PeerScoreParams)
    #: The node's one clock (timers, ages, record timestamps); a VirtualClock in simulations.
    clock: Clock = field(default_factory=SystemClock)
    #: Seed of the node's random number generator; None draws one from the OS.
    seed: int | None = None
    #: On-chain agent registry (ERC-8004 identity registry), used by agents: docs/registry.md.
    registry_address: str | None = None
    rpc_url: str | None = None
    #: off | annotate | enforce (None: annotate with a registry, off without).
    registry_policy: str | None = None
    #: The agentId this node states (None: found on chain).
    agent_id: str | None = None

    def make_identity(self) -> KeyPair:
        if self.identity is not None:
            return self.identity
        if self.private_key:
            try:
                return KeyPair.from_eth_private_key(self.private_key)
            except P2PError as exc:
                raise ConfigError(
                    f"PRIVATE_KEY is not a valid Ethereum private key: {exc}"
                ) from exc
        return KeyPair.generate(self.key_type)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> NodeConfig:
        """A config from environment variables (``os.environ`` by default)."""
        env = os.environ if env is None else env
        cfg = cls(**overrides)  # type: ignore[arg-type]
        for name, value in common_env_settings(env).items():
            setattr(cfg, name, value)
        if env.get("LISTEN_ADDRS"):
            cfg.listen_addrs = split_list(env["LISTEN_ADDRS"])
        if env.get("DHT_MODE"):
            mode = env["DHT_MODE"].strip().lower()
            if mode not in ("client", "server"):
                raise ConfigError(f"DHT_MODE must be client or server, not {mode!r}")
            cfg.kad.mode = Mode(mode)
        return cfg

    @classmethod
    def from_env_file(cls, path: str | Path, **overrides: object) -> NodeConfig:
        return cls.from_env(read_env_file(path), **overrides)


def common_env_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings every node and agent reads from an env file, by config field name."""
    settings: dict[str, Any] = {}
    if env.get("PRIVATE_KEY"):
        settings["private_key"] = env["PRIVATE_KEY"].strip()
    if env.get("BOOTSTRAP_PEERS"):
        settings["bootstrap_peers"] = split_list(env["BOOTSTRAP_PEERS"])
    if env.get("REGISTRY_ADDRESS"):
        settings["registry_address"] = env["REGISTRY_ADDRESS"].strip()
    if env.get("RPC_URL"):
        settings["rpc_url"] = env["RPC_URL"].strip()
    if env.get("REGISTRY_POLICY"):
        settings["registry_policy"] = env["REGISTRY_POLICY"].strip()
    if env.get("AGENT_ID"):
        settings["agent_id"] = env["AGENT_ID"].strip()
    return settings


def split_list(text: str) -> list[str]:
    """Comma- or whitespace-separated values."""
    return [p for p in re.split(r"[,\s]+", text.strip()) if p]


_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def read_env_file(path: str | Path) -> dict[str, str]:
    """Parse ``KEY=value`` lines (``#`` comments, optional quotes and ``export``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read env file {path}: {exc}") from exc
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _ENV_LINE.match(line)
        if m is None:
            raise ConfigError(f"{path}:{number}: not a KEY=value line")
        key, value = m.group(1), m.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        values[key] = value
    return values


def load_or_create_eth_key(path: str | Path) -> KeyPair:
    """The secp256k1 identity kept in ``path`` (an env file with ``PRIVATE_KEY``).

    If the file does not exist, a new key is generated and written there, readable by the owner
    only, so the node keeps its PeerID and ETH address across restarts.
    """
    file = Path(path)
    if file.exists():
        key = read_env_file(file).get("PRIVATE_KEY", "")
        if not key:
            raise ConfigError(f"{file} has no PRIVATE_KEY line")
        try:
            return KeyPair.from_eth_private_key(key)
        except P2PError as exc:
            raise ConfigError(f"{file}: PRIVATE_KEY is not an Ethereum private key: {exc}") from exc
    pair = KeyPair.generate(KeyType.Secp256k1)
    secret = pair.private_key.to_bytes().hex()
    text = f"# p2pnet node identity (keep it secret)\nPRIVATE_KEY=0x{secret}\n"
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot create key file {file}: {exc}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return pair
