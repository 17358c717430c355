"""Configuration of the Kademlia DHT: protocol, mode, k, alpha, timeouts and limits in one place.

Defaults follow the kad-dht spec (k = 20, alpha = 10, provider records valid 48 h and
republished every 22 h, refresh every 10 min) and go-libp2p-kad-dht where the spec is silent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from multiaddr import Multiaddr

#: The public IPFS DHT protocol. A private network sets its own in :attr:`KadConfig.protocol_id`.
DEFAULT_PROTOCOL_ID = "/ipfs/kad/1.0.0"


class Mode(enum.Enum):
    """A server answers requests and enters other peers' routing tables; a client only asks."""

    CLIENT = "client"
    SERVER = "server"


@dataclass
class KadConfig:
    """Settings of a :class:`~p2pnet.kad.dht.KadDHT`; every limit is here."""

    #: The kad protocol id; peers only talk (and enter each other's tables) on the same id.
    protocol_id: str = DEFAULT_PROTOCOL_ID
    #: Server (advertise the protocol, answer requests) or client (query only).
    mode: Mode = Mode.SERVER
    #: Bucket size and replication factor.
    k: int = 20
    #: Requests in flight per lookup (the spec's default; the Kademlia paper used 3).
    alpha: int = 10
    #: Timeout of one request (dial + negotiate + write + read the answer).
    request_timeout: float = 10.0
    #: Timeout of a whole lookup (find_peer, get_closest_peers, get_value, find_providers).
    query_timeout: float = 60.0
    #: How long an inbound stream may stay idle between two requests (js: 10 s).
    inbound_idle_timeout: float = 10.0
    #: Outbound streams are reused for later requests to the same peer while idle for less than
    #: this (keep it below the remote's inbound idle timeout: ours and js's are 10 s).
    stream_idle_timeout: float = 5.0
    #: Idle outbound streams kept per peer (0: a new stream per request).
    max_idle_streams_per_peer: int = 2
    #: Largest kad message accepted (go allows 4 MiB, rust 16 KiB).
    max_message_size: int = 1024 * 1024
    #: Largest record value accepted on PUT_VALUE and from GET_VALUE answers.
    max_value_size: int = 16 * 1024
    #: Largest key accepted in any request.
    max_key_size: int = 1024
    #: Closer/provider peers read from one answer at most, and addresses per peer at most.
    max_peers_per_answer: int = 64
    max_addrs_per_peer: int = 32
    #: Records we hold at most (in-memory store).
    max_records: int = 65536
    #: Records older than this (by time received) are no longer served (go: 36 h).
    max_record_age: float = 36 * 3600.0
    #: Provider records: validity, republish interval (spec: 48 h / 22 h).
    provider_ttl: float = 48 * 3600.0
    provider_republish_interval: float = 22 * 3600.0
    #: How long provider addresses are kept in the peer store (spec: about 30 min).
    provider_addr_ttl: float = 30 * 60.0
    #: Provider store bounds: keys, and providers per key.
    max_provider_keys: int = 65536
    max_providers_per_key: int = 64
    #: Records and provider entries one peer may have us store (p2pnet/kad/quota.py decides
    #: what a full store evicts: never the entries of peers that store less).
    max_records_per_peer: int = 1024
    max_provider_entries_per_peer: int = 1024
    #: How often expired records and providers are dropped.
    cleanup_interval: float = 3600.0
    #: Bucket refresh: interval, and the largest common-prefix length refreshed (go: 15).
    refresh_interval: float = 600.0
    max_refresh_cpl: int = 15
    #: Run a bootstrap (self lookup + bucket refresh) when started, and then every
    #: ``refresh_interval``; turn off for tests that drive bootstrap themselves.
    auto_refresh: bool = True
    #: Peers dialled by :meth:`KadDHT.bootstrap` when called without arguments.
    bootstrap_peers: list[str | Multiaddr] = field(default_factory=list)
    #: Liveness check of the least recently seen peer of a full bucket, and of the periodic
    #: check below: how long the peer has to answer (a FIND_NODE of our own ID).
    liveness_timeout: float = 5.0
    #: Periodic liveness check: every ``liveness_interval`` seconds (0: never) the routing
    #: table peers that have not answered a request of ours for ``liveness_grace`` seconds are
    #: sent a FIND_NODE; those that do not answer leave the table (as go-libp2p-kad-dht evicts
    #: peers silent for its grace period on each refresh). At most ``max_liveness_checks`` are
    #: in flight at a time, so a table full of dead peers costs a bounded trickle of requests.
    liveness_interval: float = 60.0
    liveness_grace: float = 30 * 60.0
    max_liveness_checks: int = 8
    #: Failed requests in a row after which a peer leaves the routing table.
    max_failures: int = 3
    #: GET_VALUE: valid answers to collect before stopping (go's default quorum is 0: all).
    default_quorum: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.mode, Mode):
            self.mode = Mode(self.mode)
        if self.liveness_interval < 0 or self.liveness_grace < 0 or self.max_liveness_checks < 1:
            raise ValueError("liveness_interval and liveness_grace must be >= 0, checks >= 1")
        if self.k < 1 or self.alpha < 1:
            raise ValueError("k and alpha must be at least 1")
        if not self.protocol_id.startswith("/"):
            raise ValueError(f"protocol id must start with '/': {self.protocol_id!r}")
