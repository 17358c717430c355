"""The Kademlia DHT on a host: the asyncio adapter of :class:`~p2pnet.kad.behaviour.KadBehaviour`.

``KadDHT(host, identify, config)`` plugs into a :class:`~p2pnet.host.host.Host` like identify
does. Every decision (answers, routing table admission and penalties, record selection, refresh
schedule) is the behaviour's; this module only moves bytes on streams, runs lookups (the sans-IO
:class:`~p2pnet.kad.query.Lookup`) with their timeouts, runs the timers the behaviour asks for,
and reports outcomes back. Time comes from the node's :class:`~p2pnet.clock.Clock`, randomness
from the node's seeded RNG.

* **Server mode** registers the kad protocol (so identify advertises it) and answers requests,
  several per inbound stream. **Client mode** registers nothing. The mode can be switched at run
  time (identify push tells connected peers).
* Every request runs under ``request_timeout``; every lookup under ``query_timeout``; each
  lookup keeps at most ``alpha`` requests in flight and owns (cancels and awaits) them.
* Outbound streams are pooled per peer; a stream goes back to the pool only after a clean
  request/answer exchange (never after ADD_PROVIDER, which some peers answer and others don't).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING

from multiaddr import Multiaddr

from p2pnet.clock import Clock
from p2pnet.deadlines import DeadlineQueue
from p2pnet.errors import ConnectionClosed, NegotiationError, P2PError, ProtocolError, StreamError
from p2pnet.kad import messages as m
from p2pnet.kad.answer import AnswerReader
from p2pnet.kad.behaviour import (
    CheckLiveness,
    Failure,
    KadBehaviour,
    PutResult,
    Refresh,
    Republish,
    ValueResult,
)
from p2pnet.kad.cid import provider_key
from p2pnet.kad.config import KadConfig, Mode
from p2pnet.kad.errors import KadError, KadProtocolError, PeerNotFound, RecordNotFound
from p2pnet.kad.inbound import KadInboundStream
from p2pnet.kad.messages import PeerInfo
from p2pnet.kad.providers import InMemoryProviderStore, ProviderStore
from p2pnet.kad.query import Lookup, LookupStats
from p2pnet.kad.records import InMemoryRecordStore, NamespacedValidator, RecordStore
from p2pnet.kad.routing_table import RoutingTable
from p2pnet.multistream.core import MultistreamDialer
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.peerstore import TEMP_ADDR_TTL
from p2pnet.service import Lifecycle, ServiceState
from p2pnet.stats import DurationHistogram
from p2pnet.tasks import TaskOwner
from p2pnet.wire.framing import (
    encode_length_prefixed,
    write_length_prefixed,
)
from p2pnet.wire.pb import kad_pb2

if TYPE_CHECKING:
    from p2pnet.host.host import Host
    from p2pnet.protocols.identify import IdentifyInfo, IdentifyService
    from p2pnet.stream import Stream

log = logging.getLogger("p2pnet.kad")

#: Errors that mean "this request to this peer failed" (never programming errors).
_REQUEST_ERRORS = (P2PError, TimeoutError, OSError)

AnswerHandler = Callable[[PeerID, kad_pb2.Message, list[PeerInfo]], bool]


def _failure_of(exc: BaseException) -> Failure:
    if isinstance(exc, (ProtocolError, NegotiationError)):
        return Failure.PROTOCOL
    if isinstance(exc, TimeoutError):
        return Failure.TIMEOUT
    return Failure.UNREACHABLE


class _HostPeers:
    """The behaviour's :class:`~p2pnet.kad.behaviour.PeerView` of a host."""

    def __init__(self, host: Host) -> None:
        self.host = host
        # the host's own methods (asked for every peer of every answer: no call in between)
        self.addrs: Callable[[PeerID], list[Multiaddr]] = host.peerstore.addrs
        self.addr_bytes: Callable[[PeerID], tuple[bytes, ...]] = host.peerstore.addr_bytes
        self.is_connected: Callable[[PeerID], bool] = host.is_connected

    def self_addrs(self) -> list[Multiaddr]:
        # What we advertise: never 0.0.0.0, relayed addresses included (host/addresses.py).
        return list(self.host.advertised_addrs)

    def protocols(self, peer: PeerID) -> Collection[str]:
        return self.host.peerstore.get_protocols(peer)

    def public_key(self, peer: PeerID) -> bytes | None:
        pub = self.host.peerstore.pubkey(peer)
        return None if pub is None else pub.to_protobuf()


