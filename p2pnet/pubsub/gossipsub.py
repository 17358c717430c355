"""The asyncio gossipsub service: a thin adapter between the host and the sans-IO router.

``Pubsub(host, config)`` serves ``/meshsub/1.2.0``, ``/meshsub/1.1.0``, ``/meshsub/1.0.0`` and
``/floodsub/1.0.0``. For every connected peer it opens one outbound stream (write-only, the first
of our protocols the peer accepts) and reads the peer's inbound stream; RPCs are length-prefixed
protobuf frames. Each peer has one writer task fed by a bounded queue whose bytes count against
the peer's memory scope: a slow peer loses frames instead of slowing everybody down. A heartbeat
task drives the router. Every task belongs to the service and ends with ``close()``.

The adapter decides nothing about peers: it reports what happened (frames, bad frames,
validation verdicts and failures, connections) to the router with the time of the node's clock,
and carries out what the router asks (frames to write, messages to deliver or validate, peers to
connect to).

Typical use::

    pubsub = Pubsub(host, GossipsubConfig())
    await pubsub.start()
    sub = pubsub.subscribe("chat")
    msg_id = await pubsub.publish("chat", b"hello")
    async for msg in sub:
        print(msg.from_peer, msg.data)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import random
import warnings
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

from multiaddr import Multiaddr

from p2pnet.clock import SYSTEM_CLOCK, Clock
from p2pnet.errors import (
    MessageTooLargeError,
    P2PError,
    ProtocolError,
    ProtocolNotSupported,
    ResourceLimitExceeded,
)
from p2pnet.host.connection import Connection, Direction
from p2pnet.host.host import Host
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.peerstore import PERMANENT_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL
from p2pnet.peer.record import SIGNED_PEER_RECORD, InvalidPeerRecord, verify_peer_record
from p2pnet.pubsub.errors import InvalidRPC, NotStartedError
from p2pnet.pubsub.messages import (
    Message,
    PublishResult,
    ValidationFailure,
    ValidationResult,
    as_verdict,
)
from p2pnet.pubsub.params import GossipsubConfig
from p2pnet.pubsub.router import (
    BadFrame,
    ConnectPeer,
    DeliverMessage,
    GossipsubRouter,
    ValidateMessage,
)
from p2pnet.pubsub.score import PeerScoreParams, PeerScoreThresholds, ScoreBreakdown
from p2pnet.resources.manager import StreamScope, stream_scope_of
from p2pnet.service import Lifecycle
from p2pnet.stats import DurationHistogram
from p2pnet.stream import Stream
from p2pnet.tasks import TaskOwner
from p2pnet.transport.addr import split_peer_id
from p2pnet.wire.framing import FrameDecoder

log = logging.getLogger("p2pnet.pubsub")

#: A topic validator: ``(propagation peer, message) -> ValidationResult`` (or bool), sync or async.
Validator = Callable[
    [PeerID, Message], ValidationResult | bool | Awaitable[ValidationResult | bool]
]

_MAX_PENDING_CONNECTS = 128
#: Messages validated per loop turn: a flood of messages whose validators are costly (agent
#: envelopes: signature recovery) waits its turn instead of holding the loop for every other
#: connection. The backlog is bounded by the router's ``max_pending_validations``.
_VALIDATIONS_PER_TURN = 8
_REOPEN_DELAY = 1.0
_MAX_REOPENS = 3


class _Done:
    """The result of a call that completed synchronously and used to be a coroutine.

    ``subscription.cancel()`` and ``pubsub.unsubscribe()`` act at once; awaiting what they
    return is accepted (and does nothing but warn) so that code written for the coroutine
    versions keeps working. Deprecated: new code should not await them.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        warnings.warn(
            "cancel() and unsubscribe() are synchronous now: call them without await",
            DeprecationWarning,
            stacklevel=2,
        )
        return
        yield  # a generator that finishes at once


_DONE = _Done()


