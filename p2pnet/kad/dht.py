"""The Kademlia DHT service on a host: RPC server, RPC client, lookups, records, providers.

``KadDHT(host, identify, config)`` plugs into a :class:`~p2pnet.host.host.Host` like identify
does. The protocol logic lives in sans-IO pieces (:mod:`.routing_table`, :mod:`.query`,
:mod:`.records`, :mod:`.providers`, :mod:`.messages`); this module moves their decisions onto
streams.

* **Server mode** registers the kad protocol (so identify advertises it), answers FIND_NODE,
  GET_VALUE, PUT_VALUE, ADD_PROVIDER, GET_PROVIDERS and PING, several per inbound stream.
  **Client mode** registers nothing: requests get ``na`` and it never enters a routing table.
  The mode can be switched at run time (identify push tells connected peers).
* Only peers whose identify lists the kad protocol enter the routing table.
* Every request runs under ``request_timeout``; every lookup under ``query_timeout``; each
  lookup keeps at most ``alpha`` requests in flight and owns (cancels and awaits) them.
* A peer that fails a request is dropped from the lookup and penalised in the table (removed
  at once when it answers garbage or refuses the protocol, after ``max_failures`` failures in a
  row otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from multiaddr import Multiaddr

from p2pnet.errors import ConnectionClosed, NegotiationError, P2PError, ProtocolError, StreamError
from p2pnet.kad import messages as m
from p2pnet.kad.agent_record import AGENT_NAMESPACE, AgentRecordValidator
from p2pnet.kad.config import KadConfig, Mode
from p2pnet.kad.errors import (
    InvalidRecord,
    KadError,
    KadProtocolError,
    PeerNotFound,
    RecordNotFound,
)
from p2pnet.kad.messages import PeerInfo
from p2pnet.kad.providers import InMemoryProviderStore, ProviderStore
from p2pnet.kad.query import Lookup, LookupStats
from p2pnet.kad.quota import StoreQuota
from p2pnet.kad.records import (
    PK_NAMESPACE,
    InMemoryRecordStore,
    NamespacedValidator,
    RecordStore,
    StoredRecord,
    format_rfc3339,
    split_key,
)
from p2pnet.kad.routing_table import KEY_BITS, AddResult, RoutingTable, kad_key
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.peerstore import TEMP_ADDR_TTL
from p2pnet.stats import DurationHistogram
from p2pnet.tasks import TaskOwner
from p2pnet.wire.framing import (
    read_length_prefixed,
    read_length_prefixed_or_eof,
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
#: Delay between the first peer entering an empty table and the first refresh (js: 1 s).
INITIAL_REFRESH_DELAY = 1.0

AnswerHandler = Callable[[PeerID, kad_pb2.Message, list[PeerInfo]], bool]


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
    ) -> None:
        self.host = host
        self.identify = identify
        self.config = config or KadConfig()
        cfg = self.config
        self.routing_table = RoutingTable(host.peer_id, cfg.k, max_failures=cfg.max_failures)
        self.records: RecordStore = record_store or InMemoryRecordStore(cfg.max_records)
        #: Who stored what: per-peer quotas and what a full store evicts (kad/quota.py).
        self.record_quota = StoreQuota(cfg.max_records_per_peer)
        self.provider_quota = StoreQuota(cfg.max_provider_entries_per_peer)
        self.providers: ProviderStore = provider_store or InMemoryProviderStore(
            cfg.max_provider_keys, cfg.max_providers_per_key
        )
        self.validator = validator or NamespacedValidator(max_value_size=cfg.max_value_size)
        if AGENT_NAMESPACE not in self.validator.namespaces:
            self.validator.register(AGENT_NAMESPACE, AgentRecordValidator())
        self._mode = cfg.mode
        self._tasks = TaskOwner(f"kad {host.peer_id}")
        self._started = False
        self._closed = False
        self._wake = asyncio.Event()
        self._provided: dict[bytes, float] = {}  # keys we provide -> unix time last provided
        self._rng = random.Random()
        self._idle_streams: dict[PeerID, list[tuple[Stream, float]]] = {}
        #: The most recent lookups (their cost), newest last.
        self.lookup_history: deque[LookupStats] = deque(maxlen=1000)
        #: Counters: requests sent/received by type name, failures, bad messages.
        self.counters: dict[str, int] = {}
        #: Durations of lookups by kind (find_peer, get_value, ...), for metrics.
        self.query_durations: dict[str, DurationHistogram] = {}
        if identify is not None:
            identify.on_identified(self._on_identified)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        if self._closed:
            raise KadError("the DHT is closed")
        self._started = True
        if self._mode is Mode.SERVER:
            self.host.set_stream_handler(self.config.protocol_id, self._handle_stream)
        # Peers identified before we started.
        for peer in self.host.connected_peers():
            self._consider_peer(peer)
        self._tasks.spawn(self._maintenance(), name="kad maintenance")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started and self._mode is Mode.SERVER:
            self.host.remove_stream_handler(self.config.protocol_id)
        await self._tasks.close()
        await self._close_pooled_streams()

    async def __aenter__(self) -> KadDHT:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode | str) -> None:
        self.set_mode(mode)

    def set_mode(self, mode: Mode | str) -> None:
        """Switch between client and server; connected peers learn it through identify push."""
        new = mode if isinstance(mode, Mode) else Mode(mode)
        if new is self._mode:
            return
        self._mode = new
        if not self._started or self._closed:
            return
        if new is Mode.SERVER:
            self.host.set_stream_handler(self.config.protocol_id, self._handle_stream)
        else:
            self.host.remove_stream_handler(self.config.protocol_id)
        log.info("%s: kad mode is now %s", self.host.peer_id, new.value)

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # -- routing table upkeep -------------------------------------------------------------------

    def _on_identified(self, info: IdentifyInfo) -> None:
        if self._started and not self._closed:
            self._consider_peer(info.peer)

    def _speaks_kad(self, peer: PeerID) -> bool:
        return self.config.protocol_id in self.host.peerstore.get_protocols(peer)

    def _consider_peer(self, peer: PeerID) -> None:
        """Admit ``peer`` if it advertises our kad protocol, drop it if it stopped doing so."""
        if self._speaks_kad(peer):
            self._add_peer(peer)
        elif peer in self.routing_table:
            log.debug("%s no longer advertises %s: removed", peer, self.config.protocol_id)
            self.routing_table.remove(peer, self._now())

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _add_peer(self, peer: PeerID) -> None:
        was_empty = len(self.routing_table) == 0
        outcome = self.routing_table.add(peer, self._now())
        if outcome.result is AddResult.ADDED and was_empty:
            self._wake.set()
        if outcome.check is not None and not self._closed:
            self._tasks.spawn(self._check_liveness(outcome.check), name=f"kad liveness {peer}")

    async def _check_liveness(self, peer: PeerID) -> None:
        alive = False
        try:
            resp = await self._rpc(
                peer, m.find_node(self.host.peer_id.to_bytes()), self.config.liveness_timeout
            )
            alive = resp is not None
        except _REQUEST_ERRORS as exc:
            log.debug("liveness check of %s failed: %s", peer, exc)
        replacement = self.routing_table.liveness_result(peer, alive, self._now())
        if replacement is not None:
            log.debug("%s replaced unresponsive %s in the routing table", replacement, peer)

    def _penalise(self, peer: PeerID, exc: BaseException) -> None:
        """A request to ``peer`` failed: garbage or refusal removes it, else count a failure."""
        now = self._now()
        if isinstance(exc, (ProtocolError, NegotiationError)):
            if peer in self.routing_table:
                log.info("removing %s from the routing table: %s", peer, exc)
            self.routing_table.remove(peer, now)
        else:
            self.routing_table.record_failure(peer, now)

    def _answered(self, peer: PeerID) -> None:
        """``peer`` answered a kad request: refresh it in the table (if it advertises kad)."""
        if not self.routing_table.mark_seen(peer, self._now()) and self._speaks_kad(peer):
            self._add_peer(peer)

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
        taken from the pool and put back after a clean exchange; a reused stream the remote
        has meanwhile closed is replaced by a fresh one once. Raises P2PError subclasses or
        TimeoutError."""
        self._count("sent " + m.type_name(msg.type))
        data = m.encode(msg)
        async with asyncio.timeout(timeout or self.config.request_timeout):
            stream = await self._take_stream(peer)
            if stream is not None:
                try:
                    resp = await self._exchange(stream, data, expect_response)
                except (StreamError, ConnectionClosed):
                    self._count("stale pooled streams")
                    stream = None
            if stream is None:
                stream = await self.host.new_stream(peer, [self.config.protocol_id])
                resp = await self._exchange(stream, data, expect_response)
        if resp is not None and resp.type != msg.type:
            await stream.reset()
            raise KadProtocolError(
                f"{peer} answered {m.type_name(msg.type)} with {m.type_name(resp.type)}"
            )
        await self._put_stream(peer, stream)
        return resp

    async def _exchange(
        self, stream: Stream, data: bytes, expect_response: bool
    ) -> kad_pb2.Message | None:
        try:
            await write_length_prefixed(stream, data)
            if not expect_response:
                return None
            return m.decode(await read_length_prefixed(stream, self.config.max_message_size))
        except BaseException:
            await stream.reset()
            raise

    async def _take_stream(self, peer: PeerID) -> Stream | None:
        pool = self._idle_streams.get(peer)
        limit = asyncio.get_running_loop().time() - self.config.stream_idle_timeout
        while pool:
            stream, since = pool.pop()
            if since >= limit and not stream.local_closed and not stream.remote_closed:
                return stream
            await stream.close()
        self._idle_streams.pop(peer, None)
        return None

    async def _put_stream(self, peer: PeerID, stream: Stream) -> None:
        pool = self._idle_streams.setdefault(peer, [])
        if self._closed or len(pool) >= self.config.max_idle_streams_per_peer:
            await stream.close()
            return
        pool.append((stream, asyncio.get_running_loop().time()))

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

    def _seeds(self, hashed_key: bytes) -> list[PeerID]:
        seeds = self.routing_table.closest(hashed_key, self.config.k)
        if not seeds:
            # Tiny networks: identify may not have filled the table yet.
            seeds = [p for p in self.host.connected_peers() if self._speaks_kad(p)]
        return seeds

    async def _lookup(
        self,
        key: bytes,
        kind: str,
        make_request: Callable[[], kad_pb2.Message],
        on_answer: AnswerHandler | None = None,
    ) -> Lookup:
        """Run an iterative lookup for ``key``; ``on_answer`` may return True to stop early."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        lookup = Lookup(
            key,
            self._seeds(kad_key(key)),
            local=self.host.peer_id,
            k=cfg.k,
            alpha=cfg.alpha,
            kind=kind,
        )
        started = loop.time()
        pending: dict[asyncio.Task[kad_pb2.Message | None], PeerID] = {}
        try:
            async with asyncio.timeout(cfg.query_timeout):
                while not lookup.finished:
                    for peer in lookup.next_requests():
                        task = asyncio.create_task(
                            self._rpc(peer, make_request()), name=f"kad {kind} -> {peer}"
                        )
                        pending[task] = peer
                    if not pending:
                        break
                    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        peer = pending.pop(task)
                        self._settle(lookup, peer, task, on_answer)
        except TimeoutError:
            log.info("%s lookup for %r timed out after %.1f s", kind, key[:40], cfg.query_timeout)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            lookup.stats.duration = loop.time() - started
            hist = self.query_durations.get(kind)
            if hist is None:
                hist = self.query_durations[kind] = DurationHistogram()
            hist.observe(lookup.stats.duration)
            self.routing_table.mark_key_refreshed(lookup.target, self._now())
            self.lookup_history.append(lookup.stats)
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
            self._count("failed requests")
            lookup.on_failure(peer)
            self._penalise(peer, err)
            return
        infos, bad = m.peers_from_pb(
            resp.closerPeers,
            max_peers=self.config.max_peers_per_answer,
            max_addrs=self.config.max_addrs_per_peer,
        )
        if bad:
            self._count("bad peer entries", bad)
        infos = [i for i in infos if i.peer != self.host.peer_id]
        self._learn_peers(infos)
        self._answered(peer)
        lookup.on_response(peer, [i.peer for i in infos])
        if on_answer is not None:
            try:
                stop = on_answer(peer, resp, infos)
            except KadError as exc:  # a bad record or provider list: the peer is at fault
                log.info("bad %s answer from %s: %s", lookup.stats.kind, peer, exc)
                self._penalise(peer, exc)
                stop = False
            if stop:
                lookup.stop()

    # -- public API: peers ----------------------------------------------------------------------

    def self_info(self) -> PeerInfo:
        return PeerInfo(self.host.peer_id, list(self.host.listen_addrs))

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

    def _store_local(self, key: bytes, value: bytes) -> None:
        """Store a validated record unless we hold a better one (then InvalidRecord, as go)."""
        existing = self._local_value(key)
        if existing is not None and existing != value:
            if self.validator.select(key, [value, existing]) != 0:
                raise InvalidRecord("a better record for this key is already stored")
        self.records.put(StoredRecord(key, value, time.time()))

    async def put_value(self, key: bytes, value: bytes) -> int:
        """Validate, store locally and PUT_VALUE to the k closest peers; returns how many
        peers stored it. Raises :class:`InvalidRecord` for a value its namespace refuses."""
        self.validator.validate(key, value)
        self._store_local(key, value)
        peers = await self.get_closest_peers(key)
        return await self._put_to(peers, key, value)

    async def _put_to(self, peers: Sequence[PeerID], key: bytes, value: bytes) -> int:
        async def one(peer: PeerID) -> bool:
            try:
                resp = await self._rpc(peer, m.put_value(key, value))
            except _REQUEST_ERRORS as exc:
                log.debug("PUT_VALUE to %s failed: %s", peer, exc)
                return False
            return resp is not None and resp.record.value == value

        results = await asyncio.gather(*(one(p) for p in peers))
        return sum(results)

    def _local_value(self, key: bytes) -> bytes | None:
        rec = self.records.get(key)
        if rec is None:
            return None
        if time.time() - rec.time_received > self.config.max_record_age:
            self.records.delete(key)
            return None
        try:
            self.validator.validate(key, rec.value)
        except InvalidRecord:
            self.records.delete(key)
            return None
        return rec.value

    async def get_value(self, key: bytes, quorum: int | None = None) -> bytes:
        """The best value of ``key``: an iterative GET_VALUE lookup that stops after ``quorum``
        valid answers (our own record counts as one). Peers that returned an outdated value or
        none among the closest are then sent the best one. Raises :class:`RecordNotFound`."""
        self.validator.validator_for(key)  # refuse unknown namespaces up front
        q = self.config.default_quorum if quorum is None else quorum
        values: list[tuple[PeerID | None, bytes]] = []
        local = self._local_value(key)
        if local is not None:
            values.append((None, local))
        without: list[PeerID] = []

        def on_answer(sender: PeerID, resp: kad_pb2.Message, infos: list[PeerInfo]) -> bool:
            if not resp.HasField("record"):
                without.append(sender)
                return False
            rec = resp.record
            if rec.key != key:
                raise InvalidRecord(f"answer holds a record for another key {rec.key[:40]!r}")
            self.validator.validate(key, rec.value)
            values.append((sender, rec.value))
            return q > 0 and len(values) >= q

        if not (q > 0 and len(values) >= q):
            lookup = await self._lookup(key, "get_value", lambda: m.get_value(key), on_answer)
            lookup.stats.found = bool(values)
            lookup.stats.hops = lookup.depth()
            closest = set(lookup.closest())
        else:
            closest = set()
        if not values:
            raise RecordNotFound(f"no valid record for {key[:60]!r}")
        best = values[self.validator.select(key, [v for _, v in values])][1]
        outdated = [p for p, v in values if p is not None and v != best]
        outdated += [p for p in without if p in closest]
        if local is not None and local != best:
            self.records.put(StoredRecord(key, best, time.time()))
        if outdated and not self._closed:
            self._tasks.spawn(self._put_to(outdated, key, best), name="kad record correction")
        return best

    # -- public API: providers ------------------------------------------------------------------

    async def provide(self, key: bytes) -> int:
        """Announce that we provide ``key``: store it locally and ADD_PROVIDER to the k closest
        peers (republished every ``provider_republish_interval``). Returns how many peers were
        told."""
        if not key or len(key) > self.config.max_key_size:
            raise ValueError(f"provider key must be 1..{self.config.max_key_size} bytes")
        now = time.time()
        self.providers.add_provider(key, self.host.peer_id, now + self.config.provider_ttl)
        self._provided[key] = now
        peers = await self.get_closest_peers(key)
        msg = m.add_provider(key, self.self_info())

        async def one(peer: PeerID) -> bool:
            try:
                await self._rpc(peer, msg, expect_response=False)
            except _REQUEST_ERRORS as exc:
                log.debug("ADD_PROVIDER to %s failed: %s", peer, exc)
                return False
            return True

        return sum(await asyncio.gather(*(one(p) for p in peers)))

    def stop_providing(self, key: bytes) -> None:
        """Stop republishing ``key`` (remote records expire after ``provider_ttl``)."""
        self._provided.pop(key, None)
        self.providers.remove_provider(key, self.host.peer_id)

    async def find_providers(self, key: bytes, count: int = 20) -> list[PeerInfo]:
        """Up to ``count`` providers of ``key`` (ours first), by an iterative GET_PROVIDERS
        lookup that stops once ``count`` are known. Empty when there are none."""
        found: dict[PeerID, PeerInfo] = {}
        for peer in self.providers.get_providers(key, time.time()):
            if peer == self.host.peer_id:
                found[peer] = self.self_info()
            else:
                found[peer] = PeerInfo(peer, self.host.peerstore.addrs(peer))
        if len(found) >= count:
            return list(found.values())[:count]

        def on_answer(sender: PeerID, resp: kad_pb2.Message, infos: list[PeerInfo]) -> bool:
            provs, _ = m.peers_from_pb(
                resp.providerPeers,
                max_peers=self.config.max_peers_per_answer,
                max_addrs=self.config.max_addrs_per_peer,
            )
            self._learn_peers(provs, self.config.provider_addr_ttl)
            for info in provs:
                if info.peer not in found:
                    found[info.peer] = info
                elif info.addrs and not found[info.peer].addrs:
                    found[info.peer] = info
            return len(found) >= count

        lookup = await self._lookup(key, "find_providers", lambda: m.get_providers(key), on_answer)
        lookup.stats.found = bool(found)
        lookup.stats.hops = lookup.depth()
        return list(found.values())[:count]

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
        conn = await asyncio.wait_for(self.host.connect(addr), self.config.request_timeout)
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
        table = self.routing_table
        interval = 0.0 if force else self.config.refresh_interval
        cpls = table.buckets_to_refresh(
            self._now() + (1.0 if force else 0.0), interval, self.config.max_refresh_cpl
        )
        if sparse_only:
            # Buckets deeper than our k-th closest peer are complete: the self lookup just met
            # every peer in them. Only the sparse ones up to there need a lookup.
            near = table.closest(table.local_key, table.k)
            frontier = table.cpl(near[-1]) if len(near) >= table.k else KEY_BITS
            cpls = [c for c in cpls if c <= frontier and len(table.bucket(c)) < table.k]
        for cpl in cpls:
            key = table.random_key_for_cpl(cpl, self._rng.randbytes)
            await self.get_closest_peers(key)

    async def _maintenance(self) -> None:
        """Refresh when the table gets its first peer and every ``refresh_interval``; drop
        expired records and providers; republish our provider records."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + INITIAL_REFRESH_DELAY
        next_cleanup = loop.time() + cfg.cleanup_interval
        waiting_for_peers = True
        while True:
            now = loop.time()
            if cfg.auto_refresh and len(self.routing_table) > 0:
                if waiting_for_peers:
                    waiting_for_peers = False
                    next_refresh = now + INITIAL_REFRESH_DELAY
                elif now >= next_refresh:
                    await self._guarded(self.refresh(), "refresh")
                    next_refresh = loop.time() + cfg.refresh_interval
            if now >= next_cleanup:
                self._cleanup()
                await self._guarded(self._republish(), "provider republish")
                next_cleanup = loop.time() + cfg.cleanup_interval
            wake_at = next_cleanup
            if cfg.auto_refresh and not waiting_for_peers:
                wake_at = min(wake_at, next_refresh)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.05, wake_at - loop.time()))
            except TimeoutError:
                pass

    async def _guarded(self, coro: object, what: str) -> None:
        try:
            await coro  # type: ignore[misc]
        except _REQUEST_ERRORS as exc:
            log.info("kad %s failed: %s", what, exc)

    def _cleanup(self) -> None:
        now = time.time()
        n = self.records.gc(now, self.config.max_record_age)
        n += self.providers.gc(now)
        if n:
            log.debug("dropped %d expired records/providers", n)

    async def _republish(self) -> None:
        now = time.time()
        due = [
            k
            for k, t in self._provided.items()
            if now - t >= self.config.provider_republish_interval
        ]
        for key in due:
            await self.provide(key)

    # -- RPC server -----------------------------------------------------------------------------

    async def _handle_stream(self, stream: Stream) -> None:
        peer = stream.conn.remote_peer
        cfg = self.config
        try:
            while True:
                async with asyncio.timeout(cfg.inbound_idle_timeout):
                    data = await read_length_prefixed_or_eof(stream, cfg.max_message_size)
                if data is None:
                    break
                if self._mode is not Mode.SERVER or self._closed:
                    await stream.reset()
                    return
                msg = m.decode(data)
                self._count("received " + m.type_name(msg.type))
                resp = self.handle_request(peer, msg)
                if resp is not None:
                    await write_length_prefixed(stream, m.encode(resp))
        except TimeoutError:
            log.debug("kad stream from %s idle for %.0f s: reset", peer, cfg.inbound_idle_timeout)
            await stream.reset()
            return
        except (KadError, ProtocolError) as exc:
            self._count("bad requests")
            log.info("bad kad request from %s: %s", peer, exc)
            await stream.reset()
            return
        await stream.close()

    def handle_request(self, peer: PeerID, msg: kad_pb2.Message) -> kad_pb2.Message | None:
        """Answer one request from ``peer`` (sans-IO: the stream handler calls this).

        Raises :class:`KadError` for a request that cannot be served (the stream is reset)."""
        if len(msg.key) > self.config.max_key_size:
            raise KadProtocolError(
                f"key of {len(msg.key)} bytes exceeds {self.config.max_key_size}"
            )
        t = msg.type
        if t == m.PING:
            return msg
        if not msg.key:
            raise KadProtocolError(f"{m.type_name(t)} without a key")
        if t == m.FIND_NODE:
            resp = m.request(m.FIND_NODE, msg.key)
            resp.closerPeers.extend(self._closer_peers(msg.key, peer))
            target = self._known_target(bytes(msg.key), peer)
            if target is not None and target.id not in {p.id for p in resp.closerPeers}:
                resp.closerPeers.append(target)
            return resp
        if t == m.GET_VALUE:
            return self._handle_get_value(peer, msg)
        if t == m.PUT_VALUE:
            return self._handle_put_value(peer, msg)
        if t == m.ADD_PROVIDER:
            self._handle_add_provider(peer, msg)
            return None
        if t == m.GET_PROVIDERS:
            return self._handle_get_providers(peer, msg)
        raise KadProtocolError(f"unsupported message type {t}")  # pragma: no cover

    def _peer_pb(self, peer: PeerID) -> kad_pb2.Message.Peer | None:
        if peer == self.host.peer_id:
            return m.peer_to_pb(self.self_info(), kad_pb2.Message.CONNECTED)
        addrs = self.host.peerstore.addrs(peer)
        if not addrs:
            return None
        conn = (
            kad_pb2.Message.CONNECTED
            if self.host.is_connected(peer)
            else kad_pb2.Message.NOT_CONNECTED
        )
        return m.peer_to_pb(PeerInfo(peer, addrs[: self.config.max_addrs_per_peer]), conn)

    def _known_target(self, key: bytes, requester: PeerID) -> kad_pb2.Message.Peer | None:
        """FIND_NODE for a peer we know an address of (say a connected client, which is in no
        routing table): name it too, as go does, so that clients can be found."""
        try:
            target = PeerID.from_bytes(key)
        except (P2PError, ValueError):
            return None
        if target in (requester, self.host.peer_id):
            return None
        return self._peer_pb(target)

    def _closer_peers(self, key: bytes, requester: PeerID) -> list[kad_pb2.Message.Peer]:
        """The k closest peers of our table to ``key`` (never the requester), with addresses;
        ourselves too when the key is our own peer ID (as js does)."""
        out: list[kad_pb2.Message.Peer] = []
        if key == self.host.peer_id.to_bytes():
            own = self._peer_pb(self.host.peer_id)
            if own is not None:
                out.append(own)
        for p in self.routing_table.closest(kad_key(key), self.config.k, exclude=(requester,)):
            pb = self._peer_pb(p)
            if pb is not None:
                out.append(pb)
        return out

    def _handle_get_value(self, peer: PeerID, msg: kad_pb2.Message) -> kad_pb2.Message:
        key = bytes(msg.key)
        resp = m.request(m.GET_VALUE, key)
        value = self._local_value(key)
        if value is None:
            value = self._public_key_value(key)
        if value is not None:
            rec = self.records.get(key)
            when = rec.time_received if rec is not None else time.time()
            resp.record.CopyFrom(m.make_record(key, value, format_rfc3339(when)))
        resp.closerPeers.extend(self._closer_peers(key, peer))
        return resp

    def _public_key_value(self, key: bytes) -> bytes | None:
        """``/pk/<peer id>``: the public key from the peer store, when we know it."""
        try:
            namespace, rest = split_key(key)
        except InvalidRecord:
            return None
        if namespace != PK_NAMESPACE:
            return None
        try:
            target = PeerID.from_bytes(rest)
        except (P2PError, ValueError):
            return None
        pub = self.host.peerstore.pubkey(target)
        return None if pub is None else pub.to_protobuf()

    def _handle_put_value(self, peer: PeerID, msg: kad_pb2.Message) -> kad_pb2.Message:
        if not msg.HasField("record"):
            raise KadProtocolError("PUT_VALUE without a record")
        key, value = bytes(msg.record.key), bytes(msg.record.value)
        if key != msg.key:
            raise KadProtocolError("PUT_VALUE record key differs from the message key")
        self.validator.validate(key, value)
        # the sender's quota decides what (of its own, or of the biggest holder) makes room
        for old in self.record_quota.admit(peer, key, len(self.records), self.config.max_records):
            assert isinstance(old, bytes)
            self.records.delete(old)
            self.record_quota.removed(old)
        self._store_local(key, value)
        self.record_quota.stored(peer, key)
        return msg

    def _handle_add_provider(self, peer: PeerID, msg: kad_pb2.Message) -> None:
        infos, _ = m.peers_from_pb(
            msg.providerPeers,
            max_peers=self.config.max_peers_per_answer,
            max_addrs=self.config.max_addrs_per_peer,
        )
        expires = time.time() + self.config.provider_ttl
        for info in infos:
            if info.peer != peer:  # only the sender may announce itself
                log.debug("%s tried to add %s as a provider: ignored", peer, info.peer)
                continue
            key = bytes(msg.key)
            new_key = not self.providers.get_providers(key, time.time())
            size = len(self.providers) if new_key else 0
            limit = self.config.max_provider_keys
            for old in self.provider_quota.admit(peer, (key, peer), size, limit):
                assert isinstance(old, tuple)
                self.providers.remove_provider(old[0], old[1])
                self.provider_quota.removed(old)
            self.providers.add_provider(key, peer, expires)
            self.provider_quota.stored(peer, (key, peer))
            self._learn_peers([info], self.config.provider_addr_ttl)

    def _handle_get_providers(self, peer: PeerID, msg: kad_pb2.Message) -> kad_pb2.Message:
        key = bytes(msg.key)
        resp = m.request(m.GET_PROVIDERS, key)
        for prov in self.providers.get_providers(key, time.time())[
            : self.config.max_peers_per_answer
        ]:
            pb = self._peer_pb(prov)
            resp.providerPeers.append(pb if pb is not None else m.peer_to_pb(PeerInfo(prov)))
        resp.closerPeers.extend(self._closer_peers(key, peer))
        return resp
