"""The Node facade: one object that composes the host, identify, ping, the DHT and pubsub.

``async with Node(config) as node:`` starts listeners and services; leaving the block closes
everything and awaits every task. Several nodes can live in one event loop.

Every service of the node reads time through ``node.clock`` (``NodeConfig.clock``) and draws
randomness from ``node.rng`` (seeded by ``NodeConfig.seed``), so a network of nodes on a
:class:`~p2pnet.clock.VirtualClock` replays identically from its seeds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable, Iterable, Sequence

from multiaddr import Multiaddr

from p2pnet.backoff import BootstrapSchedule, ExponentialBackoff
from p2pnet.config import NodeConfig
from p2pnet.crypto.eth import eth_address
from p2pnet.crypto.keys import KeyType
from p2pnet.errors import NodeError, P2PError
from p2pnet.events import (
    BootstrapFailed,
    BootstrapSucceeded,
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
from p2pnet.peer.peer_id import PeerID
from p2pnet.protocols.identify import IdentifyInfo, IdentifyService
from p2pnet.protocols.ping import PingService
from p2pnet.pubsub.gossipsub import Pubsub, Subscription
from p2pnet.pubsub.messages import PublishResult
from p2pnet.security.base import SecurityTransport
from p2pnet.service import Lifecycle
from p2pnet.stream import Stream, StreamMuxer
from p2pnet.tasks import TaskOwner
from p2pnet.transport.addr import split_peer_id
from p2pnet.transport.base import Transport

log = logging.getLogger("p2pnet.node")


class Node:
    """A libp2p node: ``async with Node(NodeConfig(...)) as node: ...``."""

    def __init__(
        self,
        config: NodeConfig | None = None,
        *,
        transports: Sequence[Transport] | None = None,
        security: Sequence[SecurityTransport] | None = None,
        muxers: Sequence[StreamMuxer] | None = None,
    ) -> None:
        self.config = config or NodeConfig()
        cfg = self.config
        self.key = cfg.make_identity()
        #: The clock every service of this node reads, and its one seeded RNG.
        self.clock = cfg.clock
        self.rng = random.Random(cfg.seed)
        host_config = dataclasses.replace(cfg.host, listen_addrs=list(cfg.listen_addrs))
        self.host = Host(
            self.key,
            host_config,
            transports=transports,
            security=security,
            muxers=muxers,
            clock=self.clock,
        )
        self.identify_service = IdentifyService(self.host)
        self.ping_service = PingService(self.host)
        self.dht: KadDHT | None = (
            KadDHT(self.host, self.identify_service, cfg.kad, clock=self.clock, rng=self.rng)
            if cfg.enable_dht
            else None
        )
        self.pubsub: Pubsub | None = None
        if cfg.enable_pubsub:
            self.pubsub = Pubsub(
                self.host,
                cfg.pubsub,
                score_params=cfg.pubsub_score,
                clock=self.clock,
                rng=self.rng,
            )
        self._events: EventBus[NodeEvent] = EventBus()
        self._tasks = TaskOwner("node")
        self._known: set[PeerID] = set()
        #: The node's subscriptions by topic (one per topic: subscribe is idempotent).
        self._subscriptions: dict[str, Subscription] = {}
        self._pumped: set[str] = set()
        self._bootstrap_ids = _peer_ids(cfg.bootstrap_peers)
        #: The peer IDs named in ``config.bootstrap_peers``.
        self.bootstrap_peer_ids = frozenset(self._bootstrap_ids)
        self._tag_useful_peers()
        #: When to (re)try the bootstrap peers: the decisions; the node only waits and dials.
        self.bootstrap_schedule = BootstrapSchedule(
            ExponentialBackoff(cfg.bootstrap_retry_initial, cfg.bootstrap_retry_max, self.rng)
        )
        self._bootstrap_task: asyncio.Task[None] | None = None
        #: Why the last bootstrap attempt failed (None: it succeeded, or none was made yet).
        self.bootstrap_error: str | None = None
        self.host.on_connected(self._on_connected)
        self.host.on_disconnected(self._on_disconnected)
        self.identify_service.on_identified(self._on_identified)
        self._lifecycle = Lifecycle("node")

    def _tag_useful_peers(self) -> None:
        """Tell the connection manager which peers to keep when it trims connections."""
        connmgr = self.host.connmgr
        for peer in self._bootstrap_ids:
            connmgr.tag(peer, "bootstrap", 100, protect=True)
        pubsub = self.pubsub
        if pubsub is not None:

            def in_mesh(peer: PeerID) -> int:
                try:
                    mesh = pubsub.router.mesh
                except P2PError:  # not running
                    return 0
                return 50 if any(peer in peers for peers in mesh.values()) else 0

            connmgr.add_value("pubsub-mesh", in_mesh)
        dht = self.dht
        if dht is not None:
            table = dht.routing_table
            connmgr.add_value("dht-table", lambda p: 20 if p in table else 0)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening and every service, then bootstrap.

        A failed bootstrap does not fail the start: it is retried in the background with
        exponential backoff (``BootstrapFailed`` / ``BootstrapSucceeded`` events), and again
        whenever the node loses its last bootstrap peer.
        """
        if not self._lifecycle.begin_start():
            return
        try:
            await self.host.start()
            await self.identify_service.start()
            await self.ping_service.start()
            if self.dht is not None:
                await self.dht.start()
            if self.pubsub is not None:
                await self.pubsub.start()
        except BaseException:
            await self.close()
            raise
        if self.config.bootstrap_peers and not await self._try_bootstrap():
            self._start_bootstrap_retries()

    async def close(self) -> None:
        if self._lifecycle.begin_close() is None:
            return
        await self._tasks.close()
        # The host goes first: services removing their handlers afterwards then announce
        # nothing (no identify push) to peers we are leaving anyway.
        await self.host.close()
        await self.ping_service.close()
        await self.identify_service.close()
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

    async def new_stream(self, peer: PeerID, protocols: Iterable[str] | str) -> Stream:
        return await self.host.new_stream(peer, protocols)

    async def ping(self, peer: PeerID) -> float:
        """Round-trip time to ``peer`` in seconds."""
        return (await self.ping_service.ping(peer))[0]

    async def wait_identified(self, peer: PeerID, timeout: float = 10.0) -> None:
        await self.identify_service.wait_identified(peer, timeout)

    async def identify(self, peer: PeerID) -> IdentifyInfo:
        """Run identify with ``peer`` again (connecting if needed): what it says about itself now.

        The answer also updates the peer store, as the identify on every new connection does.
        """
        return await self.identify_service.identify(peer)

    # -- DHT ------------------------------------------------------------------------------------

    def _need_dht(self) -> KadDHT:
        if self.dht is None:
            raise NodeError("the DHT is disabled in this node's config")
        return self.dht

    async def bootstrap(self, peers: Iterable[str | Multiaddr] | None = None) -> int:
        """Connect to the bootstrap peers and fill the routing table; returns its size.

        Without a DHT, only connects. Raises (KadError with a DHT, else NodeError) if no
        bootstrap peer could be reached; no retry (the node retries its configured
        ``bootstrap_peers`` by itself).
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

    async def _try_bootstrap(self) -> bool:
        """One attempt at the configured bootstrap peers; emits the event saying how it went."""
        schedule = self.bootstrap_schedule
        attempt = schedule.attempt_started()
        try:
            size = await self.bootstrap()
        except (P2PError, OSError, TimeoutError) as exc:
            delay = schedule.attempt_failed()
            self.bootstrap_error = str(exc) or type(exc).__name__
            log.warning("bootstrap attempt %d failed (retry in %.1f s): %s", attempt, delay, exc)
            self._events.emit(BootstrapFailed(attempt, str(exc), delay))
            return False
        schedule.attempt_succeeded()
        self.bootstrap_error = None
        log.info("bootstrap attempt %d reached the network (routing table %d)", attempt, size)
        self._events.emit(BootstrapSucceeded(attempt, size))
        return True

    def _start_bootstrap_retries(self) -> None:
        running = self._bootstrap_task is not None and not self._bootstrap_task.done()
        if running or not self._lifecycle.running:
            return
        self._bootstrap_task = self._tasks.spawn(self._retry_bootstrap(), name="bootstrap retry")

    async def _retry_bootstrap(self) -> None:
        while self._lifecycle.running:
            await asyncio.sleep(self.bootstrap_schedule.retry_in)
            if await self._try_bootstrap():
                return

    def _lost_bootstrap_peers(self) -> None:
        """The last bootstrap peer went away: bootstrap again after a backoff delay, unless a
        retry is already scheduled (the schedule decides)."""
        schedule = self.bootstrap_schedule
        delay = schedule.peers_lost()
        if delay is None:
            return
        log.warning("lost every bootstrap peer: bootstrapping again in %.1f s", delay)
        self._events.emit(BootstrapFailed(schedule.attempts, "lost every bootstrap peer", delay))
        self._start_bootstrap_retries()

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

        Idempotent per topic: while subscribed, calling it again returns the same subscription.
        With ``events=True`` the messages go to :meth:`events` as ``MessageReceived`` instead
        (the subscription is then consumed by the node); asking for the other mode on a topic
        already subscribed raises NodeError. Synchronous, like :meth:`unsubscribe`: joining is a
        local change whose announcements are queued to the peers.
        """
        pubsub = self._need_pubsub()
        sub = self._subscriptions.get(topic)
        if sub is not None and sub.active:
            if events != (topic in self._pumped):
                mode = "as events" if topic in self._pumped else "as a subscription"
                raise NodeError(f"already subscribed to {topic!r} {mode}")
            return sub
        sub = pubsub.subscribe(topic)
        self._subscriptions[topic] = sub
        if events:
            self._pumped.add(topic)
            self._tasks.spawn(self._pump(sub), name=f"events of {topic}")
        else:
            self._pumped.discard(topic)
        return sub

    async def _pump(self, sub: Subscription) -> None:
        async for msg in sub:
            self._events.emit(
                MessageReceived(msg.topic, msg.from_peer, msg.data, msg.seqno, msg.id)
            )

    def unsubscribe(self, topic: str) -> None:
        """Leave ``topic``: its subscription ends (iteration stops). Idempotent, synchronous."""
        self._subscriptions.pop(topic, None)
        self._pumped.discard(topic)
        self._need_pubsub().unsubscribe(topic)

    async def publish(self, topic: str, data: bytes) -> PublishResult:
        """Publish ``data`` on ``topic``: the message ID and the peers it was sent to.

        ``result.peers == 0`` tells that no other node will receive it (no peer in the topic
        yet). With ``GossipsubConfig(allow_publish_to_zero_peers=False)`` that case raises
        NoPeersError instead. MessageTooLargeError if it cannot fit in one RPC frame.
        """
        return await self._need_pubsub().publish_with_result(topic, data)

    # -- events -------------------------------------------------------------------------------

    def events(self) -> EventStream[NodeEvent]:
        """A stream of :mod:`p2pnet.events` (connected, disconnected, discovered, message).

        Registered at once: events that happen before the first ``async for`` step are kept.
        """
        return self._events.subscribe()

    def _on_connected(self, conn: Connection) -> None:
        self._events.emit(PeerConnected(conn.remote_peer, conn.remote_addr, conn.direction.value))

    def _on_disconnected(self, conn: Connection) -> None:
        peer = conn.remote_peer
        if self.host.is_connected(peer):
            return
        self._events.emit(PeerDisconnected(peer))
        if (
            peer in self._bootstrap_ids
            and self._lifecycle.running
            and not any(self.host.is_connected(p) for p in self._bootstrap_ids)
        ):
            self._lost_bootstrap_peers()

    def _on_identified(self, info: IdentifyInfo) -> None:
        if info.peer in self._known:
            return
        self._known.add(info.peer)
        self._events.emit(
            PeerDiscovered(info.peer, list(info.listen_addrs), list(info.protocols), "identify")
        )


def _peer_ids(addrs: Iterable[str | Multiaddr]) -> set[PeerID]:
    """The peer IDs named by ``/p2p/<id>`` in ``addrs`` (others are skipped)."""
    ids = set()
    for addr in addrs:
        try:
            _, text = split_peer_id(Multiaddr(addr) if isinstance(addr, str) else addr)
            if text is not None:
                ids.add(PeerID.from_string(text))
        except (P2PError, ValueError):
            continue  # a malformed address fails at bootstrap, with its error
    return ids


__all__ = ["KadError", "Node", "NodeConfig", "NodeError", "PublishResult"]