class KadDHT:
    """A Kademlia DHT node. ``await start()`` before connecting to peers; ``await close()``."""

    def __init__(
        self,
        host: Host,
        identify: IdentifyService | None = None,
        config: KadConfig | None = None,
        *,
        record_store: RecordStore | None = None,
        provider_store: ProviderStore | None = None,
        validator: NamespacedValidator | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.identify = identify
        self.config = config or KadConfig()
        cfg = self.config
        self.clock: Clock = clock or host.clock  # the node's one clock
        self._rng = rng or random.Random()
        self.behaviour = KadBehaviour(
            host.peer_id,
            cfg,
            _HostPeers(host),
            records=record_store or InMemoryRecordStore(cfg.max_records),
            providers=provider_store
            or InMemoryProviderStore(cfg.max_provider_keys, cfg.max_providers_per_key),
            validator=validator or NamespacedValidator(max_value_size=cfg.max_value_size),
            now=self.clock.monotonic(),
        )
        self._tasks = TaskOwner(f"kad {host.peer_id}")
        #: The refresh in flight: it runs beside the maintenance loop, so lookups stalled by
        #: silent peers (each up to ``request_timeout``) never hold up the liveness checks
        #: that evict those peers; at most one at a time.
        self._refreshing: asyncio.Task[None] | None = None
        #: A refresh was asked for since the one in flight began (the table may have changed
        #: under it, say emptied and then met a new server): it runs again when done.
        self._refresh_wanted = False
        self._lifecycle = Lifecycle("kad")
        self._wake = asyncio.Event()
        #: Set and dropped on every change; created only while someone waits (wait_until).
        self._changed: asyncio.Event | None = None
        self._idle_streams: dict[PeerID, list[tuple[Stream, float]]] = {}
        #: The inbound streams' idle deadlines (one timer for all of them).
        self._idle_deadlines = DeadlineQueue(cfg.inbound_idle_timeout)
        #: The deadlines of our requests under the default ``request_timeout`` (one timer).
        self._request_deadlines = DeadlineQueue(cfg.request_timeout)
        #: The most recent lookups (their cost), newest last.
        self.lookup_history: deque[LookupStats] = deque(maxlen=1000)
        #: Durations of lookups by kind (find_peer, get_value, ...), for metrics.
        self.query_durations: dict[str, DurationHistogram] = {}
        if identify is not None:
            identify.on_identified(self._on_identified)

    # -- the behaviour's state, for callers and tests ---------------------------------------------

    @property
    def routing_table(self) -> RoutingTable:
        return self.behaviour.routing_table

    @property
    def records(self) -> RecordStore:
        return self.behaviour.records

    @property
    def providers(self) -> ProviderStore:
        return self.behaviour.providers

    @property
    def validator(self) -> NamespacedValidator:
        return self.behaviour.validator

    @property
    def counters(self) -> dict[str, int]:
        """Requests sent/received per type name, failed requests, bad requests and entries."""
        return self.behaviour.counters

    def _notify(self) -> None:
        """Something changed (table, stores, counters): wake :meth:`wait_until` callers."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds, re-checking it whenever the DHT's state changes
        (a peer enters or leaves the table, a request is answered or served, a lookup or a
        record correction ends). Raises TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                if self._changed is None:
                    self._changed = asyncio.Event()
                await self._changed.wait()

    def _now(self) -> float:
        return self.clock.monotonic()

    def _wall(self) -> float:
        return self.clock.time()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._lifecycle.closed:
            raise KadError("the DHT is closed")
        if not self._lifecycle.begin_start():
            return
        if self.behaviour.mode is Mode.SERVER:
            self.host.set_stream_acceptor(self.config.protocol_id, self._accept_stream)
        # Peers identified before we started.
        for peer in self.host.connected_peers():
            self._consider_peer(peer)
        self._tasks.spawn(self._maintenance(), name="kad maintenance")

    async def close(self) -> None:
        previous = self._lifecycle.begin_close()
        if previous is None:
            return
        if previous is ServiceState.RUNNING and self.behaviour.mode is Mode.SERVER:
            self.host.remove_stream_handler(self.config.protocol_id)
        await self._tasks.close()
        await self._close_pooled_streams()
        self._idle_deadlines.clear()

    async def __aenter__(self) -> KadDHT:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def mode(self) -> Mode:
        return self.behaviour.mode

    @mode.setter
    def mode(self, mode: Mode | str) -> None:
        self.set_mode(mode)

    def set_mode(self, mode: Mode | str) -> None:
        """Switch between client and server; connected peers learn it through identify push."""
        new = mode if isinstance(mode, Mode) else Mode(mode)
        if new is self.behaviour.mode:
            return
        self.behaviour.mode = new
        if not self._lifecycle.running:
            return
        if new is Mode.SERVER:
            self.host.set_stream_acceptor(self.config.protocol_id, self._accept_stream)
        else:
            self.host.remove_stream_handler(self.config.protocol_id)
        log.info("%s: kad mode is now %s", self.host.peer_id, new.value)

    # -- routing table upkeep -------------------------------------------------------------------

    def _on_identified(self, info: IdentifyInfo) -> None:
        if self._lifecycle.running:
            self._consider_peer(info.peer)

    def _consider_peer(self, peer: PeerID) -> None:
        was_empty = len(self.routing_table) == 0
        self._check(self.behaviour.peer_identified(peer, self._now()))
        if was_empty and len(self.routing_table) > 0:
            self._wake.set()  # the behaviour schedules a self lookup
        self._notify()

    def _check(self, peer: PeerID | None) -> None:
        if peer is not None and not self._lifecycle.closed:
            self._tasks.spawn(self._check_liveness(peer), name="kad liveness check")

    async def _check_liveness(self, peer: PeerID) -> None:
        alive = False
        try:
            resp = await self._rpc(
                peer, m.find_node(self.host.peer_id.to_bytes()), self.config.liveness_timeout
            )
            alive = resp is not None
        except _REQUEST_ERRORS as exc:
            log.debug("liveness check of %s failed: %s", peer, exc)
        replacement = self.behaviour.liveness_result(peer, alive, self._now())
        if replacement is not None:
            log.debug("%s replaced unresponsive %s in the routing table", replacement, peer)
        self._notify()

    # -- RPC client -----------------------------------------------------------------------------

    async def _rpc(
        self,
        peer: PeerID,
        msg: kad_pb2.Message,
        timeout: float | None = None,
        *,
        expect_response: bool = True,
    ) -> kad_pb2.Message | None:
        """Send one request and read the answer (``None`` when none is expected).

        Streams are reused: an idle stream to ``peer`` (at most ``stream_idle_timeout`` old) is
        taken from the pool and put back after a clean exchange. A pooled stream that fails (the
        remote closed or reset it meanwhile) or carries an answer of another type is dropped
        and the request goes on a fresh stream. A request without an answer (ADD_PROVIDER)
        never returns its stream to the pool: some implementations answer it, and that answer
        would be read as the answer to the next request. Raises P2PError subclasses or
        TimeoutError."""
        self.behaviour.count("sent " + m.type_name(msg.type))
        data = m.encode(msg)
        resp: kad_pb2.Message | None = None
        limit = timeout or self.config.request_timeout
        queue = self._request_deadlines
        async with queue.timeout() if limit == queue.delay else asyncio.timeout(limit):
            stream = await self._take_stream(peer)
            if stream is not None:
                try:
                    resp = await self._exchange(stream, data, expect_response)
                    if resp is not None and resp.type != msg.type:
                        raise StreamError("pooled stream carried a stale answer")
                except (StreamError, ConnectionClosed):
                    self.behaviour.count("stale pooled streams")
                    await stream.reset()
                    stream = None
            if stream is None:
                proto = self.config.protocol_id
                if self.identify is not None and not self.behaviour.speaks_kad(peer):
                    # A new connection: its identify exchange (started when it opened) tells
                    # the peer's protocols within about the round trip a negotiation would
                    # take; go-libp2p's NewStream waits for it likewise.
                    await self.identify.identify_finished(await self.host.connect_peer(peer))
                if self.behaviour.speaks_kad(peer) and expect_response:
                    # identify said the peer serves kad: the request goes out with the
                    # proposal (one round trip, not two), as go-libp2p's lazy negotiation
                    # does for a protocol the peer store knows. Not otherwise: a refusal
                    # followed by a reset would then read as a reset, not as a refusal.
                    # The echo and the answer are read as they arrive (AnswerReader).
                    stream, resp = await self._lazy_exchange(peer, proto, data)
                elif self.behaviour.speaks_kad(peer):
                    framed = encode_length_prefixed(data)
                    stream = await self.host.new_stream(
                        peer, [proto], bounded=True, early_data=framed
                    )
                    resp = await self._exchange(stream, None, expect_response)
                else:
                    stream = await self.host.new_stream(peer, [proto], bounded=True)
                    resp = await self._exchange(stream, data, expect_response)
        if resp is None:
            await stream.close()
            return None
        try:
            self.behaviour.check_answer(peer, msg, resp)
        except KadProtocolError:
            await stream.reset()
            raise
        await self._put_stream(peer, stream)
        return resp

    async def _exchange(
        self, stream: Stream, data: bytes | None, expect_response: bool
    ) -> kad_pb2.Message | None:
        """Send the request ``data`` (None: it went out with the negotiation) and read the
        answer (by the stream's consumer, :class:`AnswerReader`)."""
        try:
            if data is not None:
                await write_length_prefixed(stream, data)
            if not expect_response:
                return None
            # (under the request's timeout: the read needs none of its own)
            reader = AnswerReader(stream, self.config.max_message_size)
            stream.set_consumer(reader)
            return m.decode(await reader.result)
        except BaseException:
            await stream.reset()
            raise

    async def _lazy_exchange(
        self, peer: PeerID, proto: str, data: bytes
    ) -> tuple[Stream, kad_pb2.Message]:
        """A new stream to ``peer`` whose proposal carries the request ``data``; the echo and
        the answer read as they arrive. What ``host.new_stream(..., early_data=...)`` and
        :meth:`_exchange` do, without a read call per message."""
        host = self.host
        conn = await host.connect_peer(peer)
        host.connmgr.used(peer, host.clock.monotonic())
        muxed = conn.muxed
        stream = muxed.open_stream_nowait() or await muxed.open_stream()
        try:
            negotiation = MultistreamDialer([proto], early_data=encode_length_prefixed(data))
            reader = AnswerReader(stream, self.config.max_message_size, negotiation)
            out = negotiation.data_to_send()
            if not stream.write_nowait(out):
                await stream.write(out)
            stream.set_consumer(reader)
            return stream, m.decode(await reader.result)
        except BaseException:
            await stream.reset()
            raise

    async def _take_stream(self, peer: PeerID) -> Stream | None:
        pool = self._idle_streams.get(peer)
        limit = self._now() - self.config.stream_idle_timeout
        while pool:
            stream, since = pool.pop()
            if since >= limit and not stream.local_closed and not stream.remote_closed:
                return stream
            await stream.close()
        self._idle_streams.pop(peer, None)
        return None

    async def _put_stream(self, peer: PeerID, stream: Stream) -> None:
        pool = self._idle_streams.setdefault(peer, [])
        if self._lifecycle.closed or len(pool) >= self.config.max_idle_streams_per_peer:
            await stream.close()
            return
        pool.append((stream, self._now()))

    async def _close_pooled_streams(self) -> None:
        pools, self._idle_streams = self._idle_streams, {}
        for pool in pools.values():
            for stream, _ in pool:
                with contextlib.suppress(P2PError):
                    await stream.close()

    def _learn_peers(self, infos: Iterable[PeerInfo], ttl: float = TEMP_ADDR_TTL) -> None:
        store = self.host.peerstore
        for info in infos:
            # a connected peer's addresses are known (and kept while connected)
            if (
                info.addrs
                and info.peer != self.host.peer_id
                and not self.host.is_connected(info.peer)
            ):
                store.add_addrs(info.peer, info.addrs, ttl)

    # -- lookups --------------------------------------------------------------------------------

    async def _lookup(
        self,
        key: bytes,
        kind: str,
        make_request: Callable[[], kad_pb2.Message],
        on_answer: AnswerHandler | None = None,
    ) -> Lookup:
        """Run an iterative lookup for ``key``; ``on_answer`` may return True to stop early."""
        cfg = self.config
        lookup = Lookup(
            key,
            self.behaviour.lookup_seeds(key, self.host.connected_peers),
            local=self.host.peer_id,
            k=cfg.k,
            alpha=cfg.alpha,
            kind=kind,
        )
        started = self._now()
        pending: dict[asyncio.Task[kad_pb2.Message | None], PeerID] = {}
        try:
            async with asyncio.timeout(cfg.query_timeout):
                while not lookup.finished:
                    for peer in lookup.next_requests():
                        task = asyncio.create_task(
                            self._rpc(peer, make_request()), name=f"kad {kind}"
                        )
                        pending[task] = peer
                    if not pending:
                        break
                    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    # in the order the requests were sent, so that a run is reproducible
                    for task in [t for t in pending if t in done]:
                        peer = pending.pop(task)
                        self._settle(lookup, peer, task, on_answer)
        except TimeoutError:
            log.info("%s lookup for %r timed out after %.1f s", kind, key[:40], cfg.query_timeout)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            lookup.stats.duration = self._now() - started
            hist = self.query_durations.get(kind)
            if hist is None:
                hist = self.query_durations[kind] = DurationHistogram()
            hist.observe(lookup.stats.duration)
            self.behaviour.lookup_ran(key, self._now())
            self.lookup_history.append(lookup.stats)
            self._notify()
        return lookup

    def _settle(
        self,
        lookup: Lookup,
        peer: PeerID,
        task: asyncio.Task[kad_pb2.Message | None],
        on_answer: AnswerHandler | None,
    ) -> None:
        exc = task.exception()
        resp = None if exc is not None else task.result()
        if resp is None:
            err: BaseException = exc if exc is not None else KadProtocolError("no answer")
            if not isinstance(err, _REQUEST_ERRORS):
                log.error("kad request to %s failed unexpectedly", peer, exc_info=err)
            else:
                log.debug("kad request to %s failed: %r", peer, err)
            lookup.on_failure(peer)
            self.behaviour.request_failed(peer, _failure_of(err), self._now())
            return
        infos = self.behaviour.closer_peers(resp)
        self._learn_peers(infos)
        self._check(self.behaviour.peer_answered(peer, self._now()))
        lookup.on_response(peer, [i.peer for i in infos])
        if on_answer is not None:
            try:
                stop = on_answer(peer, resp, infos)
            except KadError as exc:  # a bad record or provider list: the peer is at fault
                log.info("bad %s answer from %s: %s", lookup.stats.kind, peer, exc)
                self.behaviour.request_failed(peer, Failure.PROTOCOL, self._now())
                stop = False
            if stop:
                lookup.stop()

    # -- public API: peers ----------------------------------------------------------------------

    def self_info(self) -> PeerInfo:
        return self.behaviour.self_info()

    async def get_closest_peers(self, key: bytes) -> list[PeerID]:
        """The k peers closest to ``key`` that answered an iterative FIND_NODE lookup."""
        lookup = await self._lookup(key, "get_closest_peers", lambda: m.find_node(key))
        lookup.stats.hops = lookup.depth()
        lookup.stats.found = bool(lookup.closest())
        return lookup.closest()

    async def find_peer(self, peer: PeerID | str, *, use_cache: bool = True) -> PeerInfo:
        """The addresses of ``peer``: from a live connection or the routing table (unless
        ``use_cache`` is false), else by an iterative lookup. Raises :class:`PeerNotFound` when
        nobody knows an address."""
        target = PeerID.from_string(peer) if isinstance(peer, str) else peer
        if target == self.host.peer_id:
            return self.self_info()
        addrs = self.host.peerstore.addrs(target)
        known = self.host.is_connected(target) or target in self.routing_table
        if use_cache and addrs and known:
            self.lookup_history.append(LookupStats(kind="find_peer", found=True))
            return PeerInfo(target, addrs)
        found: list[PeerInfo] = []

        def on_answer(sender: PeerID, resp: kad_pb2.Message, infos: list[PeerInfo]) -> bool:
            if sender == target:  # the target answered us itself
                found.append(PeerInfo(target, self.host.peerstore.addrs(target)))
                return True
            for info in infos:
                if info.peer == target and info.addrs:
                    found.append(info)
                    return True
            return False

        lookup = await self._lookup(
            target.to_bytes(), "find_peer", lambda: m.find_node(target.to_bytes()), on_answer
        )
        if not found:
            raise PeerNotFound(f"no peer knows an address of {target}")
        lookup.stats.found = True
        lookup.stats.hops = lookup.learned_hop(target) or 1
        return found[0]

    # -- public API: records --------------------------------------------------------------------

    async def put_value(self, key: bytes, value: bytes) -> int:
        """:meth:`put_record`, returning how many peers stored the record."""
        return len((await self.put_record(key, value)).stored)

    async def put_record(self, key: bytes, value: bytes) -> PutResult:
        """Validate, store locally and PUT_VALUE to the k closest peers; the result says which
        peers stored it. Raises :class:`InvalidRecord` for a value its namespace refuses (and
        :class:`UnknownNamespace` for a namespace without a validator)."""
        self.validator.validate(key, value)
        self.behaviour.store_local(key, value, self._wall())
        peers = await self.get_closest_peers(key)
        return await self._put_to(peers, key, value)

    async def _put_to(self, peers: Sequence[PeerID], key: bytes, value: bytes) -> PutResult:
        async def one(peer: PeerID) -> bool:
            try:
                resp = await self._rpc(peer, m.put_value(key, value))
            except _REQUEST_ERRORS as exc:
                log.debug("PUT_VALUE to %s failed: %s", peer, exc)
                return False
            return resp is not None and resp.record.key == key and resp.record.value == value

        results = await asyncio.gather(*(one(p) for p in peers))
        result = PutResult(key)
        for peer, ok in zip(peers, results, strict=True):
            (result.stored if ok else result.failed).append(peer)
        self._notify()
        return result

    async def get_value(self, key: bytes, quorum: int | None = None) -> bytes:
        """:meth:`get_record`'s value."""
        return (await self.get_record(key, quorum)).value

    async def get_record(self, key: bytes, quorum: int | None = None) -> ValueResult:
        """The best record of ``key``: an iterative GET_VALUE lookup that stops after ``quorum``
        valid answers (our own record counts as one; 0: ask until the lookup ends). The result
        names the peer whose answer held it (None: our own copy) and every peer that answered
        with it. Peers that returned an outdated value, or none among the closest, are then
        sent the best one. Raises :class:`RecordNotFound`."""
        q = self.config.default_quorum if quorum is None else quorum
        query = self.behaviour.value_query(key, q, self._wall())
        closest: set[PeerID] = set()
        if not query.done:

            def on_answer(sender: PeerID, resp: kad_pb2.Message, infos: list[PeerInfo]) -> bool:
                return query.on_answer(sender, resp)

            lookup = await self._lookup(key, "get_value", lambda: m.get_value(key), on_answer)
            lookup.stats.found = bool(query.values)
            lookup.stats.hops = lookup.depth()
            closest = set(lookup.closest())
        result = query.result(closest)
        if result is None:
            raise RecordNotFound(f"no valid record for {key[:60]!r}")
        if query.local is not None and query.local != result.value:
            self.behaviour.replace_local(key, result.value, self._wall())
        if result.outdated and not self._lifecycle.closed:
            self._tasks.spawn(
                self._put_to(result.outdated, key, result.value), name="kad record correction"
            )
        return result

    # -- public API: providers ------------------------------------------------------------------

    async def provide(self, key: bytes | str) -> int:
        """:meth:`add_provider`, returning how many peers were told."""
        return len((await self.add_provider(key)).stored)

    async def add_provider(self, key: bytes | str) -> PutResult:
        """Announce that we provide ``key`` (a multihash, or CID text): store it locally and
        send ADD_PROVIDER to the k closest peers (republished every
        ``provider_republish_interval``). The result names the peers told."""
        raw = provider_key(key)
        self.behaviour.provide_locally(raw, self._wall())
        peers = await self.get_closest_peers(raw)
        msg = m.add_provider(raw, self.self_info())

        async def one(peer: PeerID) -> bool:
            try:
                await self._rpc(peer, msg, expect_response=False)
            except _REQUEST_ERRORS as exc:
                log.debug("ADD_PROVIDER to %s failed: %s", peer, exc)
                return False
            return True

        results = await asyncio.gather(*(one(p) for p in peers))
        result = PutResult(raw)
        for peer, ok in zip(peers, results, strict=True):
            (result.stored if ok else result.failed).append(peer)
        return result

    def stop_providing(self, key: bytes | str) -> None:
        """Stop republishing ``key`` (remote records expire after ``provider_ttl``)."""
        self.behaviour.stop_providing(provider_key(key))

    async def find_providers(self, key: bytes | str, count: int = 20) -> list[PeerInfo]:
        """Up to ``count`` providers of ``key`` (a multihash, or CID text; ours first), by an
        iterative GET_PROVIDERS lookup that stops once ``count`` are known. Empty when there
        are none."""
        raw = provider_key(key)
        query = self.behaviour.provider_query(raw, count, self._wall())
        if query.done:
            return query.result()

        def on_answer(sender: PeerID, resp: kad_pb2.Message, infos: list[PeerInfo]) -> bool:
            provs = self.behaviour.provider_peers(resp)
            self._learn_peers(provs, self.config.provider_addr_ttl)
            return query.on_answer(sender, provs)

        lookup = await self._lookup(raw, "find_providers", lambda: m.get_providers(raw), on_answer)
        lookup.stats.found = bool(query.found)
        lookup.stats.hops = lookup.depth()
        return query.result()

    # -- bootstrap and refresh ------------------------------------------------------------------

    async def bootstrap(self, peers: Iterable[str | Multiaddr] | None = None) -> int:
        """Connect to ``peers`` (default: ``config.bootstrap_peers``), wait for them to be
        identified, then look ourselves up (which fills the table with our neighbours) and
        refresh the buckets that hold fewer than k peers (the far ones a newcomer lacks).
        Returns the routing table size. Raises :class:`KadError` if no peer could be reached."""
        addrs = list(self.config.bootstrap_peers if peers is None else peers)
        if addrs:
            results = await asyncio.gather(
                *(self._connect_bootstrap(a) for a in addrs), return_exceptions=True
            )
            ok = [r for r in results if isinstance(r, PeerID)]
            if not ok:
                errors = "; ".join(str(r) for r in results)
                raise KadError(f"could not reach any bootstrap peer: {errors}")
        await self.refresh(force=True, sparse_only=True)
        return len(self.routing_table)

    async def _connect_bootstrap(self, addr: str | Multiaddr) -> PeerID:
        async with asyncio.timeout(self.config.request_timeout):
            conn = await self.host.connect(addr)
        peer = conn.remote_peer
        if self.identify is not None:
            try:
                await self.identify.wait_identified(peer, self.config.request_timeout)
            except TimeoutError:
                log.info("bootstrap peer %s was not identified in time", peer)
        self._consider_peer(peer)
        return peer

    async def refresh(self, *, force: bool = False, sparse_only: bool = False) -> None:
        """Self lookup, then a lookup of a random key in every bucket (up to the deepest
        non-empty one) not refreshed within ``refresh_interval``; ``force``: regardless of when
        it was refreshed; ``sparse_only``: only buckets holding fewer than k peers."""
        await self.get_closest_peers(self.host.peer_id.to_bytes())
        cpls = self.behaviour.refresh_plan(self._now(), force=force, sparse_only=sparse_only)
        for cpl in cpls:
            key = self.routing_table.random_key_for_cpl(cpl, self._rng.randbytes)
            await self.get_closest_peers(key)

    async def _maintenance(self) -> None:
        """Run what the behaviour's timer asks for: refreshes, expiry, provider republishing."""
        while True:
            for action in self.behaviour.handle_timer(self._now(), self._wall()):
                if isinstance(action, Refresh):
                    self._refresh_wanted = True
                    if self._refreshing is None or self._refreshing.done():
                        self._refreshing = self._tasks.spawn(
                            self._refresh_while_wanted(), name="kad refresh"
                        )
                elif isinstance(action, CheckLiveness):
                    for peer in action.peers:
                        self._check(peer)
                elif isinstance(action, Republish):
                    for key in action.keys:
                        await self._guarded(self.add_provider(key), "provider republish")
            wait = self.behaviour.get_timer(self._now()) - self._now()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.01, wait))

    async def _refresh_while_wanted(self) -> None:
        """Refresh, and once more if another refresh was asked for meanwhile (one at a time;
        requests during a refresh fold into one)."""
        while self._refresh_wanted:
            self._refresh_wanted = False
            await self._guarded(self.refresh(), "refresh")

    async def _guarded(self, coro: object, what: str) -> None:
        try:
            await coro  # type: ignore[misc]
        except _REQUEST_ERRORS as exc:
            log.info("kad %s failed: %s", what, exc)

    # -- RPC server -----------------------------------------------------------------------------

    def _accept_stream(self, stream: Stream) -> None:
        """An inbound kad stream: its requests are answered as they arrive (no task)."""
        if self.behaviour.mode is not Mode.SERVER or self._lifecycle.closed:
            stream.reset_nowait()
            return
        KadInboundStream(self, stream).start()

    def handle_request(self, peer: PeerID, msg: kad_pb2.Message) -> kad_pb2.Message | None:
        """Answer one request from ``peer`` now (the behaviour's server, on this node's clock)."""
        return self.behaviour.handle_request(peer, msg, self._wall())
