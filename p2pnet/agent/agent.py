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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from p2pnet.config import (
    ConfigError,
    NodeConfig,
    common_env_settings,
    load_or_create_eth_key,
    read_env_file,
)
from p2pnet.crypto.eth import eth_address, is_eth_address, to_checksum_address
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.errors import CryptoError, MessageTooLargeError, NoPeersError, P2PError
from p2pnet.events import EventBus, EventStream
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
from p2pnet.service import Lifecycle, ServiceState
from p2pnet.tasks import TaskOwner

log = logging.getLogger("p2pnet.agent")


@dataclass(frozen=True)
class AgentMessage:
    """A verified message for the application."""

    from_peer: PeerID
    from_eth: str | None
    data: Any
    topic: str | None  # None for a direct message
    direct: bool


@dataclass(frozen=True)
class AgentDiscovered:
    peer_id: PeerID
    eth_address: str | None
    addrs: list[Multiaddr] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    name: str = ""


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
    #: Seconds between re-publications of the presence record and the presence announcement.
    presence_interval: float = 300.0
    #: Seconds between node-status reports.
    status_interval: float = 30.0
    #: Seconds a direct message may take to be acknowledged.
    message_timeout: float = 10.0
    pubsub: GossipsubConfig = field(default_factory=GossipsubConfig)
    kad: KadConfig | None = None
    registry_address: str | None = None
    rpc_url: str | None = None
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
        return NodeConfig(
            listen_addrs=[f"/{ip}/{self.listen_host}/tcp/{self.port}"],
            identity=identity,
            kad=kad,
            pubsub=self.pubsub,
            pubsub_score=PeerScoreParams(topics={t: agent_topic_score() for t in AGENT_TOPICS}),
            registry_address=self.registry_address,
            rpc_url=self.rpc_url,
        )


def agent_topic_score() -> TopicScoreParams:
    """Score parameters of agent topics: invalid messages (P4) count; delivery-rate penalties
    (P3, P3b) are off, because these topics are quiet and a silent mesh is normal there."""
    return TopicScoreParams(mesh_message_deliveries_weight=0.0, mesh_failure_penalty_weight=0.0)


def topic_key(topic: str) -> bytes:
    """The DHT provider key of a topic: a sha2-256 multihash, as provider keys are."""
    return b"\x12\x20" + hashlib.sha256(b"/p2pnet/topic/" + topic.encode()).digest()


#: Peers remembered in ``Agent.announced`` and ``Agent.statuses``; the least recently heard
#: ones are forgotten first, so a flood of announcing identities cannot grow memory.
MAX_KNOWN_PEERS = 1024


