"""An agent: a node whose identity is an Ethereum key, present in the DHT under its address.

The agent composes a :class:`~p2pnet.node.Node` (DHT in server mode for bootstrap nodes, client
mode otherwise) with presence records, direct messages, and the three agent topics
(``agent-announcements``, ``agent-messages``, ``node-status``). Every application message is an
envelope signed by the sender's key (:mod:`p2pnet.agent.envelope`); receivers verify it before
the application sees it, and a gossipsub message that fails is rejected (the sender's score
drops, P4).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multiaddr import Multiaddr

from p2pnet.agent.constants import (
    AGENT_TOPICS,
    ANNOUNCEMENTS_TOPIC,
    MESSAGES_TOPIC,
    STATUS_TOPIC,
    default_bootstrap_peers,
)
from p2pnet.agent.envelope import (
    Envelope,
    EnvelopeTooLarge,
    InvalidEnvelope,
    open_envelope,
    seal,
)
from p2pnet.agent.errors import (
    AgentError,
    DhtLookupFailed,
    DialFailed,
    InvalidFields,
    MessageTooLarge,
    NotConnected,
    PeerNotFound,
    PortInUse,
    SendFailed,
)
from p2pnet.agent.messaging import DirectMessaging
from p2pnet.agent.presence import Presence
from p2pnet.agent.record import AGENT_NAMESPACE, AgentRecordValidator
from p2pnet.agent.status import MAX_STATUS_BYTES, build_status
from p2pnet.autonat.messages import (
    DIAL_REQUEST_PROTOCOL,
    Reachability,
    candidate_order,
    conclude,
)
from p2pnet.autonat.service import AutoNATClient, AutoNATServer
from p2pnet.config import (
    ConfigError,
    NodeConfig,
    common_env_settings,
    load_or_create_eth_key,
    read_env_file,
)
from p2pnet.crypto.eth import eth_address, is_eth_address, to_checksum_address
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.dcutr.service import HolePunchService
from p2pnet.errors import CryptoError, MessageTooLargeError, NoPeersError, P2PError
from p2pnet.events import BootstrapSucceeded, EventBus, EventStream, NodeEvent
from p2pnet.expiring_cache import ExpiringCache
from p2pnet.host.config import HostConfig
from p2pnet.kad.config import KadConfig, Mode
from p2pnet.kad.errors import KadError
from p2pnet.kad.errors import PeerNotFound as KadPeerNotFound
from p2pnet.node import Node
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.peerstore import TEMP_ADDR_TTL
from p2pnet.pubsub.errors import PubsubError
from p2pnet.pubsub.gossipsub import Subscription
from p2pnet.pubsub.messages import Message, ValidationResult
from p2pnet.pubsub.params import GossipsubConfig
from p2pnet.pubsub.score import PeerScoreParams, TopicScoreParams
from p2pnet.registry.errors import RegistrySettingsError
from p2pnet.registry.settings import RegistrySettings
from p2pnet.relay.messages import HOP_PROTOCOL
from p2pnet.relay.service import RelayService
from p2pnet.relay.transport import CircuitTransport
from p2pnet.resources.limits import ResourceLimits
from p2pnet.service import Lifecycle, ServiceState
from p2pnet.tasks import TaskOwner

if TYPE_CHECKING:
    from p2pnet.registry.backend import Registry
    from p2pnet.registry.policy import AgentRegistryPolicy

log = logging.getLogger("p2pnet.agent")


@dataclass(frozen=True)
class AgentMessage:
    """A verified message for the application."""

    from_peer: PeerID
    from_eth: str | None
    data: Any
    topic: str | None  # None for a direct message
    direct: bool
    #: With a registry policy: registered, agentId, agentRegistry (+ agentName, services).
    registry: dict[str, Any] | None = None
    #: A direct message: the remote address of the connection that carried it (a
    #: ``/p2p-circuit`` one when it came through a relay).
    via: str | None = None


@dataclass(frozen=True)
class AgentDiscovered:
    peer_id: PeerID
    eth_address: str | None
    addrs: list[Multiaddr] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    name: str = ""
    #: With a registry policy: registered, agentId, agentRegistry (+ agentName, services).
    registry: dict[str, Any] | None = None


AgentEvent = AgentMessage | AgentDiscovered


@dataclass
class AgentConfig:
    name: str = ""
    #: Ethereum private key (hex); None generates a fresh secp256k1 identity.
    private_key: str | None = None
    #: Without ``private_key``: keep the identity in this file (read it if it exists, else
    #: generate one and save it there), so the agent keeps its address across restarts.
    key_file: str | None = None
    listen_host: str = "127.0.0.1"
    port: int = 0
    #: Multiaddrs with /p2p/ of bootstrap nodes; None: the defaults in agent/constants.py.
    bootstrap_peers: list[str] | None = None
    #: Run the DHT in server mode and answer other nodes (a bootstrap node).
    bootstrap_node: bool = False
    #: True: :meth:`Agent.start` fails with ``DIAL_FAILED`` when no bootstrap peer answers its
    #: first attempt. False: start anyway; the node keeps retrying with backoff and the agent
    #: publishes its presence when it gets through (a service started before its bootstrap
    #: nodes). Bootstrap nodes never require it (they start one after another). Either way a
    #: running agent that loses every bootstrap peer bootstraps again by itself.
    require_bootstrap: bool = True
    #: Serve as a circuit relay (``/libp2p/circuit/relay/0.2.0/hop``) with the limits of
    #: ``resources.relay`` (docs/limits.md);
    #: None: on for bootstrap nodes, off for other agents.
    relay_service: bool | None = None
    #: The node's resource limits, relay limits included (docs/limits.md); None: the defaults
    #: scaled from this machine (``ResourceLimits.for_machine``).
    resources: ResourceLimits | None = None
    #: Reserve a relay slot on every bootstrap peer that serves as a relay, and advertise the
    #: relayed addresses (presence record, identify): for an agent others cannot dial (behind
    #: NAT). Renewed while connected, taken again after the agent rejoins.
    #: None: only when AutoNAT v2 says none of our addresses is reachable (checked with the
    #: bootstrap peers after each bootstrap).
    reserve_relay: bool | None = None
    #: Answer AutoNAT v2 dial requests; None: on for bootstrap nodes. ``autonat_allow_private``
    #: also dials private and loopback addresses (a LAN, a lab, the devnet), which a server on
    #: the internet should not.
    autonat_server: bool | None = None
    autonat_allow_private: bool = False
    #: Upgrade relayed connections to direct ones with DCUtR (hole punching, docs/deploy.md).
    #: ``holepunch_allow_private``: also offer and dial private addresses (a LAN, a lab);
    #: None: as ``autonat_allow_private``.
    hole_punching: bool = True
    holepunch_allow_private: bool | None = None
    #: Listen for direct TCP connections on ``listen_host:port``. False: dial out only and be
    #: reachable through relay reservations alone (with ``reserve_relay``).
    listen_direct: bool = True
    #: Seconds between re-publications of the presence record and the presence announcement.
    presence_interval: float = 300.0
    #: Seconds between node-status reports.
    status_interval: float = 30.0
    #: Seconds a direct message may take to be acknowledged.
    message_timeout: float = 10.0
    pubsub: GossipsubConfig = field(default_factory=GossipsubConfig)
    kad: KadConfig | None = None
    #: The agent registry (docs/registry.md): contract address, JSON-RPC URL, policy
    #: (off | annotate | enforce; None: annotate with a registry, off without), our agentId.
    registry_address: str | None = None
    rpc_url: str | None = None
    registry_policy: str | None = None
    agent_id: int | str | None = None
    #: Another registry backend than the chain (e.g. a StaticRegistry in tests).
    registry_backend: Registry | None = None

    def registry_settings(self) -> RegistrySettings:
        try:
            return RegistrySettings.parse(
                self.registry_address,
                self.rpc_url,
                self.registry_policy,
                self.agent_id,
                backend_given=self.registry_backend is not None,
            )
        except RegistrySettingsError as exc:
            raise InvalidFields(str(exc)) from exc

    #: What node-status reports as this node's role; empty: "bootstrap" or "agent" by mode.
    role: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> AgentConfig:
        # Explicit overrides (a connect command, flags) win over the env file.
        settings = {k: v for k, v in common_env_settings(env).items() if k not in overrides}
        return cls(**settings, **overrides)

    @classmethod
    def from_env_file(cls, path: str | Path, **overrides: Any) -> AgentConfig:
        return cls.from_env(read_env_file(path), **overrides)

    def node_config(self) -> NodeConfig:
        self.registry_settings()  # a malformed registry setting is an error at start
        if self.private_key:
            try:
                identity = KeyPair.from_eth_private_key(self.private_key)
            except P2PError as exc:
                raise InvalidFields(f"PRIVATE_KEY is not an Ethereum private key: {exc}") from exc
        elif self.key_file:
            try:
                identity = load_or_create_eth_key(self.key_file)
            except ConfigError as exc:
                raise InvalidFields(str(exc)) from exc
        else:
            identity = KeyPair.generate(KeyType.Secp256k1)
        kad = dataclasses.replace(self.kad) if self.kad is not None else KadConfig()
        kad.mode = Mode.SERVER if self.bootstrap_node else Mode.CLIENT
        ip = "ip6" if ":" in self.listen_host else "ip4"
        peers = self.bootstrap_peers
        if peers is None:
            peers = default_bootstrap_peers()
        return NodeConfig(
            listen_addrs=[f"/{ip}/{self.listen_host}/tcp/{self.port}"]
            if self.listen_direct
            else [],
            # The node bootstraps at start and retries with backoff (also after losing them).
            bootstrap_peers=list(peers),
            identity=identity,
            kad=kad,
            pubsub=self.pubsub,
            pubsub_score=PeerScoreParams(topics={t: agent_topic_score() for t in AGENT_TOPICS}),
            registry_address=self.registry_address,
            rpc_url=self.rpc_url,
            host=HostConfig() if self.resources is None else HostConfig(resources=self.resources),
        )


def agent_topic_score() -> TopicScoreParams:
    """Score parameters of agent topics: invalid messages (P4) count; delivery-rate penalties
    (P3, P3b) are off, because these topics are quiet and a silent mesh is normal there."""
    return TopicScoreParams(mesh_message_deliveries_weight=0.0, mesh_failure_penalty_weight=0.0)


def topic_key(topic: str) -> bytes:
    """The DHT provider key of a topic: a sha2-256 multihash, as provider keys are."""
    return b"\x12\x20" + hashlib.sha256(b"/p2pnet/topic/" + topic.encode()).digest()


#: Peers remembered in ``Agent.announced`` and ``Agent.statuses``; the least recently heard
#: ones are forgotten first, so a flood of announcing identities cannot grow memory, and
#: peers that stop reporting expire.
MAX_KNOWN_PEERS = 1024


#: Seconds a peer named by a DHT provider record has to answer a dial before ``discover`` leaves
#: it out as gone.
LIVENESS_TIMEOUT = 5.0


def _eth_of(peer: PeerID) -> str | None:
    try:
        return eth_address(peer)
    except CryptoError:
        return None


class Agent:
    def __init__(self, config: AgentConfig | None = None) -> None:
        self.config = config or AgentConfig()
        cfg = self.config
        self.node = Node(cfg.node_config())
        assert self.node.dht is not None and self.node.pubsub is not None
        self.dht = self.node.dht
        self.pubsub = self.node.pubsub
        self.eth_address: str = eth_address(self.node.peer_id)
        self.clock = self.node.clock
        # The DHT knows no agents: the agent network brings its record namespace.
        self.node.register_validator(AGENT_NAMESPACE, AgentRecordValidator())
        self.presence = Presence(self.node.host, self.dht, self.clock)
        self.messaging = DirectMessaging(
            self.node.host,
            self.eth_address,
            self._deliver_direct,
            clock=self.clock,
            timeout=cfg.message_timeout,
        )
        #: Relayed connections: every agent can dial /p2p-circuit addresses; with
        #: ``reserve_relay`` it also accepts them and keeps reservations.
        self.circuit = CircuitTransport(self.node.host)
        self.node.host.transports.append(self.circuit)
        self.circuit.on_addrs_changed = self._relay_addrs_changed
        serve = cfg.relay_service if cfg.relay_service is not None else cfg.bootstrap_node
        self.relay: RelayService | None = RelayService(self.node.host) if serve else None
        serve_autonat = cfg.autonat_server if cfg.autonat_server is not None else cfg.bootstrap_node
        self.autonat_server: AutoNATServer | None = (
            AutoNATServer(self.node.host, allow_private=cfg.autonat_allow_private)
            if serve_autonat
            else None
        )
        self.autonat = AutoNATClient(self.node.host, self.node.rng)
        punch_private = cfg.holepunch_allow_private
        if punch_private is None:
            punch_private = cfg.autonat_allow_private
        self.holepunch: HolePunchService | None = (
            HolePunchService(self.node.host, allow_private=punch_private)
            if cfg.hole_punching
            else None
        )
        #: What AutoNAT concluded about our addresses (``Reachability``).
        self.reachability = Reachability.UNKNOWN
        self._events: EventBus[AgentEvent] = EventBus()
        self._tasks = TaskOwner(f"agent {cfg.name or self.node.peer_id}")
        self._subs: dict[str, Subscription] = {}
        self._app_topics: set[str] = set()
        self._verified: OrderedDict[bytes, Envelope] = OrderedDict()
        #: Agents seen on agent-announcements: PeerID -> what they announced (for discovery
        #: events and the devnet display; never used to resolve addresses).
        #: Forgotten after three missed presence announcements.
        self.announced: ExpiringCache[PeerID, AgentDiscovered] = ExpiringCache(
            MAX_KNOWN_PEERS, 3 * cfg.presence_interval, self.clock
        )
        #: The latest node-status report of each node, forgotten after three missed reports.
        self.statuses: ExpiringCache[PeerID, dict[str, Any]] = ExpiringCache(
            MAX_KNOWN_PEERS, 3 * cfg.status_interval, self.clock
        )
        self.messages_in = 0
        self.messages_out = 0
        self.rejected = 0
        self._started_at = 0.0
        #: The addresses our last presence record named (republished when they change).
        self._published_addrs: frozenset[Multiaddr] = frozenset()
        self._lifecycle = Lifecycle(f"agent {cfg.name}")
        self._presence_retry = 1.0
        #: The registry policy (None when off): docs/registry.md.
        self.registry: AgentRegistryPolicy | None = None
        settings = cfg.registry_settings()
        if settings.enabled:
            self._setup_registry(settings)

    def _setup_registry(self, settings: RegistrySettings) -> None:
        from p2pnet.registry.guard import RegistryGuard
        from p2pnet.registry.policy import AgentRegistryPolicy

        guard = RegistryGuard(settings, self.config.registry_backend, clock=self.node.clock)
        policy = AgentRegistryPolicy(guard, self.eth_address, self.name)
        policy.on_own_change = self._registry_changed
        self.messaging.admit = self._admit_direct
        if policy.enforcing:
            self.node.register_validator(AGENT_NAMESPACE, policy.record_validator())
        self.registry = policy

    # -- identity ------------------------------------------------------------------------------

    @property
    def peer_id(self) -> PeerID:
        return self.node.peer_id

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def mode(self) -> str:
        return self.dht.mode.value

    def p2p_addrs(self) -> list[Multiaddr]:
        return self.node.p2p_addrs()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._lifecycle.closed:
            raise NotConnected("a closed agent cannot be restarted")
        if not self._lifecycle.begin_start():
            return
        self._started_at = self.clock.monotonic()
        try:
            # Registered before the node starts, so its first bootstrap result is seen too.
            node_events = self.node.events()
            # The node bootstraps as it starts; our handler and topics reach the bootstrap
            # peers right after (identify push, pubsub subscription announcements).
            await self._start_node()
            await self.circuit.start()
            if self.holepunch is not None:
                await self.holepunch.start()
            if self.relay is not None:
                await self.relay.start()
            await self.autonat.start()
            if self.autonat_server is not None:
                await self.autonat_server.start()
            if self.config.reserve_relay is not False:
                await self.node.host.listen(Multiaddr("/p2p-circuit"))
            await self.messaging.start()
            if self.registry is not None:
                await self.registry.start()
                self.presence.registry_fields = self.registry.record_fields()
            for topic in AGENT_TOPICS:
                self._join(topic)
            self._check_bootstrap()
            await self._reserve_relays()
            await self._publish_presence()
            await self._announce("join")
            self._tasks.spawn(self._follow_node(node_events), name="agent node events")
            self._tasks.spawn(self._maintenance(), name="agent maintenance")
        except BaseException:
            await self.close()
            raise

    async def _start_node(self) -> None:
        try:
            await self.node.start()
        except P2PError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
                raise PortInUse(f"port {self.config.port} is already in use") from exc
            raise AgentError(f"cannot start the node: {exc}") from exc

    def _check_bootstrap(self) -> None:
        """After the node's first bootstrap attempt: fail the start if it failed and the config
        requires it; otherwise the node is retrying in the background."""
        error = self.node.bootstrap_error
        if error is None:
            return
        if self.config.require_bootstrap and not self.config.bootstrap_node:
            raise DialFailed(f"no bootstrap peer could be reached: {error}")
        log.warning("%s: bootstrap peers not reachable yet, retrying: %s", self.name, error)

    async def close(self) -> None:
        previous = self._lifecycle.begin_close()
        if previous is None:
            return
        if previous is ServiceState.RUNNING and self.node.peers():
            try:
                async with asyncio.timeout(2):
                    await self._announce("leave")
            except (TimeoutError, P2PError) as exc:
                log.debug("leave announcement failed: %s", exc)
        await self._tasks.close()
        await self.messaging.close()
        if self.registry is not None:
            await self.registry.close()
        if self.relay is not None:
            await self.relay.close()
        if self.holepunch is not None:
            await self.holepunch.close()
        await self.circuit.close()
        await self.autonat.close()
        if self.autonat_server is not None:
            await self.autonat_server.close()
        await self.node.close()
        self._events.close()

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_running(self) -> None:
        if not self._lifecycle.running:
            raise NotConnected("the agent is not running")

    # -- events ---------------------------------------------------------------------------------

    def events(self) -> EventStream[AgentEvent]:
        return self._events.subscribe()

    # -- sending --------------------------------------------------------------------------------

    def _seal(
        self, kind: str, data: Any, *, to: str | None = None, topic: str | None = None
    ) -> bytes:
        """An envelope signed now (the node's wall clock) with a nonce from the node's RNG."""
        return seal(
            self.node.key,
            kind,
            data,
            now=self.clock.time(),
            nonce=self.node.rng.randbytes(8),
            to=to,
            topic=topic,
        )

    async def resolve(self, address: str) -> PeerID:
        """PeerID of the agent with ETH ``address``, by a DHT query; its addresses are noted."""
        if self.registry is not None and is_eth_address(address):
            # Under enforce the record validator (sync) checks the registration from the cache.
            await self.registry.prepare(address)
        presence = await self.presence.resolve(address)
        self.node.host.peerstore.add_addrs(presence.peer_id, presence.addrs, TEMP_ADDR_TTL)
        return presence.peer_id

    async def send(self, to: str, data: Any) -> PeerID:
        """Send ``data`` (any JSON value) to one agent, by PeerID or ETH address."""
        self._check_running()
        if not isinstance(to, str) or not to:
            raise InvalidFields("recipient must be a PeerID or an ETH address")
        if is_eth_address(to):
            address = to.lower()
            peer = await self.resolve(address)
        else:
            try:
                peer = PeerID.from_string(to)
            except (P2PError, ValueError) as exc:
                raise InvalidFields(f"not a PeerID or ETH address: {to!r}") from exc
            found = _eth_of(peer)
            if found is None:
                raise InvalidFields(f"{peer} is not an agent (no secp256k1 identity)")
            address = found.lower()
            await self._locate(peer)
        if peer == self.peer_id:
            raise InvalidFields("cannot send a message to ourselves")
        try:
            envelope = self._seal("direct", data, to=address)
        except EnvelopeTooLarge as exc:
            raise MessageTooLarge(f"data cannot be sent: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise InvalidFields(f"data cannot be sent: {exc}") from exc
        await self.messaging.send(peer, envelope)
        self.messages_out += 1
        return peer

    async def _locate(self, peer: PeerID) -> None:
        """Make sure we can dial ``peer``: connected, known addresses, or a DHT lookup."""
        host = self.node.host
        if host.is_connected(peer) or host.peerstore.addrs(peer):
            return
        try:
            await self.node.find_peer(peer)
        except KadPeerNotFound as exc:
            if len(self.dht.routing_table) == 0:
                raise DhtLookupFailed("no DHT server known to ask (routing table empty)") from exc
            raise PeerNotFound(f"{peer} is not in the DHT") from exc
        except (KadError, NoPeersError) as exc:
            raise DhtLookupFailed(f"looking up {peer} failed: {exc}") from exc

    async def broadcast(self, data: Any, topic: str = MESSAGES_TOPIC) -> None:
        """Publish ``data`` to every agent on ``topic`` (default ``agent-messages``)."""
        self._check_running()
        if not topic or topic in (ANNOUNCEMENTS_TOPIC, STATUS_TOPIC):
            raise InvalidFields(f"cannot broadcast application data on {topic!r}")
        try:
            envelope = self._seal("broadcast", data, topic=topic)
        except EnvelopeTooLarge as exc:
            raise MessageTooLarge(f"data cannot be sent: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise InvalidFields(f"data cannot be sent: {exc}") from exc
        self._join(topic)
        try:
            await self.pubsub.publish(topic, envelope)
        except (PubsubError, MessageTooLargeError, NoPeersError) as exc:
            raise SendFailed(f"publishing on {topic!r} failed: {exc}") from exc
        self.messages_out += 1

    # -- topics ---------------------------------------------------------------------------------

    def _join(self, topic: str) -> None:
        if topic in self._subs:
            return
        self.pubsub.score_params.topics.setdefault(topic, agent_topic_score())
        self.pubsub.set_validator(topic, self._validate)
        sub = self.pubsub.subscribe(topic)
        self._subs[topic] = sub
        self._tasks.spawn(self._consume(topic, sub), name=f"topic {topic}")

    async def subscribe(self, topic: str) -> None:
        """Join ``topic``, deliver its messages as events, and announce it (DHT + topic)."""
        self._check_running()
        if not isinstance(topic, str) or not topic:
            raise InvalidFields("topic must be a non-empty string")
        self._join(topic)
        self._app_topics.add(topic)
        if topic not in AGENT_TOPICS:
            try:
                await self.node.provide(topic_key(topic))
            except (KadError, NoPeersError, ValueError) as exc:
                log.info("%s: cannot announce %r in the DHT yet: %s", self.name, topic, exc)
        await self._announce("subscribe", topic=topic)

    async def unsubscribe(self, topic: str) -> bool:
        """Leave ``topic`` joined with :meth:`subscribe`; False if we had not subscribed.

        The agent topics stay joined (the agent itself needs them); only their delivery to the
        application ends.
        """
        self._check_running()
        if topic not in self._app_topics:
            return False
        self._app_topics.discard(topic)
        if topic not in AGENT_TOPICS:
            sub = self._subs.pop(topic, None)
            if sub is not None:
                sub.cancel()
        await self._announce("unsubscribe", topic=topic)
        return True

    async def discover(self, topic: str) -> list[AgentDiscovered]:
        """Agents on ``topic``: DHT providers of the topic and the peers pubsub knows on it."""
        self._check_running()
        if not isinstance(topic, str) or not topic:
            raise InvalidFields("topic must be a non-empty string")
        found: dict[PeerID, AgentDiscovered] = {}
        dht_error: Exception | None = None
        try:
            providers = await self.node.find_providers(topic_key(topic))
        except (KadError, NoPeersError) as exc:
            dht_error = exc
            providers = []
        # A provider record outlives its agent (it expires after hours): answer only with the
        # agents that are reachable now, connected or answering a dial within LIVENESS_TIMEOUT.
        alive = await self._reachable([info.peer for info in providers])
        for info in providers:
            if info.peer in alive:
                found[info.peer] = AgentDiscovered(
                    info.peer, _eth_of(info.peer), list(info.addrs), [topic]
                )
        store = self.node.host.peerstore
        for peer in self.pubsub.topic_peers(topic):
            if peer not in found:
                found[peer] = AgentDiscovered(peer, _eth_of(peer), store.addrs(peer), [topic])
        found.pop(self.peer_id, None)
        if not found and dht_error is None and len(self.dht.routing_table) == 0:
            dht_error = KadError("no DHT server known to ask (routing table empty)")
        if not found and dht_error is not None:
            raise DhtLookupFailed(f"finding agents on {topic!r} failed: {dht_error}")
        named = []
        for agent in found.values():
            known = self.announced.get(agent.peer_id)
            if known is not None and known.name:
                agent = dataclasses.replace(agent, name=known.name)
            named.append(agent)
        if self.registry is not None:
            named = await self._annotate_all(named)
        return named

    async def _annotate_all(self, agents: list[AgentDiscovered]) -> list[AgentDiscovered]:
        assert self.registry is not None
        registry = self.registry

        async def one(agent: AgentDiscovered) -> AgentDiscovered:
            if agent.eth_address is None:
                return agent
            return dataclasses.replace(agent, registry=await registry.annotate(agent.eth_address))

        return list(await asyncio.gather(*(one(a) for a in agents)))

    async def _reachable(self, peers: list[PeerID]) -> set[PeerID]:
        """The peers among ``peers`` we are connected to or can dial now (at once, each within
        :data:`LIVENESS_TIMEOUT`); the others are left out, with a log line."""
        host = self.node.host
        alive = {p for p in peers if p == self.peer_id or host.is_connected(p)}
        unknown = [p for p in dict.fromkeys(peers) if p not in alive]

        async def probe(peer: PeerID) -> None:
            try:
                async with asyncio.timeout(LIVENESS_TIMEOUT):
                    await host.connect_peer(peer)
            except (P2PError, OSError, TimeoutError) as exc:
                log.info("%s: %s is not reachable, left out: %s", self.name, peer, exc)
                return
            alive.add(peer)

        await asyncio.gather(*(probe(p) for p in unknown))
        return alive

    # -- incoming -------------------------------------------------------------------------------

    def _validate(
        self, _propagator: PeerID, msg: Message
    ) -> ValidationResult | Awaitable[ValidationResult]:
        try:
            env = open_envelope(msg.data, now=self.clock.time())
            if msg.from_peer != env.peer_id:
                raise InvalidEnvelope(f"published by {msg.from_peer}, signed for {env.peer_id}")
            if env.topic is not None and env.topic != msg.topic:
                raise InvalidEnvelope(f"signed for {env.topic!r}, published on {msg.topic!r}")
            expected = {ANNOUNCEMENTS_TOPIC: "announce", STATUS_TOPIC: "status"}
            if env.kind != expected.get(msg.topic, "broadcast"):
                raise InvalidEnvelope(f"a {env.kind} message on {msg.topic!r}")
        except InvalidEnvelope as exc:
            self.rejected += 1
            log.info(
                "%s: rejected a message on %s from %s: %s", self.name, msg.topic, msg.from_peer, exc
            )
            return ValidationResult.REJECT
        if self.registry is not None and env.peer_id != self.peer_id:
            return self._validate_registered(msg, env)
        self._accept(msg, env)
        return ValidationResult.ACCEPT

    async def _validate_registered(self, msg: Message, env: Envelope) -> ValidationResult:
        assert self.registry is not None
        verdict = await self.registry.topic_verdict(env.sender, msg.topic, env.data)
        if verdict is ValidationResult.ACCEPT:
            self._accept(msg, env)
        else:
            self.rejected += 1
        return verdict

    async def _admit_direct(self, env: Envelope) -> str | None:
        return None if self.registry is None else await self.registry.direct_refusal(env.sender)

    def _accept(self, msg: Message, env: Envelope) -> None:
        self._verified[msg.id] = env
        if len(self._verified) > 4096:
            self._verified.popitem(last=False)

    async def _consume(self, topic: str, sub: Subscription) -> None:
        async for msg in sub:
            env = self._verified.pop(msg.id, None)
            if env is None:  # our own messages skip validation; open them for uniformity
                try:
                    env = open_envelope(msg.data, now=self.clock.time())
                except InvalidEnvelope:
                    continue
            if env.peer_id == self.peer_id:
                continue
            if topic == ANNOUNCEMENTS_TOPIC:
                self._on_announcement(env)
            elif topic == STATUS_TOPIC:
                if isinstance(env.data, dict) and len(msg.data) <= MAX_STATUS_BYTES:
                    self.statuses.put(env.peer_id, env.data)
                if topic in self._app_topics:
                    self._deliver(env, topic)
            else:
                self._deliver(env, topic)

    def _deliver(self, env: Envelope, topic: str | None, via: str | None = None) -> None:
        self.messages_in += 1
        eth = to_checksum_address(env.sender)
        note = self.registry.annotation(env.sender) if self.registry is not None else None
        self._events.emit(AgentMessage(env.peer_id, eth, env.data, topic, topic is None, note, via))

    def _deliver_direct(self, env: Envelope, via: Multiaddr) -> None:
        self._deliver(env, None, str(via))

    def _on_announcement(self, env: Envelope) -> None:
        data = env.data if isinstance(env.data, dict) else {}
        event = data.get("event")
        if event == "leave":
            self.announced.pop(env.peer_id, None)
            return
        addrs = []
        for text in data.get("addrs", []) if isinstance(data.get("addrs"), list) else []:
            try:
                addrs.append(Multiaddr(text))
            except Exception:  # the multiaddr package raises several unrelated types
                continue
        topics = [t for t in data.get("topics", []) if isinstance(t, str)]
        name = data.get("name")
        if not isinstance(name, str):
            name = ""
        note = None
        if self.registry is not None:
            self.registry.note_stated(env.sender, data)
            note = self.registry.annotation(env.sender)
        info = AgentDiscovered(
            env.peer_id, to_checksum_address(env.sender), addrs, topics, name, note
        )
        before = self.announced.get(env.peer_id)
        self.announced.put(env.peer_id, info)
        if before is None or before.topics != info.topics:
            self._events.emit(info)

    # -- churn ----------------------------------------------------------------------------------

    async def _follow_node(self, events: EventStream[NodeEvent]) -> None:
        """Publish our presence again whenever the node (re)joins the network through its
        bootstrap peers: a bootstrap node that restarted has forgotten every record it held.
        (Connection and bootstrap events reach applications from ``node.events()``.)"""
        async for event in events:
            if isinstance(event, BootstrapSucceeded) and (
                event.attempt > 1 or self.presence.published_seq == 0
            ):
                # In a task: the AutoNAT check may take seconds, events keep flowing.
                self._tasks.spawn(self._rejoined(event.attempt), name="agent rejoined")

    async def _rejoined(self, attempt: int) -> None:
        if attempt > 1:
            await self._reserve_relays()
        log.info("%s: (re)joined the network: publishing presence", self.name)
        await self._publish_presence()
        await self._announce("presence")

    async def _reserve_relays(self) -> None:
        """A slot on each connected bootstrap peer that is a relay: always with
        ``reserve_relay=True``, when AutoNAT finds us unreachable with ``None``."""
        if self.config.reserve_relay is False:
            return
        if self.config.reserve_relay is None:
            self.reachability = await self._check_reachability()
            if self.reachability != Reachability.PRIVATE:
                return
        host = self.node.host
        candidates = [
            p
            for p in host.connected_peers()
            if p in self.node.bootstrap_peer_ids
            and p not in self.circuit.reservations
            and HOP_PROTOCOL in host.peerstore.get_protocols(p)
        ]
        for relay in candidates:
            try:
                await self.circuit.reserve(relay)
            except (P2PError, TimeoutError) as exc:
                log.info("%s: no relay slot on %s: %s", self.name, relay, exc)
        if not self.circuit.reservations:
            log.warning("%s: no relay reservation: others cannot dial this agent", self.name)

    async def _check_reachability(self) -> str:
        """Ask every connected bootstrap peer that serves AutoNAT v2 about our addresses."""
        host = self.node.host
        addrs = candidate_order(host.advertised_addrs)
        if not addrs:
            return Reachability.PRIVATE  # nothing anyone could dial
        servers = [
            p
            for p in host.connected_peers()
            if p in self.node.bootstrap_peer_ids
            and DIAL_REQUEST_PROTOCOL in host.peerstore.get_protocols(p)
        ]

        async def ask(server: PeerID) -> bool | None:
            try:
                result = await self.autonat.check(server, addrs)
            except (P2PError, TimeoutError) as exc:
                log.info("%s: autonat with %s failed: %s", self.name, server, exc)
                return None
            log.info("%s: autonat %s: %s %s", self.name, server, result.status, result.addr)
            if result.reachable is True and result.addr is not None:
                host.addresses.confirm(result.addr, self.clock.monotonic())
            return result.reachable

        verdict = conclude(await asyncio.gather(*(ask(s) for s in servers)))
        log.info("%s: reachability %s", self.name, verdict)
        return verdict

    def _relay_addrs_changed(self) -> None:
        """Our relayed addresses changed: tell the DHT at once (the maintenance loop would only
        notice at its next wake-up)."""
        if self._lifecycle.running and self.presence.published_seq:
            self._tasks.spawn(self._publish_presence(), name="presence after relay change")

    # -- periodic work --------------------------------------------------------------------------

    async def _announce(self, event: str, **extra: Any) -> None:
        data = {
            "event": event,
            "name": self.name,
            "addrs": [str(a) for a in self.p2p_addrs()],
            "topics": sorted(self._app_topics),
            **(self.registry.record_fields() if self.registry is not None else {}),
            **extra,
        }
        envelope = self._seal("announce", data, topic=ANNOUNCEMENTS_TOPIC)
        try:
            await self.pubsub.publish(ANNOUNCEMENTS_TOPIC, envelope)
        except (PubsubError, MessageTooLargeError, NoPeersError) as exc:
            log.debug("%s: announcement %s not sent: %s", self.name, event, exc)

    async def _publish_presence(self) -> None:
        self._published_addrs = self._presence_addrs()
        try:
            stored = await self.presence.publish()
        except (KadError, NoPeersError, ValueError) as exc:
            log.info("%s: presence not published yet: %s", self.name, exc)
            return
        if stored == 0 and self.registry is not None:
            # Refused everywhere (a registry check not done yet, or we are not registered):
            # try again soon rather than at the next presence interval.
            self.presence.published_seq = 0
            self.presence.published.clear()
        log.info("%s: presence stored on %d DHT peers", self.name, stored)

    def _registry_changed(self) -> None:
        """A registry event named our address: state the new agentId, republish, announce."""
        if self._lifecycle.closed or self.registry is None:
            return
        registry = self.registry

        async def republish() -> None:
            await registry.refresh_own()
            self.presence.registry_fields = registry.record_fields()
            self._presence_retry = 1.0  # peers may still be catching up on the same event
            await self._publish_presence()
            await self._announce("presence")

        self._tasks.spawn(republish(), name="registry republish")

    def _presence_addrs(self) -> frozenset[Multiaddr]:
        return frozenset(self.node.host.advertised_addrs)

    @property
    def uptime(self) -> float:
        """Seconds since :meth:`start` (0 before)."""
        return self.clock.monotonic() - self._started_at if self._lifecycle.running else 0.0

    def status(self) -> dict[str, Any]:
        """What this node reports on node-status (see :mod:`p2pnet.agent.status`)."""
        return build_status(self)

    def registry_status(self) -> dict[str, Any] | None:
        """The ``registry`` field of node-status (None without a registry policy)."""
        return None if self.registry is None else self.registry.status_report()

    async def _report_status(self) -> None:
        envelope = self._seal("status", self.status(), topic=STATUS_TOPIC)
        try:
            await self.pubsub.publish(STATUS_TOPIC, envelope)
        except (PubsubError, MessageTooLargeError, NoPeersError) as exc:
            log.debug("%s: status not sent: %s", self.name, exc)

    async def _maintenance(self) -> None:
        cfg = self.config
        clock = self.clock
        next_presence = clock.monotonic() + cfg.presence_interval
        next_status = clock.monotonic() + min(cfg.status_interval, 2.0)
        # Until the presence record is stored somewhere (no DHT peer yet), retry quickly; when
        # retries keep failing (refused by a registry), back off up to 30 s.
        self._presence_retry = 1.0
        while True:
            now = clock.monotonic()
            if self.presence.published_seq == 0 and self.node.peers():
                await self._publish_presence()
                if self.presence.published_seq:
                    self._presence_retry = 1.0
                else:
                    self._presence_retry = min(self._presence_retry * 2, 30.0)
            elif self._presence_addrs() != self._published_addrs and self.node.peers():
                log.info("%s: our addresses changed: publishing presence", self.name)
                await self._publish_presence()
                await self._announce("presence")
            if now >= next_presence:
                next_presence = now + cfg.presence_interval
                await self._publish_presence()
                await self._announce("presence")
            if now >= next_status:
                next_status = now + cfg.status_interval
                await self._report_status()
            wake = min(next_presence, next_status)
            if self.presence.published_seq == 0:
                wake = min(wake, now + self._presence_retry)
            await asyncio.sleep(max(0.05, wake - clock.monotonic()))
