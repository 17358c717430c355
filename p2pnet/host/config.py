"""Configuration of a host: addresses, timeouts and limits in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pnet.mux.yamux import YamuxConfig
from p2pnet.resources.connmgr import ConnManagerConfig
from p2pnet.resources.limits import ResourceLimits

DEFAULT_AGENT_VERSION = "p2pnet/0.1.0"
# The libp2p protocol version every implementation announces in identify.
DEFAULT_PROTOCOL_VERSION = "ipfs/0.1.0"


@dataclass
class HostConfig:
    """Limits and timeouts of a :class:`~p2pnet.host.host.Host`.

    Defaults follow the libp2p specs and go-/js-libp2p; docs/architecture.md lists them.
    """

    listen_addrs: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    #: TCP connect timeout per address.
    dial_timeout: float = 10.0
    #: A whole dial of a peer, all its addresses tried in parallel (host/dial_ranker.py).
    peer_dial_timeout: float = 15.0
    #: Whole upgrade (multistream + Noise + multistream + yamux) of a new connection.
    upgrade_timeout: float = 10.0
    #: multistream-select on a new stream.
    negotiate_timeout: float = 10.0
    #: Connections kept at most; new inbound connections beyond it are refused.
    max_connections: int = 1000
    agent_version: str = DEFAULT_AGENT_VERSION
    protocol_version: str = DEFAULT_PROTOCOL_VERSION
    yamux: YamuxConfig = field(default_factory=YamuxConfig)
    #: The resource manager's limits (docs/limits.md); scaled from this machine by default.
    resources: ResourceLimits = field(default_factory=ResourceLimits.for_machine)
    #: Watermarks of the connection manager (which peers to disconnect when there are too many).
    connmgr: ConnManagerConfig = field(default_factory=ConnManagerConfig)
    #: After a handler returns, the remote has this long (and may send this many more bytes) to
    #: close its side; otherwise the stream is reset, so nothing it sent stays buffered.
    drain_timeout: float = 2.0
    drain_limit: int = 64 * 1024