def _remember(known: OrderedDict[PeerID, Any], peer: PeerID, value: Any) -> None:
    known[peer] = value
    known.move_to_end(peer)
    while len(known) > MAX_KNOWN_PEERS:
        known.popitem(last=False)


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
        self._events: EventBus[AgentEvent] = EventBus()
        self._tasks = TaskOwner(f"agent {cfg.name or self.node.peer_id}")
        self._subs: dict[str, Subscription] = {}
        self._app_topics: set[str] = set()
        self._verified: OrderedDict[bytes, Envelope] = OrderedDict()
        #: Agents seen on agent-announcements: PeerID -> what they announced (for discovery
        #: events and the devnet display; never used to resolve addresses).
        self.announced: OrderedDict[PeerID, AgentDiscovered] = OrderedDict()
        #: The latest node-status report of each node.
        self.statuses: OrderedDict[PeerID, dict[str, Any]] = OrderedDict()
        self.messages_in = 0
        self.messages_out = 0
        self.rejected = 0
        self._started_at = 0.0
        self._lifecycle = Lifecycle(f"agent {cfg.name}")

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
            await self._start_node()
            await self.messaging.start()
            for topic in AGENT_TOPICS:
                self._join(topic)
            peers = self.config.bootstrap_peers
            if peers is None:
                peers = default_bootstrap_peers()
            if peers:
                await self._bootstrap(peers)
            await self._publish_presence()
            await self._announce("join")
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

    async def _bootstrap(self, peers: list[str]) -> None:
        try:
            await self.node.bootstrap(peers)
        except (P2PError, ValueError) as exc:
            if self.config.bootstrap_node:
                # Bootstrap nodes start one after another; the others may not be up yet.
                log.warning("%s: bootstrap peers not reachable yet: %s", self.name, exc)
                return
            raise DialFailed(f"no bootstrap peer could be reached: {exc}") from exc

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
            for info in await self.node.find_providers(topic_key(topic)):
                found[info.peer] = AgentDiscovered(
                    info.peer, _eth_of(info.peer), list(info.addrs), [topic]
                )
        except (KadError, NoPeersError) as exc:
            dht_error = exc
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
        return named

    # -- incoming -------------------------------------------------------------------------------

    def _validate(self, _propagator: PeerID, msg: Message) -> ValidationResult:
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
        self._verified[msg.id] = env
        if len(self._verified) > 4096:
            self._verified.popitem(last=False)
        return ValidationResult.ACCEPT

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
                    _remember(self.statuses, env.peer_id, env.data)
                if topic in self._app_topics:
                    self._deliver(env, topic)
            else:
                self._deliver(env, topic)

    def _deliver(self, env: Envelope, topic: str | None) -> None:
        self.messages_in += 1
        eth = to_checksum_address(env.sender)
        self._events.emit(AgentMessage(env.peer_id, eth, env.data, topic, topic is None))

    def _deliver_direct(self, env: Envelope) -> None:
        self._deliver(env, None)

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
        info = AgentDiscovered(env.peer_id, to_checksum_address(env.sender), addrs, topics, name)
        before = self.announced.get(env.peer_id)
        _remember(self.announced, env.peer_id, info)
        if before is None or before.topics != info.topics:
            self._events.emit(info)

    # -- periodic work --------------------------------------------------------------------------

    async def _announce(self, event: str, **extra: Any) -> None:
        data = {
            "event": event,
            "name": self.name,
            "addrs": [str(a) for a in self.p2p_addrs()],
            "topics": sorted(self._app_topics),
            **extra,
        }
        envelope = self._seal("announce", data, topic=ANNOUNCEMENTS_TOPIC)
        try:
            await self.pubsub.publish(ANNOUNCEMENTS_TOPIC, envelope)
        except (PubsubError, MessageTooLargeError, NoPeersError) as exc:
            log.debug("%s: announcement %s not sent: %s", self.name, event, exc)

    async def _publish_presence(self) -> None:
        try:
            stored = await self.presence.publish()
        except (KadError, NoPeersError, ValueError) as exc:
            log.info("%s: presence not published yet: %s", self.name, exc)
            return
        log.info("%s: presence stored on %d DHT peers", self.name, stored)

    @property
    def uptime(self) -> float:
        """Seconds since :meth:`start` (0 before)."""
        return self.clock.monotonic() - self._started_at if self._lifecycle.running else 0.0

    def status(self) -> dict[str, Any]:
        """What this node reports on node-status (see :mod:`p2pnet.agent.status`)."""
        return build_status(self)

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
        # Until the presence record is stored somewhere (no DHT peer yet), retry quickly.
        retry = 1.0
        while True:
            now = clock.monotonic()
            if self.presence.published_seq == 0 and self.node.peers():
                await self._publish_presence()
            if now >= next_presence:
                next_presence = now + cfg.presence_interval
                await self._publish_presence()
                await self._announce("presence")
            if now >= next_status:
                next_status = now + cfg.status_interval
                await self._report_status()
            wake = min(next_presence, next_status)
            if self.presence.published_seq == 0:
                wake = min(wake, now + retry)
            await asyncio.sleep(max(0.05, wake - clock.monotonic()))
