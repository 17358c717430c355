# mypy: disable-error-code="type-arg"
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStats(_message.Message):
    __slots__ = ("peers", "mesh", "dht_table_size", "uptime", "messages_in", "messages_out", "rejected")
    class MeshEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PEERS_FIELD_NUMBER: _ClassVar[int]
    MESH_FIELD_NUMBER: _ClassVar[int]
    DHT_TABLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_IN_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_OUT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    peers: int
    mesh: _containers.ScalarMap[str, int]
    dht_table_size: int
    uptime: float
    messages_in: int
    messages_out: int
    rejected: int
    def __init__(self, peers: _Optional[int] = ..., mesh: _Optional[_Mapping[str, int]] = ..., dht_table_size: _Optional[int] = ..., uptime: _Optional[float] = ..., messages_in: _Optional[int] = ..., messages_out: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...

class RegistryStatus(_message.Message):
    __slots__ = ("policy", "registry", "registered", "agent_id", "error")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    policy: str
    registry: str
    registered: bool
    agent_id: int
    error: str
    def __init__(self, policy: _Optional[str] = ..., registry: _Optional[str] = ..., registered: _Optional[bool] = ..., agent_id: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("connected", "peer_id", "eth_address", "addrs", "mode", "name", "grpc_port", "stats", "registry")
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ETH_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRPC_PORT_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    connected: bool
    peer_id: str
    eth_address: str
    addrs: _containers.RepeatedScalarFieldContainer[str]
    mode: str
    name: str
    grpc_port: int
    stats: NodeStats
    registry: RegistryStatus
    def __init__(self, connected: _Optional[bool] = ..., peer_id: _Optional[str] = ..., eth_address: _Optional[str] = ..., addrs: _Optional[_Iterable[str]] = ..., mode: _Optional[str] = ..., name: _Optional[str] = ..., grpc_port: _Optional[int] = ..., stats: _Optional[_Union[NodeStats, _Mapping]] = ..., registry: _Optional[_Union[RegistryStatus, _Mapping]] = ...) -> None: ...

class PeerList(_message.Message):
    __slots__ = ("addrs",)
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    addrs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, addrs: _Optional[_Iterable[str]] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("port", "bootstrap_peers", "private_key", "name", "retry_bootstrap")
    PORT_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_PEERS_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RETRY_BOOTSTRAP_FIELD_NUMBER: _ClassVar[int]
    port: int
    bootstrap_peers: PeerList
    private_key: str
    name: str
    retry_bootstrap: bool
    def __init__(self, port: _Optional[int] = ..., bootstrap_peers: _Optional[_Union[PeerList, _Mapping]] = ..., private_key: _Optional[str] = ..., name: _Optional[str] = ..., retry_bootstrap: _Optional[bool] = ...) -> None: ...

class DisconnectRequest(_message.Message):
    __slots__ = ("peer_id",)
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    def __init__(self, peer_id: _Optional[str] = ...) -> None: ...

class DisconnectResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConnectedPeer(_message.Message):
    __slots__ = ("peer_id", "eth_address", "addrs", "direction", "name")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ETH_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    eth_address: str
    addrs: _containers.RepeatedScalarFieldContainer[str]
    direction: str
    name: str
    def __init__(self, peer_id: _Optional[str] = ..., eth_address: _Optional[str] = ..., addrs: _Optional[_Iterable[str]] = ..., direction: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ListPeersResponse(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[ConnectedPeer]
    def __init__(self, peers: _Optional[_Iterable[_Union[ConnectedPeer, _Mapping]]] = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("to", "data_json")
    TO_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    to: str
    data_json: str
    def __init__(self, to: _Optional[str] = ..., data_json: _Optional[str] = ...) -> None: ...

class SendResponse(_message.Message):
    __slots__ = ("peer_id",)
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    def __init__(self, peer_id: _Optional[str] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("topic", "data_json")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    topic: str
    data_json: str
    def __init__(self, topic: _Optional[str] = ..., data_json: _Optional[str] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: str
    def __init__(self, topic: _Optional[str] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnsubscribeRequest(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: str
    def __init__(self, topic: _Optional[str] = ...) -> None: ...

class UnsubscribeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DiscoverRequest(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: str
    def __init__(self, topic: _Optional[str] = ...) -> None: ...

class AgentRegistration(_message.Message):
    __slots__ = ("registered", "agent_id", "agent_registry", "agent_name", "services_json")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_REGISTRY_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICES_JSON_FIELD_NUMBER: _ClassVar[int]
    registered: bool
    agent_id: int
    agent_registry: str
    agent_name: str
    services_json: str
    def __init__(self, registered: _Optional[bool] = ..., agent_id: _Optional[int] = ..., agent_registry: _Optional[str] = ..., agent_name: _Optional[str] = ..., services_json: _Optional[str] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("peer_id", "eth_address", "topics", "addrs", "name", "registry")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ETH_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    eth_address: str
    topics: _containers.RepeatedScalarFieldContainer[str]
    addrs: _containers.RepeatedScalarFieldContainer[str]
    name: str
    registry: AgentRegistration
    def __init__(self, peer_id: _Optional[str] = ..., eth_address: _Optional[str] = ..., topics: _Optional[_Iterable[str]] = ..., addrs: _Optional[_Iterable[str]] = ..., name: _Optional[str] = ..., registry: _Optional[_Union[AgentRegistration, _Mapping]] = ...) -> None: ...

class DiscoverResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ...) -> None: ...

class ShutdownRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShutdownResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EventsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MessagesRequest(_message.Message):
    __slots__ = ("topic",)
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    topic: str
    def __init__(self, topic: _Optional[str] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("from_peer_id", "from_eth", "data_json", "topic", "direct", "via", "registry")
    FROM_PEER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ETH_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    from_peer_id: str
    from_eth: str
    data_json: str
    topic: str
    direct: bool
    via: str
    registry: AgentRegistration
    def __init__(self, from_peer_id: _Optional[str] = ..., from_eth: _Optional[str] = ..., data_json: _Optional[str] = ..., topic: _Optional[str] = ..., direct: _Optional[bool] = ..., via: _Optional[str] = ..., registry: _Optional[_Union[AgentRegistration, _Mapping]] = ...) -> None: ...

class PeerConnected(_message.Message):
    __slots__ = ("peer_id", "addr", "direction", "eth_address")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    ETH_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    addr: str
    direction: str
    eth_address: str
    def __init__(self, peer_id: _Optional[str] = ..., addr: _Optional[str] = ..., direction: _Optional[str] = ..., eth_address: _Optional[str] = ...) -> None: ...

class PeerDisconnected(_message.Message):
    __slots__ = ("peer_id", "eth_address")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ETH_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    eth_address: str
    def __init__(self, peer_id: _Optional[str] = ..., eth_address: _Optional[str] = ...) -> None: ...

class ErrorEvent(_message.Message):
    __slots__ = ("code", "message", "command")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    command: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., command: _Optional[str] = ...) -> None: ...

class LogEvent(_message.Message):
    __slots__ = ("level", "namespace", "message", "meta_json")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    META_JSON_FIELD_NUMBER: _ClassVar[int]
    level: str
    namespace: str
    message: str
    meta_json: str
    def __init__(self, level: _Optional[str] = ..., namespace: _Optional[str] = ..., message: _Optional[str] = ..., meta_json: _Optional[str] = ...) -> None: ...

class BootstrapFailed(_message.Message):
    __slots__ = ("attempt", "error", "retry_in")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRY_IN_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    error: str
    retry_in: float
    def __init__(self, attempt: _Optional[int] = ..., error: _Optional[str] = ..., retry_in: _Optional[float] = ...) -> None: ...

class BootstrapSucceeded(_message.Message):
    __slots__ = ("attempt", "dht_table_size")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DHT_TABLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    dht_table_size: int
    def __init__(self, attempt: _Optional[int] = ..., dht_table_size: _Optional[int] = ...) -> None: ...

class Lagged(_message.Message):
    __slots__ = ("missed",)
    MISSED_FIELD_NUMBER: _ClassVar[int]
    missed: int
    def __init__(self, missed: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "ready", "message", "peer_discovered", "peer_connected", "peer_disconnected", "error", "log", "lagged", "bootstrap_failed", "bootstrap_succeeded")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PEER_DISCOVERED_FIELD_NUMBER: _ClassVar[int]
    PEER_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    PEER_DISCONNECTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    LAGGED_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_FAILED_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    ready: NodeInfo
    message: Message
    peer_discovered: AgentInfo
    peer_connected: PeerConnected
    peer_disconnected: PeerDisconnected
    error: ErrorEvent
    log: LogEvent
    lagged: Lagged
    bootstrap_failed: BootstrapFailed
    bootstrap_succeeded: BootstrapSucceeded
    def __init__(self, seq: _Optional[int] = ..., ready: _Optional[_Union[NodeInfo, _Mapping]] = ..., message: _Optional[_Union[Message, _Mapping]] = ..., peer_discovered: _Optional[_Union[AgentInfo, _Mapping]] = ..., peer_connected: _Optional[_Union[PeerConnected, _Mapping]] = ..., peer_disconnected: _Optional[_Union[PeerDisconnected, _Mapping]] = ..., error: _Optional[_Union[ErrorEvent, _Mapping]] = ..., log: _Optional[_Union[LogEvent, _Mapping]] = ..., lagged: _Optional[_Union[Lagged, _Mapping]] = ..., bootstrap_failed: _Optional[_Union[BootstrapFailed, _Mapping]] = ..., bootstrap_succeeded: _Optional[_Union[BootstrapSucceeded, _Mapping]] = ...) -> None: ...
