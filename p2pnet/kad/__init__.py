"""Kademlia DHT (libp2p kad-dht): routing table, RPCs, iterative lookups, records, providers.

See docs/kad.md. The service is :class:`KadDHT`; the sans-IO cores are
:class:`~p2pnet.kad.routing_table.RoutingTable` and :class:`~p2pnet.kad.query.Lookup`.
"""

from p2pnet.kad.agent_record import (
    AgentPresence,
    AgentRecordValidator,
    agent_key,
    sign_agent_record,
    verify_agent_record,
)
from p2pnet.kad.config import DEFAULT_PROTOCOL_ID, KadConfig, Mode
from p2pnet.kad.dht import KadDHT
from p2pnet.kad.errors import (
    InvalidRecord,
    KadError,
    KadProtocolError,
    NoPeersError,
    NotFound,
    PeerNotFound,
    RecordNotFound,
)
from p2pnet.kad.messages import PeerInfo
from p2pnet.kad.providers import InMemoryProviderStore, ProviderStore
from p2pnet.kad.query import Lookup, LookupStats
from p2pnet.kad.records import (
    InMemoryRecordStore,
    NamespacedValidator,
    PublicKeyValidator,
    RecordStore,
    StoredRecord,
    Validator,
)
from p2pnet.kad.routing_table import RoutingTable

__all__ = [
    "DEFAULT_PROTOCOL_ID",
    "AgentPresence",
    "AgentRecordValidator",
    "InMemoryProviderStore",
    "InMemoryRecordStore",
    "InvalidRecord",
    "KadConfig",
    "KadDHT",
    "KadError",
    "KadProtocolError",
    "Lookup",
    "LookupStats",
    "Mode",
    "NamespacedValidator",
    "NoPeersError",
    "NotFound",
    "PeerInfo",
    "PeerNotFound",
    "ProviderStore",
    "PublicKeyValidator",
    "RecordNotFound",
    "RecordStore",
    "RoutingTable",
    "StoredRecord",
    "Validator",
    "agent_key",
    "sign_agent_record",
    "verify_agent_record",
]
