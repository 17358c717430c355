"""The asyncio gossipsub service: a thin adapter between the host and the sans-IO router.

``Pubsub(host, config)`` serves ``/meshsub/1.2.0``, ``/meshsub/1.1.0``, ``/meshsub/1.0.0`` and
``/floodsub/1.0.0``. For every connected peer it opens one outbound stream (write-only, the first
of our protocols the peer accepts) and reads the peer's inbound stream; RPCs are length-prefixed
protobuf frames. Each peer has one writer task fed by a bounded queue: a slow peer loses frames
instead of slowing everybody down. A heartbeat task drives the router. Every task belongs to the
service and ends with ``close()``.

Typical use::

    pubsub = Pubsub(host, GossipsubConfig())
    await pubsub.start()
    sub = pubsub.subscribe("chat")
    await pubsub.publish("chat", b"hello")
    async for msg in sub:
        print(msg.from_peer, msg.data)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from multiaddr import Multiaddr

from p2pnet.errors import P2PError, ProtocolNotSupported
from p2pnet.host.connection import Connection, Direction
from p2pnet.host.host import Host
from p2pnet.mux.yamux_connection import YamuxStream
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.peerstore import PERMANENT_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL
from p2pnet.peer.record import SIGNED_PEER_RECORD, InvalidPeerRecord, verify_peer_record
from p2pnet.pubsub.errors import InvalidRPC, MessageTooLargeError, NoPeersError, NotStartedError
from p2pnet.pubsub.messages import Message, ValidationResult
from p2pnet.pubsub.params import GossipsubConfig
from p2pnet.pubsub.router import (
    ConnectPeer,
    DeliverMessage,
    GossipsubRouter,
    ValidateMessage,
)
from p2pnet.pubsub.score import PeerScoreParams, PeerScoreThresholds, ScoreBreakdown
from p2pnet.stats import DurationHistogram
from p2pnet.tasks import TaskOwner
from p2pnet.transport.addr import split_peer_id
from p2pnet.wire.framing import LengthPrefixedDecoder
from p2pnet.wire.varint import encode_uvarint

log = logging.getLogger("p2pnet.pubsub")

#: A topic validator: ``(propagation peer, message) -> ValidationResult`` (or bool), sync or async.
Validator = Callable[
    [PeerID, Message], ValidationResult | bool | Awaitable[ValidationResult | bool]
]

_MAX_PENDING_CONNECTS = 128
_REOPEN_DELAY = 1.0
_MAX_REOPENS = 3


class Subscription:
    """Messages of one topic, as an async iterator. End it with ``await sub.cancel()``.

    Holds at most ``subscription_queue_size`` undelivered messages; when a slow consumer lets
    it fill up, the oldest are dropped (counted in ``dropped``) so the router never blocks.
    """

    def __init__(self, pubsub: Pubsub, topic: str, maxsize: int) -> None:
        self.topic = topic
        self._pubsub = pubsub
        self._maxsize = maxsize
        self._items: deque[Message] = deque()
        self._event = asyncio.Event()
        self._ended = False
        self.dropped = 0

    def _push(self, msg: Message) -> None:
        if self._ended:
            return
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
            if self.dropped in (1, 100, 10_000) or self.dropped % 100_000 == 0:
                log.warning(
                    "subscription to %s is slow: %d messages dropped", self.topic, self.dropped
                )
        self._items.append(msg)
        self._event.set()

    def _end(self) -> None:
        self._ended = True
        self._event.set()

    @property
    def active(self) -> bool:
        return not self._ended

    def pending(self) -> int:
        """Messages received and not consumed yet."""
        return len(self._items)

    def get_nowait(self) -> Message | None:
        return self._items.popleft() if self._items else None

    async def get(self, timeout: float | None = None) -> Message:
        """The next message; raises StopAsyncIteration once cancelled, TimeoutError on timeout."""
        async with asyncio.timeout(timeout):
            while not self._items:
                if self._ended:
                    raise StopAsyncIteration
                self._event.clear()
                await self._event.wait()
        return self._items.popleft()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        return await self.get()

    async def cancel(self) -> None:
        """Unsubscribe (the topic is left when its last subscription ends). Idempotent."""
        if self._ended:
            return
        self._end()
        self._pubsub._remove_subscription(self)

    unsubscribe = cancel

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()


class _PeerState:
    __slots__ = (
        "inbound",
        "opening",
        "outbound",
        "queue",
        "ready",
        "reopens",
        "writer",
    )

    def __init__(self, queue_size: int) -> None:
        self.outbound: YamuxStream | None = None
        self.opening: asyncio.Task[Any] | None = None
        self.writer: asyncio.Task[Any] | None = None
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self.inbound: set[YamuxStream] = set()
        self.ready = asyncio.Event()
        self.reopens = 0


def _ip_of(addr: Multiaddr) -> str | None:
    for proto in ("ip4", "ip6"):
        try:
            return str(addr.value_for_protocol(proto))
        except Exception:  # the multiaddr package raises several unrelated types
            continue
    return None


class Pubsub:
    """Gossipsub v1.1/v1.2 with peer scoring on a :class:`~p2pnet.host.host.Host`."""

    def __init__(
        self,
        host: Host,
        config: GossipsubConfig | None = None,
        *,
        score_params: PeerScoreParams | None = None,
        score_thresholds: PeerScoreThresholds | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.config = config or GossipsubConfig()
        self.score_params = score_params or PeerScoreParams()
        self.score_thresholds = score_thresholds or PeerScoreThresholds()
        self._rng = rng
        self._router: GossipsubRouter | None = None
        self._tasks = TaskOwner(f"pubsub {host.peer_id}")
        self._peers: dict[PeerID, _PeerState] = {}
        self._subs: dict[str, list[Subscription]] = {}
        self._validators: dict[str, Validator] = {}
        self._connecting: set[PeerID] = set()
        self._connect_sem = asyncio.Semaphore(self.config.max_pending_connects)
        self._started = False
        self._closed = False
        #: frames dropped because a peer's queue was full
        self.dropped_frames = 0
        #: how long each heartbeat took (router work and sending its output), for metrics
        self.heartbeat_durations = DurationHistogram()

    # ------------------------------------------------------------------ lifecycle

    @property
    def router(self) -> GossipsubRouter:
        if self._router is None or self._closed:
            raise NotStartedError("pubsub is not running: call start() (and not close())")
        return self._router

    @property
    def peer_id(self) -> PeerID:
        return self.host.peer_id

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def start(self) -> None:
        """Validate the parameters, register the protocols, start the heartbeat."""
        if self._started:
            return
        if self._closed:
            raise NotStartedError("a closed pubsub cannot be restarted")
        self._router = GossipsubRouter(
            self.host.peer_id,
            self.config,
            self.score_params,
            self.score_thresholds,
            key=self.host.key,
            rng=self._rng,
        )
        self._router.now = self._now()
        self._router.record_source = self._peer_record
        self._started = True
        for proto in self.config.protocols:
            self.host.set_stream_handler(proto, self._handle_inbound)
        self.host.on_connected(self._on_connected)
        self.host.on_disconnected(self._on_disconnected)
        for addr_text in self.config.direct_peers:
            addr, id_text = split_peer_id(Multiaddr(addr_text))
            if id_text is None:
                raise NotStartedError(f"direct peer {addr_text} lacks /p2p/<id>")
            peer = PeerID.from_string(id_text)
            self.host.peerstore.add_addrs(peer, [addr], PERMANENT_ADDR_TTL)
            self._router.add_direct_peer(peer)
        for conn in self.host.connections():
            self._on_connected(conn)
        self._tasks.spawn(self._heartbeat_loop(), name="pubsub heartbeat")
        self._pump()
        log.info("pubsub started on %s (%s)", self.host.peer_id, ", ".join(self.config.protocols))

    def _peer_record(self, peer: PeerID) -> bytes | None:
        # identify verified and stored it
        record = self.host.peerstore.get_metadata(peer, SIGNED_PEER_RECORD)
        return record if isinstance(record, bytes) else None

    async def close(self) -> None:
        """Stop: unregister, end every subscription, stop all tasks, reset our streams."""
        if self._closed:
            return
        self._closed = True
        if not self._started:
            return
        for proto in self.config.protocols:
            self.host.remove_stream_handler(proto)
        for subs in self._subs.values():
            for sub in subs:
                sub._end()
        self._subs.clear()
        streams = [
            s
            for st in self._peers.values()
            for s in ([st.outbound] if st.outbound else []) + list(st.inbound)
        ]
        await self._tasks.close()
        for s in streams:
            with contextlib.suppress(P2PError):
                await s.reset()
        self._peers.clear()

    async def __aenter__(self) -> Pubsub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ public API

    def subscribe(self, topic: str) -> Subscription:
        """Join ``topic`` (if not yet) and return a new subscription to its messages."""
        router = self.router
        if not topic:
            raise ValueError("topic must not be empty")
        sub = Subscription(self, topic, self.config.subscription_queue_size)
        self._subs.setdefault(topic, []).append(sub)
        router.join(topic, self._now())
        self._pump()
        return sub

    def _remove_subscription(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic)
        if subs is None or sub not in subs:
            return
        subs.remove(sub)
        if not subs:
            del self._subs[sub.topic]
            if self._router is not None and not self._closed:
                self._router.leave(sub.topic, self._now())
                self._pump()

    async def unsubscribe(self, topic: str) -> None:
        """End every subscription to ``topic`` and leave it."""
        for sub in list(self._subs.get(topic, [])):
            await sub.cancel()

    async def publish(self, topic: str, data: bytes) -> bytes:
        """Sign and send ``data`` to ``topic``; returns the message ID.

        Raises MessageTooLargeError, and NoPeersError when ``allow_publish_to_zero_peers`` is
        off and no peer would receive it.
        """
        router = self.router
        if len(data) >= self.config.max_message_size:
            raise MessageTooLargeError(
                f"{len(data)} bytes of data exceed max_message_size {self.config.max_message_size}"
            )
        if (
            not self.config.allow_publish_to_zero_peers
            and not router.publish_targets(topic)
            and not (self.config.emit_self and topic in router.subscriptions)
        ):
            raise NoPeersError(f"no peer to publish to in {topic!r}")
        msg_id = router.publish(topic, bytes(data), self._now())
        self._pump()
        return msg_id

    def set_validator(self, topic: str, validator: Validator | None) -> None:
        """Check every message of ``topic`` before it is delivered or forwarded.

        The validator gets the propagating peer and the message and returns ACCEPT, REJECT
        (the sender is penalised, P4) or IGNORE, or True/False; it may be a coroutine function.
        It must answer within ``validate_timeout`` (else IGNORE); an exception counts as IGNORE.
        ``None`` removes the validator.
        """
        router = self.router
        if validator is None:
            self._validators.pop(topic, None)
            router.validated_topics.discard(topic)
        else:
            self._validators[topic] = validator
            router.validated_topics.add(topic)

    def topics(self) -> list[str]:
        """The topics we are subscribed to."""
        return sorted(self.router.subscriptions)

    def peers(self) -> list[PeerID]:
        """Peers we speak pubsub with."""
        return list(self.router.peers)

    def topic_peers(self, topic: str) -> list[PeerID]:
        """Peers subscribed to ``topic``."""
        return list(self.router.topic_peers(topic))

    def mesh_peers(self, topic: str) -> list[PeerID]:
        """Our mesh peers in ``topic``."""
        return list(self.router.mesh_peers(topic))

    def peer_protocol(self, peer: PeerID) -> str | None:
        return self.router.peer_protocol(peer)

    def peer_score(self, peer: PeerID) -> float:
        return self.router.peer_score(peer, self._now())

    def score_breakdown(self, peer: PeerID) -> ScoreBreakdown:
        return self.router.score.breakdown(peer, self._now())

    def set_app_score(self, peer: PeerID, value: float) -> None:
        """The application-specific score of ``peer`` (P5, times ``app_specific_weight``)."""
        self.router.set_app_score(peer, value)

    def add_direct_peer(self, peer: PeerID | str | Multiaddr) -> PeerID:
        """Make ``peer`` (an ID, or a multiaddr with /p2p/) a direct peer; connects to it."""
        if isinstance(peer, PeerID):
            pid = peer
        else:
            addr, id_text = split_peer_id(Multiaddr(peer) if isinstance(peer, str) else peer)
            if id_text is None:
                raise ValueError(f"{peer} lacks /p2p/<id>")
            pid = PeerID.from_string(id_text)
            self.host.peerstore.add_addrs(pid, [addr], PERMANENT_ADDR_TTL)
        self.router.add_direct_peer(pid)
        self._pump()
        return pid

    # ------------------------------------------------------------------ router IO

    def _pump(self) -> None:
        router = self._router
        if router is None or self._closed:
            return
        for _ in range(1000):
            events = router.take_events()
            if not events:
                break
            for ev in events:
                if isinstance(ev, DeliverMessage):
                    for sub in self._subs.get(ev.message.topic, ()):
                        sub._push(ev.message)
                elif isinstance(ev, ValidateMessage):
                    self._start_validation(ev.message)
                elif isinstance(ev, ConnectPeer):
                    self._start_connect(ev)
        for peer, frame in router.take_outgoing():
            state = self._peers.get(peer)
            if state is None or state.outbound is None:
                continue
            try:
                state.queue.put_nowait(frame)
            except asyncio.QueueFull:
                self.dropped_frames += 1
                if self.dropped_frames in (1, 100) or self.dropped_frames % 10_000 == 0:
                    log.warning("queue to %s full: %d frames dropped", peer, self.dropped_frames)

    async def _heartbeat_loop(self) -> None:
        cfg = self.config
        await asyncio.sleep(cfg.heartbeat_initial_delay)
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while not self._closed:
            started = loop.time()
            try:
                self.router.heartbeat(started)
                self._pump()
            except Exception:
                log.exception("heartbeat failed")
            self.heartbeat_durations.observe(loop.time() - started)
            deadline += cfg.heartbeat_interval
            delay = deadline - loop.time()
            if delay < 0:  # we fell behind: skip the missed beats
                deadline = loop.time()
                delay = 0
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------ validation

    def _start_validation(self, msg: Message) -> None:
        fn = self._validators.get(msg.topic)
        if fn is None:
            self.router.report_validation(msg.id, ValidationResult.ACCEPT, self._now())
            return
        try:
            result = fn(msg.received_from, msg)
        except Exception:
            log.exception("validator of %s failed", msg.topic)
            result = ValidationResult.IGNORE
        if inspect.isawaitable(result):
            self._tasks.spawn(self._await_validation(msg, result), name="pubsub validate")
            return
        self.router.report_validation(msg.id, _verdict(result), self._now())

    async def _await_validation(
        self, msg: Message, pending: Awaitable[ValidationResult | bool]
    ) -> None:
        try:
            async with asyncio.timeout(self.config.validate_timeout):
                result = await pending
            verdict = _verdict(result)
        except TimeoutError:
            log.debug("validator of %s timed out", msg.topic)
            verdict = ValidationResult.IGNORE
        except Exception:
            log.exception("validator of %s failed", msg.topic)
            verdict = ValidationResult.IGNORE
        if self._closed:
            return
        self.router.report_validation(msg.id, verdict, self._now())
        self._pump()

    # ------------------------------------------------------------------ connections

    def _on_connected(self, conn: Connection) -> None:
        if self._closed or not self._started:
            return
        self._ensure_outbound(conn.remote_peer)

    def _on_disconnected(self, conn: Connection) -> None:
        if self._closed or not self._started:
            return
        peer = conn.remote_peer
        if self.host.is_connected(peer):
            return
        self._drop_peer(peer)

    def _ensure_outbound(self, peer: PeerID) -> _PeerState:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _PeerState(self.config.outbound_queue_size)
        if state.outbound is None and (state.opening is None or state.opening.done()):
            state.opening = self._tasks.spawn(self._open_outbound(peer, state), name="pubsub open")
        return state

    def _drop_peer(self, peer: PeerID) -> None:
        state = self._peers.pop(peer, None)
        if self._router is not None:
            self._router.remove_peer(peer, self._now())
        if state is None:
            return
        for task in (state.opening, state.writer):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        streams = ([state.outbound] if state.outbound else []) + list(state.inbound)
        for s in streams:
            self._tasks.spawn(_reset_quietly(s), name="pubsub reset")

    async def _open_outbound(self, peer: PeerID, state: _PeerState) -> None:
        try:
            async with asyncio.timeout(self.config.stream_open_timeout):
                stream = await self.host.new_stream(peer, self.config.protocols)
        except ProtocolNotSupported:
            log.debug("%s does not speak pubsub", peer)
            return
        except (P2PError, TimeoutError, OSError) as exc:
            log.debug("cannot open a pubsub stream to %s: %s", peer, exc)
            return
        if self._closed or self._peers.get(peer) is not state:
            await _reset_quietly(stream)
            return
        conns = self.host.connections(peer)
        if not conns:
            await _reset_quietly(stream)
            return
        assert stream.protocol is not None
        state.outbound = stream
        outbound = any(c.direction is Direction.OUTBOUND for c in conns)
        ips = {ip for c in conns if (ip := _ip_of(c.remote_addr)) is not None}
        self.router.add_peer(peer, stream.protocol, outbound=outbound, ips=ips, now=self._now())
        state.ready.set()
        state.writer = self._tasks.spawn(self._writer(peer, state, stream), name="pubsub writer")
        log.debug("pubsub stream to %s open (%s)", peer, stream.protocol)
        self._pump()

    async def _writer(self, peer: PeerID, state: _PeerState, stream: YamuxStream) -> None:
        queue = state.queue
        try:
            while not self._closed:
                frame = await queue.get()
                parts = [encode_uvarint(len(frame)), frame]
                size = len(frame)
                while size < 256 * 1024 and not queue.empty():
                    frame = queue.get_nowait()
                    parts += (encode_uvarint(len(frame)), frame)
                    size += len(frame)
                async with asyncio.timeout(self.config.write_timeout):
                    await stream.write(b"".join(parts))
        except (P2PError, TimeoutError, OSError) as exc:
            log.debug("pubsub stream to %s failed: %s", peer, exc)
        if self._closed or self._peers.get(peer) is not state:
            return
        # The stream died but the connection may live: forget the peer, maybe try again.
        await _reset_quietly(stream)
        reopens = state.reopens
        self._drop_peer(peer)
        if self.host.is_connected(peer) and reopens < _MAX_REOPENS:
            await asyncio.sleep(_REOPEN_DELAY)
            if not self._closed and self.host.is_connected(peer) and peer not in self._peers:
                self._ensure_outbound(peer).reopens = reopens + 1

    async def _handle_inbound(self, stream: YamuxStream) -> None:
        if self._closed:
            await stream.reset()
            return
        peer = self.host.connection_of(stream).remote_peer
        state = self._ensure_outbound(peer)
        state.inbound.add(stream)
        try:
            try:
                async with asyncio.timeout(self.config.peer_ready_timeout):
                    await state.ready.wait()
            except TimeoutError:
                log.debug("no outbound pubsub stream to %s: dropping its stream", peer)
                await stream.reset()
                return
            await self._read_loop(peer, state, stream)
        finally:
            state.inbound.discard(stream)

    async def _read_loop(self, peer: PeerID, state: _PeerState, stream: YamuxStream) -> None:
        decoder = LengthPrefixedDecoder(self.config.max_message_size)
        timeout = self.config.frame_read_timeout
        while not self._closed:
            if decoder.buffered:
                async with asyncio.timeout(timeout):
                    chunk = await stream.read()
            else:
                chunk = await stream.read()
            if not chunk:
                return  # EOF: the peer closed its stream
            frames = decoder.feed(chunk)  # MessageTooLarge ends the stream (host resets it)
            if self._peers.get(peer) is not state:
                return
            router = self.router
            for frame in frames:
                try:
                    router.handle_rpc(peer, frame, self._now())
                except InvalidRPC as exc:
                    log.info("%s", exc)
                    router.score.add_penalty(peer, 1)
                    self._pump()
                    await stream.reset()
                    return
            self._pump()

    # ------------------------------------------------------------------ PX and direct peers

    def _start_connect(self, ev: ConnectPeer) -> None:
        peer = ev.peer
        if (
            peer in self._connecting
            or self.host.is_connected(peer)
            or len(self._connecting) >= _MAX_PENDING_CONNECTS
        ):
            return
        if ev.signed_record is not None:
            try:
                _, addrs = verify_peer_record(ev.signed_record, peer)
            except InvalidPeerRecord as exc:
                log.debug("bogus peer record for %s in PX: %s", peer, exc)
                return
            self.host.peerstore.add_addrs(peer, addrs, RECENTLY_CONNECTED_ADDR_TTL)
        if not self.host.peerstore.addrs(peer):
            log.debug("no address for %s (%s): not connecting", peer, ev.reason)
            return
        self._connecting.add(peer)
        self._tasks.spawn(self._connect(peer, ev.reason), name=f"pubsub connect {ev.reason}")

    async def _connect(self, peer: PeerID, reason: str) -> None:
        try:
            async with self._connect_sem:
                async with asyncio.timeout(self.config.connect_timeout):
                    await self.host.connect_peer(peer)
            log.debug("connected to %s (%s)", peer, reason)
        except (P2PError, TimeoutError, OSError) as exc:
            log.debug("connecting to %s (%s) failed: %s", peer, reason, exc)
        finally:
            self._connecting.discard(peer)


def _verdict(result: object) -> ValidationResult:
    if isinstance(result, ValidationResult):
        return result
    if result is True:
        return ValidationResult.ACCEPT
    if result is False:
        return ValidationResult.REJECT
    log.warning("validator returned %r: treated as IGNORE", result)
    return ValidationResult.IGNORE


async def _reset_quietly(stream: YamuxStream) -> None:
    with contextlib.suppress(P2PError):
        await stream.reset()


#: The same service under the name other libp2p implementations use.
Gossipsub = Pubsub