class Subscription:
    """Messages of one topic, as an async iterator. End it with ``sub.cancel()``.

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
        if self._items:  # no timeout context (and its timer) for a message already here
            return self._items.popleft()
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
        if self._items:  # the usual case under load: no second coroutine per message
            return self._items.popleft()
        return await self.get()

    def cancel(self) -> _Done:
        """Unsubscribe (the topic is left when its last subscription ends). Idempotent.

        Acts at once; the result may be awaited (deprecated, for older callers).
        """
        if not self._ended:
            self._end()
            self._pubsub._remove_subscription(self)
        return _DONE

    unsubscribe = cancel

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class _Link(enum.Enum):
    """Our outbound pubsub stream to one peer."""

    #: Being opened (and negotiated); the peer's inbound streams wait for it.
    OPENING = "opening"
    #: Open, the peer is in the router, the writer task drains the queue.
    OPEN = "open"
    #: Could not be opened (the peer does not speak pubsub, or failed); inbound streams dropped.
    FAILED = "failed"
    #: Dropped: the peer left, the stream died, or the service closed.
    CLOSED = "closed"


class _PeerState:
    __slots__ = (
        "inbound",
        "link",
        "opening",
        "outbound",
        "queue",
        "queued_bytes",
        "ready",
        "reopens",
        "scope",
        "writer",
        "writing",
    )

    def __init__(self, queue_size: int) -> None:
        self.link = _Link.OPENING
        self.outbound: Stream | None = None
        self.opening: asyncio.Task[Any] | None = None
        self.writer: asyncio.Task[Any] | None = None
        #: The writer task holds frames it took from ``queue`` and has not written yet.
        self.writing = False
        #: length-prefixed frames (as they go on the stream)
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        #: The outbound stream's resource scope (its peer's memory): the frames in ``queue``
        #: and those the writer holds are reserved in it, like the stream's own buffers.
        self.scope: StreamScope | None = None
        #: bytes of the frames in ``queue`` and of those the writer holds
        self.queued_bytes = 0
        self.inbound: set[Stream] = set()
        #: Set when the link leaves OPENING: inbound streams then read (OPEN) or are dropped.
        self.ready = asyncio.Event()
        self.reopens = 0

    def opened(self, stream: Stream) -> None:
        self.link = _Link.OPEN
        self.outbound = stream
        self.scope = stream_scope_of(stream)
        self.ready.set()

    def enqueue(self, frame: bytes) -> str | None:
        """Queue ``frame`` for the writer, its bytes reserved in the peer's scope; if it cannot
        be queued, why (the caller drops it, as go-libp2p drops RPCs to a full queue)."""
        if self.queue.full():
            return "queue full"
        if self.scope is not None:
            try:
                self.scope.reserve_memory(len(frame))
            except ResourceLimitExceeded as exc:
                return str(exc)
        self.queue.put_nowait(frame)
        self.queued_bytes += len(frame)
        return None

    def release(self, amount: int) -> None:
        """``amount`` queued bytes were written or dropped: give them back to the scope."""
        self.queued_bytes -= amount
        if self.scope is not None:
            self.scope.release_memory(amount)

    def reopen(self) -> None:
        self.link = _Link.OPENING
        self.ready.clear()

    def failed(self) -> None:
        if self.link is _Link.OPENING:
            self.link = _Link.FAILED
            self.ready.set()

    def closed(self) -> None:
        self.link = _Link.CLOSED
        self.ready.set()
        # what waits (or the writer holds) will never be written: drop it, give its bytes back
        while not self.queue.empty():
            self.queue.get_nowait()
        self.release(self.queued_bytes)


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
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``clock`` and ``rng``: the node's (``Node`` passes ``node.clock`` and ``node.rng``);
        by default the system clock and an RNG seeded by the OS (mesh and gossip choices must
        not be predictable from outside; pass a seeded one to reproduce a run)."""
        self.host = host
        self.config = config or GossipsubConfig()
        self.score_params = score_params or PeerScoreParams()
        self.score_thresholds = score_thresholds or PeerScoreThresholds()
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self._rng = rng if rng is not None else random.Random()
        self._router: GossipsubRouter | None = None
        self._tasks = TaskOwner(f"pubsub {host.peer_id}")
        self._peers: dict[PeerID, _PeerState] = {}
        self._subs: dict[str, list[Subscription]] = {}
        self._validators: dict[str, Validator] = {}
        self._connecting: set[PeerID] = set()
        self._connect_sem = asyncio.Semaphore(self.config.max_pending_connects)
        self._lifecycle = Lifecycle("pubsub")
        #: a _pump is scheduled for the end of this loop iteration (see _pump_soon)
        self._pump_scheduled = False
        #: Messages the router asked us to validate, not yet given to their validator.
        self._to_validate: deque[Message] = deque()
        #: frames dropped because a peer's queue was full or its scope refused their bytes
        self.dropped_frames = 0
        #: how long each heartbeat took (router work and sending its output), for metrics
        self.heartbeat_durations = DurationHistogram()

    # ------------------------------------------------------------------ lifecycle

    @property
    def router(self) -> GossipsubRouter:
        if self._router is None or not self._lifecycle.running:
            raise NotStartedError("pubsub is not running: call start() (and not close())")
        return self._router

    @property
    def peer_id(self) -> PeerID:
        return self.host.peer_id

    @property
    def _closed(self) -> bool:
        return self._lifecycle.closed

    def _now(self) -> float:
        return self.clock.monotonic()

    async def start(self) -> None:
        """Validate the parameters, register the protocols, start the heartbeat."""
        if self._lifecycle.closed:
            raise NotStartedError("a closed pubsub cannot be restarted")
        if self._lifecycle.running:
            return
        router = GossipsubRouter(  # raises InvalidParameters; the service stays startable
            self.host.peer_id,
            self.config,
            self.score_params,
            self.score_thresholds,
            key=self.host.key,
            rng=self._rng,
            # like go and js: seqnos count up from the wall clock, so a restarted node does not
            # repeat the message IDs of its previous run
            seqno_start=int(self.clock.time() * 1e9),
        )
        self._lifecycle.begin_start()
        self._router = router
        router.now = self._now()
        router.record_source = self._peer_record
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
        previous = self._lifecycle.begin_close()
        if previous is None or self._router is None:
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
        for st in self._peers.values():
            st.closed()
        self._peers.clear()

    async def __aenter__(self) -> Pubsub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ public API

    def subscribe(self, topic: str) -> Subscription:
        """Join ``topic`` (if not yet) and return a new subscription to its messages.

        Several subscriptions may share a topic (each gets every message); the topic is left when
        the last one is cancelled. Takes effect at once: the announcements are queued.
        """
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

    def unsubscribe(self, topic: str) -> _Done:
        """End every subscription to ``topic`` and leave it. Idempotent; acts at once.

        The result may be awaited (deprecated: ``unsubscribe`` was a coroutine).
        """
        for sub in list(self._subs.get(topic, [])):
            sub.cancel()
        return _DONE

    async def publish(self, topic: str, data: bytes) -> bytes:
        """Sign and send ``data`` to ``topic``; returns the message ID.

        :meth:`publish_with_result` also tells how many peers it went to.
        """
        return (await self.publish_with_result(topic, data)).message_id

    async def publish_with_result(self, topic: str, data: bytes) -> PublishResult:
        """Sign and send ``data`` to ``topic``; returns its ID and the peers it was sent to.

        ``result.peers == 0`` means no other node will see it (nobody in the topic yet). Raises
        MessageTooLargeError, and NoPeersError instead of sending to nobody when
        ``allow_publish_to_zero_peers`` is off.
        """
        result = self.router.publish(topic, bytes(data), self._now())
        self._pump()
        return result

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
        else:
            self._validators[topic] = validator
        router.set_validated(topic, validator is not None)

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

    def _pump_soon(self) -> None:
        """Pump once the streams that have data in this loop iteration have all been read.

        Frames from several peers then leave as one frame per peer (each with every message
        for it), not one per peer for each frame received.
        """
        if not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self._pump_scheduled = False
        self._pump()

    def _pump(self) -> None:
        router = self._router
        if router is None or self._closed:
            return
        to_validate = self._to_validate
        budget = _VALIDATIONS_PER_TURN
        subs_of = self._subs
        for _ in range(1000):
            events = router.take_events()
            for ev in events:
                if type(ev) is DeliverMessage:
                    msg = ev.message
                    for sub in subs_of.get(msg.topic, ()):
                        sub._push(msg)
                elif isinstance(ev, ValidateMessage):
                    to_validate.append(ev.message)
                elif isinstance(ev, ConnectPeer):
                    self._start_connect(ev)
            validated = min(budget, len(to_validate))
            for _ in range(validated):
                self._start_validation(to_validate.popleft())
            budget -= validated
            if not events and not validated:
                break
        if to_validate:
            self._pump_soon()  # the rest on the next loop turns, after the other connections
        # frames with their length prefix, as they go on the stream (and into the queue)
        for peer, frame in router.take_outgoing(prefixed=True):
            state = self._peers.get(peer)
            if state is None or state.outbound is None:
                continue
            if not state.writing and state.queue.empty():
                # nothing waits to be written to this peer: write now if the stream can take it
                # without waiting (the usual case), sparing the writer task a wake-up
                try:
                    if state.outbound.write_nowait(frame):
                        continue
                except P2PError:
                    pass  # the writer meets the same error on this frame and drops the peer
            refused = state.enqueue(frame)
            if refused is not None:
                self.dropped_frames += 1
                log.debug("frame to %s dropped: %s", peer, refused)
                if self.dropped_frames in (1, 100) or self.dropped_frames % 10_000 == 0:
                    log.warning(
                        "frame to %s dropped (%s): %d in all", peer, refused, self.dropped_frames
                    )

    async def _heartbeat_loop(self) -> None:
        cfg = self.config
        clock = self.clock
        await asyncio.sleep(cfg.heartbeat_initial_delay)
        deadline = clock.monotonic()
        while not self._closed:
            started = clock.monotonic()
            try:
                self.router.heartbeat(started)
                self._pump()
            except Exception:
                log.exception("heartbeat failed")
            self.heartbeat_durations.observe(clock.monotonic() - started)
            deadline += cfg.heartbeat_interval
            delay = deadline - clock.monotonic()
            if delay < 0:  # we fell behind: skip the missed beats
                deadline = clock.monotonic()
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
            self.router.report_validation(msg.id, ValidationFailure.ERROR, self._now())
            return
        if inspect.isawaitable(result):
            self._tasks.spawn(self._await_validation(msg, result), name="pubsub validate")
            return
        self.router.report_validation(msg.id, _verdict(msg, result), self._now())

    async def _await_validation(
        self, msg: Message, pending: Awaitable[ValidationResult | bool]
    ) -> None:
        verdict: ValidationResult | ValidationFailure
        try:
            async with asyncio.timeout(self.config.validate_timeout):
                result = await pending
            verdict = _verdict(msg, result)
        except TimeoutError:
            log.debug("validator of %s timed out", msg.topic)
            verdict = ValidationFailure.TIMEOUT
        except Exception:
            log.exception("validator of %s failed", msg.topic)
            verdict = ValidationFailure.ERROR
        if self._closed:
            return
        self.router.report_validation(msg.id, verdict, self._now())
        self._pump()

    # ------------------------------------------------------------------ connections

    def _on_connected(self, conn: Connection) -> None:
        if not self._lifecycle.running:
            return
        self._ensure_outbound(conn.remote_peer)

    def _on_disconnected(self, conn: Connection) -> None:
        if not self._lifecycle.running:
            return
        peer = conn.remote_peer
        if self.host.is_connected(peer):
            return
        self._drop_peer(peer)

    def _ensure_outbound(self, peer: PeerID) -> _PeerState:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _PeerState(self.config.outbound_queue_size)
        if state.link is _Link.FAILED:
            # The peer did not speak pubsub when we tried, but now opens a pubsub stream to us
            # (or connects again): try once more.
            state.reopen()
        if state.link is _Link.OPENING and (state.opening is None or state.opening.done()):
            state.opening = self._tasks.spawn(self._open_outbound(peer, state), name="pubsub open")
        return state

    def _drop_peer(self, peer: PeerID) -> None:
        state = self._peers.pop(peer, None)
        if self._router is not None:
            self._router.remove_peer(peer, self._now())
        if state is None:
            return
        state.closed()
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
            state.failed()
            return
        except (P2PError, TimeoutError, OSError) as exc:
            log.debug("cannot open a pubsub stream to %s: %s", peer, exc)
            state.failed()
            return
        if self._closed or self._peers.get(peer) is not state:
            await _reset_quietly(stream)
            return
        conns = self.host.connections(peer)
        if not conns:
            state.failed()
            await _reset_quietly(stream)
            return
        assert stream.protocol is not None
        outbound = any(c.direction is Direction.OUTBOUND for c in conns)
        ips = {ip for c in conns if (ip := _ip_of(c.remote_addr)) is not None}
        self.router.add_peer(peer, stream.protocol, outbound=outbound, ips=ips, now=self._now())
        state.opened(stream)
        state.writer = self._tasks.spawn(self._writer(peer, state, stream), name="pubsub writer")
        log.debug("pubsub stream to %s open (%s)", peer, stream.protocol)
        self._pump()

    async def _writer(self, peer: PeerID, state: _PeerState, stream: Stream) -> None:
        queue = state.queue
        try:
            while not self._closed:
                frames = [await queue.get()]
                state.writing = True
                size = len(frames[0])
                while size < 256 * 1024 and not queue.empty():
                    frames.append(queue.get_nowait())
                    size += len(frames[-1])
                async with asyncio.timeout(self.config.write_timeout):
                    await stream.write(b"".join(frames))  # (each with its prefix)
                state.release(size)
                state.writing = False
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

    async def _handle_inbound(self, stream: Stream) -> None:
        if self._closed:
            await stream.reset()
            return
        peer = stream.conn.remote_peer
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
            if state.link is not _Link.OPEN:
                log.debug(
                    "no outbound pubsub stream to %s (%s): dropping its stream",
                    peer,
                    state.link.value,
                )
                await stream.reset()
                return
            await self._read_loop(peer, state, stream)
        finally:
            state.inbound.discard(stream)

    async def _read_loop(self, peer: PeerID, state: _PeerState, stream: Stream) -> None:
        """Feed the router the frames of ``stream``: pushed to an :class:`_RPCReader` by the
        connection as they arrive (no task wake-up per frame); this task only waits for the end.
        """
        reader = _RPCReader(self, peer, state, stream)
        try:
            stream.set_consumer(reader)
            reset = await reader.ended
        finally:
            reader.finish(False)
        if reset:
            await stream.reset()

    def _handle_frames(self, peer: PeerID, state: _PeerState, frames: list[bytes]) -> bool:
        """The complete frames of one chunk, to the router; False if the stream must be reset."""
        # A link is OPEN only while its state is the peer's (dropping the peer or closing the
        # service closes it first), and the router is there while any link is: no lookup by
        # PeerID (a Python-level hash) per chunk
        router = self._router
        if state.link is not _Link.OPEN or router is None:
            return False
        try:
            # one clock reading for the chunk: its frames arrived together
            router.handle_rpcs(peer, frames, self._now())
        except InvalidRPC as exc:  # the router has judged it already
            log.info("%s", exc)
            self._pump()
            return False
        self._pump_soon()
        return True

    def _bad_frame(self, peer: PeerID, state: _PeerState, fault: BadFrame) -> None:
        # A broken frame: that stream is done (the connection and the peer's other streams
        # are not); the router decides what it costs the peer.
        log.info("%s frame from %s: stream reset", fault.value, peer)
        if self._peers.get(peer) is state and not self._closed:
            self.router.report_bad_frame(peer, fault, self._now())
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


