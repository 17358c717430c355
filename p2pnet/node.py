"""The Node facade: one object that composes the host, identify, ping, the DHT and pubsub.

``async with Node(config) as node:`` starts listeners and services; leaving the block closes
everything and awaits every task. Several nodes can live in one event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable, Iterable, Sequence

from multiaddr import Multiaddr

from p2pnet.config import NodeConfig
from p2pnet.crypto.eth import eth_address
from p2pnet.crypto.keys import KeyType
from p2pnet.errors import P2PError
from p2pnet.events import (
    EventBus,
    EventStream,
    MessageReceived,
    NodeEvent,
    PeerConnected,
    PeerDisconnected,
    PeerDiscovered,
)
from p2pnet.host.connection import Connection
from p2pnet.host.host import Host, StreamHandler
from p2pnet.kad.behaviour import PutResult, ValueResult
from p2pnet.kad.dht import KadDHT
from p2pnet.kad.errors import KadError
from p2pnet.kad.messages import PeerInfo
from p2pnet.kad.records import FunctionValidator, Validator
from p2pnet.mux.yamux_connection import YamuxStream
from p2pnet.peer.peer_id import PeerID
from p2pnet.protocols.identify import IdentifyInfo, IdentifyService
from p2pnet.protocols.ping import PingService
from p2pnet.pubsub.gossipsub import Pubsub, Subscription
from p2pnet.security.base import SecurityTransport
from p2pnet.tasks import TaskOwner
from p2pnet.transport.base import Transport

log = logging.getLogger("p2pnet.node")


class NodeError(P2PError):
    """A node-level operation failed (not started, a service disabled, ...)."""


class Node:
    """A libp2p node: ``async with Node(NodeConfig(...)) as node: ...``."""

    def __init__(
        self,
        config: NodeConfig | None = None,
        *,
        transports: Sequence[Transport] | None = None,
        security: Sequence[SecurityTransport] | None = None,
    ) -> None:
        self.config = config or NodeConfig()
        cfg = self.config
        self.key = cfg.make_identity()
        #: The clock every service of this node reads, and its one seeded RNG.
        self.clock = cfg.clock
        self.rng = random.Random(cfg.seed)
        host_config = dataclasses.replace(cfg.host, listen_addrs=list(cfg.listen_addrs))
        self.host = Host(self.key, host_config, transports=transports, security=security)
        self.identify = IdentifyService(self.host)
        self.ping_service = PingService(self.host)
        self.dht: KadDHT | None = (
            KadDHT(self.host, self.identify, cfg.kad, clock=self.clock, rng=self.rng)
            if cfg.enable_dht
            else None
        )
        self.pubsub: Pubsub | None = None
        if cfg.enable_pubsub:
            self.pubsub = Pubsub(self.host, cfg.pubsub, score_params=cfg.pubsub_score)
        self._events: EventBus[NodeEvent] = EventBus()
        self._tasks = TaskOwner("node")
        self._known: set[PeerID] = set()
        self.host.on_connected(self._on_connected)
        self.host.on_disconnected(self._on_disconnected)
        self.identify.on_identified(self._on_identified)
        self._started = False
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            await self.host.start()
            if self.dht is not None:
                await self.dht.start()
            if self.pubsub is not None:
                await self.pubsub.start()
        except BaseException:
            await self.close()
            raise
        if self.config.bootstrap_peers:
            try:
                await self.bootstrap()
            except P2PError as exc:
                # A node whose bootstrap peers are down still runs; it can bootstrap later.
                log.warning("bootstrap failed: %s", exc)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._tasks.close()
        # The host goes first: services removing their handlers afterwards then announce
        # nothing (no identify push) to peers we are leaving anyway.
        await self.host.close()
        if self.pubsub is not None:
            await self.pubsub.close()
        if self.dht is not None:
            await self.dht.close()
        self._events.close()

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- identity and addresses ------------------------------------------------------------------

    @property
    def peer_id(self) -> PeerID:
        return self.host.peer_id

    @property
    def eth_address(self) -> str | None:
        """The Ethereum address of a secp256k1 identity, else None."""
        if self.key.key_type is not KeyType.Secp256k1:
            return None
        return eth_address(self.peer_id)

    @property
    def listen_addrs(self) -> list[Multiaddr]:
        return self.host.listen_addrs

    def p2p_addrs(self) -> list[Multiaddr]:
        return self.host.p2p_addrs()

    # -- connections and streams ------------------------------------------------------------------

    async def connect(self, addr: Multiaddr | str) -> PeerID:
        conn = await self.host.connect(addr)
        return conn.remote_peer

    async def disconnect(self, peer: PeerID) -> None:
        await self.host.disconnect(peer)

    def peers(self) -> list[PeerID]:
        return self.host.connected_peers()

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        self.host.set_stream_handler(protocol, handler)

    def remove_stream_handler(self, protocol: str) -> None:
        self.host.remove_stream_handler(protocol)

    async def new_stream(self, peer: PeerID, protocols: Iterable[str] | str) -> YamuxStream:
        return await self.host.new_stream(peer, protocols)

    async def ping(self, peer: PeerID) -> float:
        """Round-trip time to ``peer`` in seconds."""
        return (await self.ping_service.ping(peer))[0]

    async def wait_identified(self, peer: PeerID, timeout: float = 10.0) -> None:
        await self.identify.wait_identified(peer, timeout)

    # -- DHT ------------------------------------------------------------------------------------

    def _need_dht(self) -> KadDHT:
        if self.dht is None:
            raise NodeError("the DHT is disabled in this node's config")
        return self.dht

    async def bootstrap(self, peers: Iterable[str | Multiaddr] | None = None) -> int:
        """Connect to the bootstrap peers and fill the routing table; returns its size.

        Without a DHT, only connects. Raises if no bootstrap peer could be reached.
        """
        addrs = list(self.config.bootstrap_peers if peers is None else peers)
        if self.dht is not None:
            return await self.dht.bootstrap(addrs)
        results = await asyncio.gather(
            *(self.host.connect(a) for a in addrs), return_exceptions=True
        )
        if addrs and not any(isinstance(r, Connection) for r in results):
            raise NodeError(f"could not reach any bootstrap peer: {results}")
        return 0

    def register_validator(
        self,
        namespace: str,
        validator: Validator | Callable[[bytes, bytes], None],
        selector: Callable[[bytes, Sequence[bytes]], int] | None = None,
    ) -> None:
        """Accept DHT records under ``/<namespace>/``: ``validator`` is a
        :class:`~p2pnet.kad.records.Validator` or a function ``(key, value)`` raising
        ``InvalidRecord``/``ValueError`` for a bad value; ``selector(key, values) -> index``
        picks the best of several valid values (default: a Validator's ``select``, else the
        first). Every node that stores or reads the namespace needs the same validator; keys
        of unregistered namespaces are refused with :class:`~p2pnet.kad.UnknownNamespace`."""
        if isinstance(validator, Validator):
            if selector is not None:
                validator = FunctionValidator(validator.validate, selector)
        else:
            validator = FunctionValidator(validator, selector)
        self._need_dht().validator.register(namespace, validator)

    async def find_peer(self, peer: PeerID | str) -> PeerInfo:
        """The addresses of ``peer``, found through the DHT (raises KadError if not found)."""
        return await self._need_dht().find_peer(peer)

    async def get_value(self, key: bytes, quorum: int | None = None) -> bytes:
        return await self._need_dht().get_value(key, quorum)

    async def get_record(self, key: bytes, quorum: int | None = None) -> ValueResult:
        """Like :meth:`get_value`, and which peer answered with the value (None: our copy)."""
        return await self._need_dht().get_record(key, quorum)

    async def put_value(self, key: bytes, value: bytes) -> int:
        return await self._need_dht().put_value(key, value)

    async def put_record(self, key: bytes, value: bytes) -> PutResult:
        """Like :meth:`put_value`, and which peers stored the record (``stored``/``failed``)."""
        return await self._need_dht().put_record(key, value)

    async def provide(self, key: bytes | str) -> int:
        """Announce we provide ``key`` (a multihash, or CID text); returns peers told."""
        return await self._need_dht().provide(key)

    async def add_provider(self, key: bytes | str) -> PutResult:
        """Like :meth:`provide`, and which peers were told."""
        return await self._need_dht().add_provider(key)

    async def find_providers(self, key: bytes | str, count: int = 20) -> list[PeerInfo]:
        return await self._need_dht().find_providers(key, count)

    # -- pubsub ---------------------------------------------------------------------------------

    def _need_pubsub(self) -> Pubsub:
        if self.pubsub is None:
            raise NodeError("pubsub is disabled in this node's config")
        return self.pubsub

    def subscribe(self, topic: str, *, events: bool = False) -> Subscription:
        """Join ``topic``; the returned subscription iterates its messages.

        With ``events=True`` the messages go to :meth:`events` as ``MessageReceived`` instead
        (the subscription is then consumed by the node; cancel it to leave the topic).
        """
        sub = self._need_pubsub().subscribe(topic)
        if events:
            self._tasks.spawn(self._pump(sub), name=f"events of {topic}")
        return sub

    async def _pump(self, sub: Subscription) -> None:
        async for msg in sub:
            self._events.emit(
                MessageReceived(msg.topic, msg.from_peer, msg.data, msg.seqno, msg.id)
            )

    async def unsubscribe(self, topic: str) -> None:
        await self._need_pubsub().unsubscribe(topic)

    async def publish(self, topic: str, data: bytes) -> bytes:
        """Publish ``data`` on ``topic``; returns the message ID."""
        return await self._need_pubsub().publish(topic, data)

    # -- events -------------------------------------------------------------------------------

    def events(self) -> EventStream[NodeEvent]:
        """A stream of :mod:`p2pnet.events` (connected, disconnected, discovered, message).

        Registered at once: events that happen before the first ``async for`` step are kept.
        """
        return self._events.subscribe()

    def _on_connected(self, conn: Connection) -> None:
        self._events.emit(PeerConnected(conn.remote_peer, conn.remote_addr, conn.direction.value))

    def _on_disconnected(self, conn: Connection) -> None:
        if not self.host.is_connected(conn.remote_peer):
            self._events.emit(PeerDisconnected(conn.remote_peer))

    def _on_identified(self, info: IdentifyInfo) -> None:
        if info.peer in self._known:
            return
        self._known.add(info.peer)
        self._events.emit(
            PeerDiscovered(info.peer, list(info.listen_addrs), list(info.protocols), "identify")
        )


__all__ = ["KadError", "Node", "NodeConfig", "NodeError"]
