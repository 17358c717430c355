"""Kademlia DHT (libp2p kad-dht): routing table, RPCs, iterative lookups, records, providers.

See docs/kad.md. The service is :class:`KadDHT` (the asyncio adapter); the sans-IO cores are
:class:`~p2pnet.kad.behaviour.KadBehaviour` (every protocol decision),
:class:`~p2pnet.kad.routing_table.RoutingTable` and :class:`~p2pnet.kad.query.Lookup`.
"""

from p2pnet.kad.behaviour import KadBehaviour, PutResult, ValueResult
from p2pnet.kad.cid import provider_key
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
    UnknownNamespace,
)
from p2pnet.kad.messages import PeerInfo
from p2pnet.kad.providers import InMemoryProviderStore, ProviderStore
from p2pnet.kad.query import Lookup, LookupStats
from p2pnet.kad.records import (
    FunctionValidator,
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
    "FunctionValidator",
    "InMemoryProviderStore",
    "InMemoryRecordStore",
    "InvalidRecord",
    "KadBehaviour",
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
    "PutResult",
    "RecordNotFound",
    "RecordStore",
    "RoutingTable",
    "StoredRecord",
    "UnknownNamespace",
    "Validator",
    "ValueResult",
    "provider_key",
]