class _RPCReader:
    """A peer's inbound pubsub stream in push mode (:class:`~p2pnet.stream.StreamConsumer`):
    length-prefixed frames, split as bytes arrive and handed to the router from the
    connection's ``data_received``.

    A frame must complete within ``frame_read_timeout`` of its first byte (one timer, armed
    only while a frame is incomplete); its bytes count against the stream's resource scope while
    it is assembled; oversized, cut-off and undecodable frames are reported to the router and
    reset the stream. :attr:`ended` resolves once the stream is done, True if it must be reset.
    """

    __slots__ = (
        "_deadline",
        "_decoder",
        "_held",
        "_loop",
        "_peer",
        "_pubsub",
        "_scope",
        "_state",
        "_stream",
        "_timeout",
        "_timer",
        "ended",
    )

    def __init__(self, pubsub: Pubsub, peer: PeerID, state: _PeerState, stream: Stream) -> None:
        self._pubsub = pubsub
        self._peer = peer
        self._state = state
        self._stream = stream
        self._decoder = FrameDecoder(pubsub.config.max_message_size)
        self._timeout = pubsub.config.frame_read_timeout
        self._scope = stream_scope_of(stream)
        #: bytes of the frame under assembly reserved in ``_scope``
        self._held = 0
        self._loop = asyncio.get_running_loop()
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.ended: asyncio.Future[bool] = self._loop.create_future()

    def data_received(self, data: bytes) -> None:
        if self.ended.done():
            return
        pubsub = self._pubsub
        if pubsub._closed:
            self.finish(False)
            return
        decoder = self._decoder
        if not decoder.buffered:
            if type(data) is bytes:
                # the usual chunk: exactly one whole frame (one write of the peer, one yamux
                # frame) with a minimal one- or two-byte prefix, within the limit: its body is
                # taken from the chunk (the decoder would copy it in and out of its buffer)
                size = len(data)
                first = data[0]
                if first < 0x80:
                    length, start = first, 1
                elif size > 1 and 0 < data[1] < 0x80:
                    length, start = (first & 0x7F) | (data[1] << 7), 2
                else:
                    length = start = -1
                if start + length == size and length <= decoder.max_length:
                    if not pubsub._handle_frames(self._peer, self._state, [data[start:]]):
                        self.finish(True)
                    return
            self._deadline = self._loop.time() + self._timeout
        try:
            frames = decoder.split(data)
            buffered = decoder.buffered
            if buffered != self._held and self._scope is not None:
                if buffered > self._held:
                    self._scope.reserve_memory(buffered - self._held)
                else:
                    self._scope.release_memory(self._held - buffered)
                self._held = buffered
        except ResourceLimitExceeded as exc:
            log.debug("pubsub stream of %s: %s", self._peer, exc)
            self.finish(True)
            return
        except MessageTooLargeError:
            self._fault(BadFrame.OVERSIZED)
            return
        except ProtocolError as exc:  # a malformed length prefix
            log.debug("pubsub stream of %s: %s", self._peer, exc)
            self.finish(True)
            return
        if frames and not pubsub._handle_frames(self._peer, self._state, frames):
            self.finish(True)
            return
        if decoder.buffered and self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if self.ended.done() or not self._decoder.buffered:
            return
        if self._loop.time() < self._deadline:  # a later frame: its own deadline
            self._timer = self._loop.call_at(self._deadline, self._timed_out)
            return
        self._fault(BadFrame.TRUNCATED)

    def eof_received(self) -> None:
        if self._decoder.buffered:
            self._fault(BadFrame.TRUNCATED)
        else:
            self.finish(False)  # the peer closed its stream

    def stream_lost(self, exc: P2PError) -> None:
        self.finish(False)

    def _fault(self, fault: BadFrame) -> None:
        self._pubsub._bad_frame(self._peer, self._state, fault)
        self.finish(True)

    def finish(self, reset: bool) -> None:
        """Stop: give back what is held, leave push mode, let the handler end (``reset``:
        it resets the stream). Idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._held and self._scope is not None:
            self._scope.release_memory(self._held)
            self._held = 0
        if not self.ended.done():
            self.ended.set_result(reset)
            self._stream.set_consumer(None)


def _verdict(msg: Message, result: object) -> ValidationResult | ValidationFailure:
    verdict = as_verdict(result)
    if verdict is ValidationFailure.ERROR:
        log.warning("validator of %s returned %r, not a verdict", msg.topic, result)
    return verdict


async def _reset_quietly(stream: Stream) -> None:
    with contextlib.suppress(P2PError):
        await stream.reset()


#: The same service under the name other libp2p implementations use.
Gossipsub = Pubsub
