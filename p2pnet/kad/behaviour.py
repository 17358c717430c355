"""The kad behaviour (sans-IO): every protocol decision of the DHT, with ``now`` passed in.

:class:`KadBehaviour` owns the routing table, the record and provider stores and the validator,
and decides:

* how to answer each request (:meth:`KadBehaviour.handle_request`: FIND_NODE, GET_VALUE,
  PUT_VALUE, ADD_PROVIDER, GET_PROVIDERS, PING);
* which peers enter or leave the routing table, and what a failed request costs a peer
  (:meth:`peer_identified`, :meth:`peer_answered`, :meth:`request_failed`; the penalty policy);
* what an answer means (:meth:`check_answer`, :meth:`closer_peers`), and for GET_VALUE which
  record wins and who holds an outdated one (:class:`ValueQuery`); for GET_PROVIDERS which
  providers are known (:class:`ProviderQuery`);
* when to refresh which bucket, which silent peers to check for liveness, when to drop expired
  records, when to republish provider records (:meth:`get_timer` / :meth:`handle_timer` return
  :class:`Refresh`, :class:`CheckLiveness` and :class:`Republish` actions).

It reads no clock and does no I/O: ``now`` is the node's monotonic time (timers, routing
table), ``wall`` its wall-clock time (record and provider ages, which other nodes see). What it
needs to know about other peers (addresses, connectedness, protocols, public keys) it asks a
:class:`PeerView`. The asyncio adapter (:mod:`p2pnet.kad.dht`) moves bytes on streams, runs the
lookups and timers, and reports back.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from multiaddr import Multiaddr

from p2pnet.errors import P2PError
from p2pnet.kad import messages as m
from p2pnet.kad.config import KadConfig
from p2pnet.kad.errors import InvalidRecord, KadProtocolError
from p2pnet.kad.messages import PeerInfo
from p2pnet.kad.peer_entries import PeerEntries
from p2pnet.kad.providers import ProviderStore
from p2pnet.kad.quota import StoreQuota
from p2pnet.kad.records import (
    PK_NAMESPACE,
    NamespacedValidator,
    RecordStore,
    StoredRecord,
    format_rfc3339,
    split_key,
)
from p2pnet.kad.routing_table import AddResult, RoutingTable, kad_key
from p2pnet.peer.peer_id import PeerID
from p2pnet.wire.pb import kad_pb2

log = logging.getLogger("p2pnet.kad")

#: Delay between the first peer entering an empty table and the self lookup (js: 1 s), so
#: that the peers connecting at the same moment are identified first.
INITIAL_REFRESH_DELAY = 1.0


class PeerView(Protocol):
    """What the behaviour may ask about peers (the host's peer store and connections)."""

    def self_addrs(self) -> list[Multiaddr]: ...

    def addrs(self, peer: PeerID) -> list[Multiaddr]: ...

    def addr_bytes(self, peer: PeerID) -> tuple[bytes, ...]:
        """:meth:`addrs` as binary multiaddrs."""
        ...

    def is_connected(self, peer: PeerID) -> bool: ...

    def protocols(self, peer: PeerID) -> Collection[str]: ...

    def public_key(self, peer: PeerID) -> bytes | None:
        """The protobuf-encoded public key of ``peer``, if known."""
        ...


class Failure(enum.Enum):
    """Why a request to a peer failed; the penalty depends on it."""

    #: The peer answered garbage, the wrong message type, or refused the protocol.
    PROTOCOL = "protocol"
    #: No answer in time.
    TIMEOUT = "timeout"
    #: Could not reach it (dial, connection or stream failed).
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class Refresh:
    """Refresh the routing table: a self lookup, then a lookup of a random key in each bucket
    :meth:`KadBehaviour.refresh_plan` names."""


@dataclass(frozen=True)
class Republish:
    """Announce ourselves again as a provider of ``keys``."""

    keys: tuple[bytes, ...]


@dataclass(frozen=True)
class CheckLiveness:
    """Send each of ``peers`` a FIND_NODE and report with :meth:`KadBehaviour.liveness_result`
    (no answer within ``liveness_timeout``: dead)."""

    peers: tuple[PeerID, ...]


Action = Refresh | Republish | CheckLiveness


class KadBehaviour:
    """The DHT's decisions for one node (see the module docstring)."""

    def __init__(
        self,
        local: PeerID,
        config: KadConfig,
        peers: PeerView,
        *,
        records: RecordStore,
        providers: ProviderStore,
        validator: NamespacedValidator,
        now: float,
    ) -> None:
        self.local = local
        self.config = config
        self.peers = peers
        self.records = records
        self.providers = providers
        self.validator = validator
        #: Who stored what: per-peer quotas and what a full store evicts (kad/quota.py).
        self.record_quota = StoreQuota(config.max_records_per_peer)
        self.provider_quota = StoreQuota(config.max_provider_entries_per_peer)
        self.mode = config.mode
        self.routing_table = RoutingTable(local, config.k, max_failures=config.max_failures)
        self._entries = PeerEntries(config.max_addrs_per_peer)
        #: Requests sent/received by type name, failures, bad messages.
        self.counters: dict[str, int] = {}
        self._provided: dict[bytes, float] = {}  # keys we provide -> wall time last announced
        self._initial_refresh_at: float | None = None
        self._self_lookup_at = -math.inf  # monotonic time of the last self lookup
        self._cleanup_at = now + config.cleanup_interval
        self._liveness_at = now + config.liveness_interval if config.liveness_interval else math.inf
        #: Peers with a liveness check in flight (periodic or of a full bucket).
        self._probing: set[PeerID] = set()

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # -- routing table: who is in, and the penalty policy ---------------------------------------

    def speaks_kad(self, peer: PeerID) -> bool:
        return self.config.protocol_id in self.peers.protocols(peer)

    def peer_identified(self, peer: PeerID, now: float) -> PeerID | None:
        """Identify (or a push) told us ``peer``'s protocols: admit a kad server, drop a peer
        that stopped advertising kad. Returns a peer whose liveness must be checked."""
        if self.speaks_kad(peer):
            return self._add(peer, now)
        if peer in self.routing_table:
            log.debug("%s no longer advertises %s: removed", peer, self.config.protocol_id)
            self.routing_table.remove(peer, now)
        return None

    def peer_answered(self, peer: PeerID, now: float) -> PeerID | None:
        """``peer`` answered a request: it is alive. Returns a liveness check to run."""
        if self.routing_table.mark_seen(peer, now):
            return None
        return self._add(peer, now) if self.speaks_kad(peer) else None

    def request_failed(self, peer: PeerID, failure: Failure, now: float) -> None:
        """Garbage or a refusal removes the peer at once; a timeout or an unreachable peer
        counts as one failure (``max_failures`` in a row remove it)."""
        self.count("failed requests")
        if failure is Failure.PROTOCOL:
            if peer in self.routing_table:
                log.info("removing %s from the routing table: bad kad answer", peer)
            self.routing_table.remove(peer, now)
        else:
            self.routing_table.record_failure(peer, now)

    def liveness_result(self, peer: PeerID, alive: bool, now: float) -> PeerID | None:
        """The outcome of a liveness check (of a full bucket's oldest peer, or periodic): a
        live peer counts as seen, a dead one leaves the table. Returns the peer that replaced
        a dead one."""
        self._probing.discard(peer)
        self.count("liveness checks")
        if not alive:
            self.count("evicted by liveness check")
        return self.routing_table.liveness_result(peer, alive, now)

    def _add(self, peer: PeerID, now: float) -> PeerID | None:
        was_empty = len(self.routing_table) == 0
        outcome = self.routing_table.add(peer, now)
        if outcome.result is AddResult.ADDED and was_empty and self.config.auto_refresh:
            # A table that was empty (at start, or after every peer left) gets a self lookup
            # soon: one peer is enough to find our neighbourhood.
            self._initial_refresh_at = now + INITIAL_REFRESH_DELAY
        if outcome.check is not None:
            self._probing.add(outcome.check)
        return outcome.check

    def _liveness_checks(self, now: float) -> CheckLiveness | None:
        """The periodic check's next round: the peers silent for longest (beyond the grace
        period), as many as fit under ``max_liveness_checks`` in flight."""
        cfg = self.config
        self._liveness_at = now + cfg.liveness_interval
        room = cfg.max_liveness_checks - len(self._probing)
        if room <= 0:
            return None
        peers = self.routing_table.unanswered_since(now - cfg.liveness_grace, room, self._probing)
        if not peers:
            return None
        self._probing.update(peers)
        return CheckLiveness(tuple(peers))

    def lookup_seeds(self, key: bytes, connected: Callable[[], Iterable[PeerID]]) -> list[PeerID]:
        """Where a lookup for ``key`` starts: the k closest peers of our table, else (a table
        not filled yet) the ``connected()`` peers that speak kad."""
        seeds = self.routing_table.closest(kad_key(key), self.config.k)
        if not seeds:
            seeds = [p for p in connected() if self.speaks_kad(p)]
        return seeds

    def lookup_ran(self, key: bytes, now: float) -> None:
        """Any lookup counts as a refresh of its key's bucket (and a self lookup as such)."""
        self.routing_table.mark_key_refreshed(kad_key(key), now)
        if key == self.local.to_bytes():
            self._self_lookup_at = now

    # -- answers to our requests -------------------------------------------------------------

    def check_answer(self, peer: PeerID, request: kad_pb2.Message, resp: kad_pb2.Message) -> None:
        """Raise :class:`KadProtocolError` for an answer of another type than the request."""
        if resp.type != request.type:
            raise KadProtocolError(
                f"{peer} answered {m.type_name(request.type)} with {m.type_name(resp.type)}"
            )

    def closer_peers(self, resp: kad_pb2.Message) -> list[PeerInfo]:
        """The closer peers an answer names (never ourselves); malformed entries are counted."""
        infos, bad = m.peers_from_pb(
            resp.closerPeers,
            max_peers=self.config.max_peers_per_answer,
            max_addrs=self.config.max_addrs_per_peer,
        )
        if bad:
            self.count("bad peer entries", bad)
        return [i for i in infos if i.peer != self.local]

    def provider_peers(self, resp: kad_pb2.Message) -> list[PeerInfo]:
        infos, bad = m.peers_from_pb(
            resp.providerPeers,
            max_peers=self.config.max_peers_per_answer,
            max_addrs=self.config.max_addrs_per_peer,
        )
        if bad:
            self.count("bad peer entries", bad)
        return infos

    # -- the server ---------------------------------------------------------------------------

    def handle_request(
        self, peer: PeerID, msg: kad_pb2.Message, wall: float
    ) -> kad_pb2.Message | None:
        """Answer one request from ``peer`` (None: no answer, as for ADD_PROVIDER).

        Raises :class:`KadError` for a request that cannot be served (the adapter resets the
        stream)."""
        self.count("received " + m.type_name(msg.type))
        if len(msg.key) > self.config.max_key_size:
            raise KadProtocolError(
                f"key of {len(msg.key)} bytes exceeds {self.config.max_key_size}"
            )
        t = msg.type
        if t == m.PING:
            return m.request(m.PING, b"")
        if not msg.key:
            raise KadProtocolError(f"{m.type_name(t)} without a key")
        key = bytes(msg.key)
        if t == m.FIND_NODE:
            resp = m.request(m.FIND_NODE, key)
            entries = self._closer_peers(key, peer)
            target = self._known_target(key, peer)
            # (a target in our table is named already: at distance 0, it is the closest)
            if target is not None and target not in self.routing_table:
                entry = self._peer_entry(m.CLOSER_PEERS_TAG, target)
                if entry is not None:
                    entries.append(entry)
            resp.MergeFromString(b"".join(entries))
            return resp
        if t == m.GET_VALUE:
            return self._get_value_answer(peer, key, wall)
        if t == m.PUT_VALUE:
            return self._put_value_answer(peer, key, msg, wall)
        if t == m.ADD_PROVIDER:
            self._add_provider(peer, key, msg, wall)
            return None
        if t == m.GET_PROVIDERS:
            return self._get_providers_answer(peer, key, wall)
        raise KadProtocolError(f"unsupported message type {t}")  # pragma: no cover

    def self_info(self) -> PeerInfo:
        return PeerInfo(self.local, list(self.peers.self_addrs()))

    def _peer_entry(self, tag: bytes, peer: PeerID) -> bytes | None:
        """``peer`` with its addresses as an entry of an answer's peer list ``tag``
        (:func:`~p2pnet.kad.messages.encode_peer_entry`); None when no address is known."""
        if peer == self.local:
            return m.encode_peer_entry(
                tag,
                peer.to_bytes(),
                [a.to_bytes() for a in self.peers.self_addrs()[: self.config.max_addrs_per_peer]],
                kad_pb2.Message.CONNECTED,
            )
        return self._remote_entry(tag, peer)

    def _remote_entry(self, tag: bytes, peer: PeerID) -> bytes | None:
        """:meth:`_peer_entry` of another peer than ourselves (cached: :class:`PeerEntries`)."""
        peers = self.peers
        addrs = peers.addr_bytes(peer)
        if not addrs:
            return None
        conn = (
            kad_pb2.Message.CONNECTED if peers.is_connected(peer) else kad_pb2.Message.NOT_CONNECTED
        )
        return tag + self._entries.encoded(peer, addrs, conn)

    def _known_target(self, key: bytes, requester: PeerID) -> PeerID | None:
        """FIND_NODE for a peer we know an address of (say a connected client, which is in no
        routing table): name it too, as go does, so that clients can be found."""
        try:
            target = PeerID.from_bytes(key)
        except (P2PError, ValueError):
            return None
        if target in (requester, self.local):
            return None
        return target

    def _closer_peers(self, key: bytes, requester: PeerID) -> list[bytes]:
        """The k closest peers of our table to ``key`` (never the requester), with addresses,
        as closerPeers entries; ourselves too when the key is our own peer ID (as js does)."""
        entries: list[bytes] = []
        tag = m.CLOSER_PEERS_TAG
        if key == self.local.to_bytes():
            entry = self._peer_entry(tag, self.local)
            if entry is not None:
                entries.append(entry)
        for p in self.routing_table.closest(kad_key(key), self.config.k, exclude=(requester,)):
            entry = self._remote_entry(tag, p)  # (never ourselves: not in our table)
            if entry is not None:
                entries.append(entry)
        return entries

    def _get_value_answer(self, peer: PeerID, key: bytes, wall: float) -> kad_pb2.Message:
        resp = m.request(m.GET_VALUE, key)
        rec = self._local_record(key, wall)
        if rec is not None:
            resp.record.CopyFrom(m.make_record(key, rec.value, format_rfc3339(rec.time_received)))
        else:
            pk = self._public_key_value(key)
            if pk is not None:
                resp.record.CopyFrom(m.make_record(key, pk, format_rfc3339(wall)))
        resp.MergeFromString(b"".join(self._closer_peers(key, peer)))
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
        return self.peers.public_key(target)

    def _put_value_answer(
        self, peer: PeerID, key: bytes, msg: kad_pb2.Message, wall: float
    ) -> kad_pb2.Message:
        if not msg.HasField("record"):
            raise KadProtocolError("PUT_VALUE without a record")
        if bytes(msg.record.key) != key:
            raise KadProtocolError("PUT_VALUE record key differs from the message key")
        value = bytes(msg.record.value)
        self.validator.validate(key, value)
        # the sender's quota decides what (of its own, or of the biggest holder) makes room
        quota = self.record_quota
        for old in quota.admit(peer, key, len(self.records), self.config.max_records):
            assert isinstance(old, bytes)
            self.records.delete(old)
            quota.removed(old)
        self.store_local(key, value, wall)
        quota.stored(peer, key)
        # The spec's answer: the message type, the key and the record (key, value and the time
        # it was received). Never the request as received: unknown fields a peer added (py-libp2p
        # puts its signed peer record in field 11) would make it read our answer as a refusal.
        resp = m.request(m.PUT_VALUE, key)
        resp.record.CopyFrom(m.make_record(key, value, msg.record.timeReceived))
        return resp

    def _add_provider(self, peer: PeerID, key: bytes, msg: kad_pb2.Message, wall: float) -> None:
        expires = wall + self.config.provider_ttl
        for info in self.provider_peers(msg):
            if info.peer != peer:  # only the sender may announce itself
                log.debug("%s tried to add %s as a provider: ignored", peer, info.peer)
                continue
            quota = self.provider_quota
            new_key = not self.providers.get_providers(key, wall)
            size = len(self.providers) if new_key else 0
            for old in quota.admit(peer, (key, peer), size, self.config.max_provider_keys):
                assert isinstance(old, tuple)
                self.providers.remove_provider(old[0], old[1])
                quota.removed(old)
            self.providers.add_provider(key, peer, expires, now=wall)
            quota.stored(peer, (key, peer))

    def _get_providers_answer(self, peer: PeerID, key: bytes, wall: float) -> kad_pb2.Message:
        resp = m.request(m.GET_PROVIDERS, key)
        tag = m.PROVIDER_PEERS_TAG
        entries: list[bytes] = []
        for prov in self.providers.get_providers(key, wall)[: self.config.max_peers_per_answer]:
            entry = self._peer_entry(tag, prov)
            # a provider whose addresses we no longer know is still named
            entries.append(
                entry
                if entry is not None
                else m.encode_peer_entry(tag, prov.to_bytes(), [], kad_pb2.Message.NOT_CONNECTED)
            )
        entries += self._closer_peers(key, peer)
        resp.MergeFromString(b"".join(entries))
        return resp

    # -- records ------------------------------------------------------------------------------

    def _local_record(self, key: bytes, wall: float) -> StoredRecord | None:
        """Our record of ``key`` if still young enough (else it is dropped).

        A record was validated once, before it was stored (PUT_VALUE, our own put, a better
        record a GET found), and is trusted afterwards: validation is a pure function of key
        and value (for ``/agent/`` records a signature check), so only what changes with time,
        the record's age, is checked again here."""
        rec = self.records.get(key)
        if rec is None:
            return None
        if wall - rec.time_received > self.config.max_record_age:
            self.records.delete(key)
            return None
        return rec

    def local_value(self, key: bytes, wall: float) -> bytes | None:
        rec = self._local_record(key, wall)
        return None if rec is None else rec.value

    def store_local(self, key: bytes, value: bytes, wall: float) -> None:
        """Store a record the caller validated, unless we hold a better one (then InvalidRecord,
        as go). Raises :class:`StoreFull` when the store cannot take a new key."""
        existing = self.local_value(key, wall)
        if existing is not None and existing != value:
            if self.validator.select(key, [value, existing], validated=True) != 0:
                raise InvalidRecord("a better record for this key is already stored")
        self.records.put(StoredRecord(key, value, wall))

    def replace_local(self, key: bytes, value: bytes, wall: float) -> None:
        """A GET found a better record than ours: keep that one instead."""
        if self.records.get(key) is not None:
            self.records.put(StoredRecord(key, value, wall))

    def value_query(self, key: bytes, quorum: int, wall: float) -> ValueQuery:
        """Start collecting GET_VALUE answers for ``key`` (our own record counts as one)."""
        self.validator.validator_for(key)  # refuse unknown namespaces up front
        return ValueQuery(key, quorum, self.validator, self.local_value(key, wall))

    # -- providers ----------------------------------------------------------------------------

    def provide_locally(self, key: bytes, wall: float) -> None:
        """We provide ``key``: store it and remember to republish it."""
        if not key or len(key) > self.config.max_key_size:
            raise ValueError(f"provider key must be 1..{self.config.max_key_size} bytes")
        self.providers.add_provider(key, self.local, wall + self.config.provider_ttl, now=wall)
        self._provided[key] = wall

    def stop_providing(self, key: bytes) -> None:
        self._provided.pop(key, None)
        self.providers.remove_provider(key, self.local)

    def provider_query(self, key: bytes, count: int, wall: float) -> ProviderQuery:
        """Start collecting providers of ``key``; the ones we know come first."""
        query = ProviderQuery(count)
        for peer in self.providers.get_providers(key, wall):
            if peer == self.local:
                query.add(self.self_info())
            else:
                query.add(PeerInfo(peer, self.peers.addrs(peer)))
        return query

    # -- timers -------------------------------------------------------------------------------

    def get_timer(self, now: float) -> float:
        """When :meth:`handle_timer` has something to do next (monotonic time)."""
        due = self._cleanup_at
        if len(self.routing_table) > 0:
            due = min(due, self._liveness_at)
        if self.config.auto_refresh and len(self.routing_table) > 0:
            if self._initial_refresh_at is not None:
                due = min(due, self._initial_refresh_at)
            else:
                due = min(due, self._next_refresh(now))
        return due

    def _next_refresh(self, now: float) -> float:
        interval = self.config.refresh_interval
        due = self._self_lookup_at + interval
        for cpl in range(self._deepest_refreshable() + 1):
            due = min(due, self.routing_table.last_refresh(cpl) + interval)
        return due

    def _deepest_refreshable(self) -> int:
        sizes = self.routing_table.bucket_sizes()
        return min(max(sizes), self.config.max_refresh_cpl) if sizes else -1

    def handle_timer(self, now: float, wall: float) -> list[Action]:
        """Drop expired records and providers, and say which refreshes, liveness checks and
        republishing are due: the self lookup after a table was empty, then every
        ``refresh_interval`` the self lookup and every bucket (up to the deepest non-empty
        one) not refreshed within it; every ``liveness_interval`` a check of the peers silent
        for ``liveness_grace``."""
        actions: list[Action] = []
        if now >= self._liveness_at and len(self.routing_table) > 0:
            check = self._liveness_checks(now)
            if check is not None:
                actions.append(check)
        if now >= self._cleanup_at:
            self._cleanup_at = now + self.config.cleanup_interval
            n = self.records.gc(wall, self.config.max_record_age) + self.providers.gc(wall)
            if n:
                log.debug("dropped %d expired records/providers", n)
            due = [
                k
                for k, t in self._provided.items()
                if wall - t >= self.config.provider_republish_interval
            ]
            if due:
                actions.append(Republish(tuple(due)))
        if not self.config.auto_refresh or len(self.routing_table) == 0:
            return actions
        if self._initial_refresh_at is not None:
            if now < self._initial_refresh_at:
                return actions
            self._initial_refresh_at = None
            actions.append(Refresh())
        elif now >= self._next_refresh(now):
            actions.append(Refresh())
        return actions

    def refresh_plan(self, now: float, *, force: bool, sparse_only: bool = False) -> list[int]:
        """The buckets a refresh looks up after its self lookup: those (up to the deepest
        non-empty one) not refreshed within ``refresh_interval`` (``force``: all of them;
        ``sparse_only``: only those holding fewer than k peers up to our k-th closest peer,
        which is what a newcomer lacks after its self lookup). They count as refreshed from
        now on, and so do the deeper ones (the self lookup covered them)."""
        table = self.routing_table
        interval = 0.0 if force else self.config.refresh_interval
        deepest = self._deepest_refreshable()
        cpls = [c for c in range(deepest + 1) if now - table.last_refresh(c) >= interval]
        if sparse_only:
            near = table.closest(table.local_key, table.k)
            frontier = table.cpl(near[-1]) if len(near) >= table.k else deepest
            cpls = [c for c in cpls if c <= frontier and len(table.bucket(c)) < table.k]
        # The self lookup covers the buckets deeper than the deepest non-empty one.
        for c in [*cpls, *range(deepest + 1, self.config.max_refresh_cpl + 1)]:
            table.mark_refreshed(c, now)
        return cpls


# -- collecting answers of value and provider lookups -----------------------------------------


@dataclass
class PutResult:
    """The outcome of storing a record (PUT_VALUE) or a provider record (ADD_PROVIDER) on the
    k closest peers."""

    key: bytes
    #: Peers that stored it (for ADD_PROVIDER, which has no answer: peers that received it).
    stored: list[PeerID] = field(default_factory=list)
    #: Peers among the closest that refused it or could not be reached.
    failed: list[PeerID] = field(default_factory=list)


@dataclass
class ValueResult:
    """The outcome of a GET_VALUE lookup."""

    key: bytes
    value: bytes
    #: The peer whose answer held the best record first (None: our own record).
    peer: PeerID | None
    #: Every peer that answered with the best record (None for our own).
    holders: list[PeerID | None] = field(default_factory=list)
    #: Peers that answered with an older record, or none although among the closest: the
    #: best record is sent to them (entry correction).
    outdated: list[PeerID] = field(default_factory=list)


class ValueQuery:
    """GET_VALUE answers for one key: validation, quorum, selection of the best record."""

    def __init__(
        self, key: bytes, quorum: int, validator: NamespacedValidator, local: bytes | None
    ) -> None:
        self.key = key
        self.quorum = quorum
        self.validator = validator
        self.local = local
        self.values: list[tuple[PeerID | None, bytes]] = []
        self.without: list[PeerID] = []
        if local is not None:
            self.values.append((None, local))

    @property
    def done(self) -> bool:
        """Quorum reached (quorum 0: never, ask until the lookup ends)."""
        return self.quorum > 0 and len(self.values) >= self.quorum

    def on_answer(self, peer: PeerID, resp: kad_pb2.Message) -> bool:
        """Take one answer; returns :attr:`done`. Raises :class:`InvalidRecord` when the answer
        holds a record that is invalid or for another key (the peer is at fault)."""
        if not resp.HasField("record"):
            self.without.append(peer)
            return self.done
        rec = resp.record
        if rec.key != self.key:
            raise InvalidRecord(f"answer holds a record for another key {rec.key[:40]!r}")
        self.validator.validate(self.key, rec.value)
        self.values.append((peer, bytes(rec.value)))
        return self.done

    def result(self, closest: Collection[PeerID]) -> ValueResult | None:
        """The best record (None when no valid one was found), and who must be corrected:
        peers that sent an older record, and peers among ``closest`` that had none."""
        if not self.values:
            return None
        # every value was validated on arrival (on_answer), our own one when stored
        index = self.validator.select(self.key, [v for _, v in self.values], validated=True)
        peer, best = self.values[index]
        holders = [p for p, v in self.values if v == best]
        outdated = [p for p, v in self.values if p is not None and v != best]
        outdated += [p for p in self.without if p in closest and p not in outdated]
        return ValueResult(self.key, best, peer, holders, outdated)


class ProviderQuery:
    """Providers found so far (first seen first; an entry without addresses is completed by a
    later one with addresses)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.found: dict[PeerID, PeerInfo] = {}
        #: Which peer named each provider first (None: known locally).
        self.named_by: dict[PeerID, PeerID | None] = {}

    def add(self, info: PeerInfo, sender: PeerID | None = None) -> None:
        known = self.found.get(info.peer)
        if known is None:
            self.found[info.peer] = info
            self.named_by[info.peer] = sender
        elif info.addrs and not known.addrs:
            self.found[info.peer] = info

    @property
    def done(self) -> bool:
        return len(self.found) >= self.count

    def on_answer(self, peer: PeerID, providers: Iterable[PeerInfo]) -> bool:
        for info in providers:
            self.add(info, peer)
        return self.done

    def result(self) -> list[PeerInfo]:
        return list(self.found.values())[: self.count]


__all__ = [
    "INITIAL_REFRESH_DELAY",
    "Action",
    "CheckLiveness",
    "Failure",
    "KadBehaviour",
    "PeerView",
    "ProviderQuery",
    "PutResult",
    "Refresh",
    "Republish",
    "ValueQuery",
    "ValueResult",
]
