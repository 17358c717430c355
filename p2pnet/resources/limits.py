"""The limits of the resource manager, and their defaults scaled from the machine.

docs/limits.md lists every limit with its default and what a peer sees when it hits it. The
defaults are p2pnet's own choices (not copied from another implementation): what one node on a
small machine can give one peer without letting that peer take the node down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

KiB = 1024
MiB = 1024 * KiB

#: Memory one peer may make us hold (buffers, frames under assembly), whatever it does.
PEER_MEMORY_CAP = 64 * MiB
#: The circuit relay's hop protocol (``p2pnet.relay.messages.HOP_PROTOCOL``; not imported, so
#: the limits do not depend on the relay), whose stream limits follow :class:`RelayLimits`.
RELAY_HOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/hop"


@dataclass
class ProtocolLimits:
    """Inbound streams of one protocol: across all peers, and per peer."""

    streams_inbound: int
    streams_inbound_per_peer: int


@dataclass
class RelayLimits:
    """The circuit relay v2 service (``hop``): the ``relay`` scope of the resource manager, and
    the per-circuit limits a relay puts in its STATUS and stop messages.

    The counts and the lifetime are go-libp2p's and js-libp2p's defaults; the data limit is
    raised so agent traffic (identify, DHT, a few direct messages) fits in one relayed
    connection.
    """

    #: Seconds a reservation lasts (the client refreshes it before it ends).
    reservation_ttl: int = 3600
    #: Reservations held at once: in total, and per IP address of the reserving peers (a peer
    #: holds at most one; a renewal replaces it).
    max_reservations: int = 128
    max_reservations_per_ip: int = 8
    #: Relayed connections at once: in total, and per peer (as source or destination).
    max_circuits: int = 256
    max_circuits_per_peer: int = 16
    #: Each relayed connection: seconds, and bytes in each direction (0: no limit). These go on
    #: the wire (the ``Limit`` of the relay's STATUS and stop messages).
    duration: int = 120
    data: int = 1 << 20
    #: Bytes a relay holds per direction of a circuit while copying (one read's worth), reserved
    #: against the peer scope of the end it came from.
    buffer: int = 64 * KiB

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            least = 0 if name in ("duration", "data") else 1
            if value < least:
                raise ValueError(f"RelayLimits.{name} must be at least {least}, not {value}")


@dataclass
class ResourceLimits:
    """Every limit of a :class:`~p2pnet.resources.manager.ResourceManager`.

    Build the defaults for this machine with :meth:`for_machine` (what ``NodeConfig`` does), or
    with :meth:`scaled` for a given memory and fd budget.
    """

    # -- system: the whole node
    #: Connections, by direction (fds are counted apart from these).
    system_conns_inbound: int = 512
    system_conns_outbound: int = 512
    #: Streams, by direction.
    system_streams_inbound: int = 8192
    system_streams_outbound: int = 8192
    #: Bytes buffered for peers (receive buffers, frames under assembly).
    system_memory: int = 512 * MiB
    #: File descriptors of connections (each TCP connection holds one).
    system_fds: int = 512

    # -- transient: connections still in their upgrade, streams still negotiating
    transient_conns: int = 128
    transient_streams: int = 1024
    transient_memory: int = 32 * MiB

    # -- per remote IP address (before the peer is known)
    conns_per_ip: int = 64
    #: Connections of one address in their upgrade: a quarter of ``transient_conns``, so stalled
    #: handshakes from one address never fill the transient scope for everyone.
    transient_conns_per_ip: int = 32
    #: New inbound connections per IP: a token bucket (per second, burst).
    conn_rate_per_ip: float = 16.0
    conn_burst_per_ip: int = 64

    # -- per peer (all its connections)
    peer_conns: int = 8
    peer_streams_inbound: int = 512
    peer_streams_outbound: int = 512
    peer_memory: int = PEER_MEMORY_CAP

    # -- per connection
    conn_streams_inbound: int = 256
    conn_streams_outbound: int = 512
    conn_memory: int = PEER_MEMORY_CAP
    #: New inbound streams per connection: a token bucket (per second, burst). A connection whose
    #: refused streams exceed ``stream_flood_close`` (refilled at the same rate) is closed, and
    #: its address may not connect again for ``flood_ban`` seconds.
    stream_rate_per_conn: float = 256.0
    stream_burst_per_conn: int = 512
    stream_flood_close: int = 1024
    flood_ban: float = 30.0

    # -- per stream
    stream_memory: int = 16 * MiB

    # -- per peer, of services
    #: Identify pushes taken from one peer: a token bucket (per second, burst). Beyond it a push
    #: stream is reset unread (a peer changes its protocols or addresses rarely).
    identify_push_rate: float = 1.0
    identify_push_burst: int = 8

    # -- per protocol (service); protocols not listed use ``default_protocol``
    default_protocol: ProtocolLimits = field(
        default_factory=lambda: ProtocolLimits(streams_inbound=4096, streams_inbound_per_peer=256)
    )
    protocols: dict[str, ProtocolLimits] = field(default_factory=dict)

    # -- the circuit relay service (when the node serves as a relay)
    relay: RelayLimits = field(default_factory=RelayLimits)

    def protocol(self, protocol: str) -> ProtocolLimits:
        limits = self.protocols.get(protocol)
        if limits is not None:
            return limits
        if protocol == RELAY_HOP_PROTOCOL:
            # A hop stream lasts as long as its circuit: one per circuit, and a few for
            # reservations. Derived from the relay's limits, so a peer at its circuit limit
            # still gets the spec's RESOURCE_LIMIT_EXCEEDED rather than a reset stream.
            relay = self.relay
            return ProtocolLimits(
                relay.max_circuits + relay.max_reservations, relay.max_circuits_per_peer + 4
            )
        return self.default_protocol

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
                raise ValueError(f"ResourceLimits.{name} must be positive, not {value}")

    @classmethod
    def scaled(cls, memory: int, fds: int) -> ResourceLimits:
        """Defaults for a node that may use ``memory`` bytes and ``fds`` file descriptors.

        The system takes an eighth of the memory (64 MiB .. 2 GiB) and half the fds (the rest
        is left to files, the event loop and outbound sockets of the application); one peer
        gets at most :data:`PEER_MEMORY_CAP`, and at most an eighth of the system's memory.
        """
        system_memory = min(2048 * MiB, max(64 * MiB, memory // 8))
        system_fds = max(32, fds // 2)
        peer_memory = min(PEER_MEMORY_CAP, max(4 * MiB, system_memory // 8))
        conns = max(16, system_fds)
        return cls(
            system_conns_inbound=conns,
            system_conns_outbound=conns,
            system_memory=system_memory,
            system_fds=system_fds,
            transient_conns=max(8, min(256, conns // 4)),
            transient_conns_per_ip=max(2, min(256, conns // 4) // 4),
            transient_memory=max(4 * MiB, system_memory // 16),
            peer_memory=peer_memory,
            conn_memory=peer_memory,
            stream_memory=min(16 * MiB, peer_memory),
            protocols=default_protocol_limits(),
        )

    @classmethod
    def for_machine(cls) -> ResourceLimits:
        """:meth:`scaled` from this machine's physical memory and soft fd limit."""
        return cls.scaled(physical_memory(), fd_limit())


def default_protocol_limits() -> dict[str, ProtocolLimits]:
    """Per-protocol stream limits of the services that need fewer than the default.

    A gossipsub peer needs one inbound stream; identify and its push one at a time; ping one.
    """
    few = 8
    limits = {
        "/meshsub/1.2.0": ProtocolLimits(2048, 4),
        "/meshsub/1.1.0": ProtocolLimits(2048, 4),
        "/meshsub/1.0.0": ProtocolLimits(2048, 4),
        "/ipfs/id/1.0.0": ProtocolLimits(1024, few),
        "/ipfs/id/push/1.0.0": ProtocolLimits(1024, few),
        "/ipfs/ping/1.0.0": ProtocolLimits(1024, few),
    }
    return limits


def physical_memory() -> int:
    """Bytes of physical memory (1 GiB if the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1024 * MiB


def fd_limit() -> int:
    """The soft limit on open files (1024 if unknown)."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 1024
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 65536
    return int(soft)
