"""What a node knows about other peers: addresses (with TTLs), protocols, keys, metadata.

Modelled on go-libp2p's in-memory peerstore (core/peerstore, p2p/host/peerstore/pstoremem), with
the same TTL conventions so the host can follow go's lifecycle:

* on connect: ``add_addrs(peer, [remote_addr], CONNECTED_ADDR_TTL)``;
* on the last disconnect: ``update_addrs(peer, CONNECTED_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL)``;
* identify: ``set_protocols``, ``add_pubkey``, metadata, and ``add_addrs`` of the listen addrs;
* bootstrap peers: ``PERMANENT_ADDR_TTL``.

TTLs are seconds. :data:`PERMANENT_ADDR_TTL` and :data:`CONNECTED_ADDR_TTL` never expire; they are
distinct values (as in go) so that the connected addresses can later be moved to a finite TTL.

Bounds (a hostile or chatty network must not grow memory without limit):

* ``max_peers`` (default :data:`DEFAULT_MAX_PEERS`): when a new peer would exceed it, the least
  recently *updated* peer that is not *protected* is evicted. A peer is protected while it has an
  address with a connected or permanent TTL; if every peer is protected the store grows past the
  bound (connections are bounded elsewhere, by the connection manager).
* ``max_addrs_per_peer`` (default 64, go's ``defaultMaxAddrsPerPeer``): a new unprotected address
  beyond the cap replaces the one closest to expiry, or is dropped if all are protected.
* ``max_protocols_per_peer`` (default 128, go's protobook ``maxProtos``): more raises
  :class:`~p2pnet.errors.ProtocolError`, as go's ``errTooManyProtocols``.

The store is plain synchronous code for one event loop: no locks, no tasks. Time comes from the
injectable ``clock`` (``time.monotonic`` by default). Expired addresses are dropped lazily when
read, and by :meth:`PeerStore.gc`.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from multiaddr import Multiaddr

from p2pnet.errors import CryptoError, P2PError, PeerIDMismatch, ProtocolError
from p2pnet.peer.peer_id import PeerID

if TYPE_CHECKING:
    from p2pnet.crypto.keys import PublicKey

__all__ = [
    "ADDRESS_TTL",
    "AGENT_VERSION",
    "CONNECTED_ADDR_TTL",
    "DEFAULT_MAX_ADDRS_PER_PEER",
    "DEFAULT_MAX_PEERS",
    "DEFAULT_MAX_PROTOCOLS_PER_PEER",
    "LATENCY_EWMA_SMOOTHING",
    "OBSERVED_ADDR",
    "OWN_OBSERVED_ADDR_TTL",
    "PERMANENT_ADDR_TTL",
    "PROTOCOL_VERSION",
    "RECENTLY_CONNECTED_ADDR_TTL",
    "TEMP_ADDR_TTL",
    "PeerStore",
]

logger = logging.getLogger("p2pnet.peerstore")

# TTLs in seconds: go-libp2p core/peerstore/peerstore.go.
#: Addresses learnt from others (go ``AddressTTL``, 1 h).
ADDRESS_TTL: Final = 3600.0
#: Short-lived addresses (go ``TempAddrTTL``, 2 min).
TEMP_ADDR_TTL: Final = 120.0
#: Addresses of a peer we were connected to recently (go ``RecentlyConnectedAddrTTL``, 15 min).
RECENTLY_CONNECTED_ADDR_TTL: Final = 15 * 60.0
#: Our own addresses as observed by others (go ``OwnObservedAddrTTL``, 30 min).
OWN_OBSERVED_ADDR_TTL: Final = 30 * 60.0
#: Never expires (bootstrap peers). go: ``math.MaxInt64``.
PERMANENT_ADDR_TTL: Final = math.inf
#: Addresses of a connected peer: never expires, but distinct from permanent. go: ``MaxInt64 - 1``.
CONNECTED_ADDR_TTL: Final = float(2**62)

DEFAULT_MAX_PEERS: Final = 10_000
DEFAULT_MAX_ADDRS_PER_PEER: Final = 64
DEFAULT_MAX_PROTOCOLS_PER_PEER: Final = 128
#: Weight of a new sample in the latency moving average (go ``LatencyEWMASmoothing``).
LATENCY_EWMA_SMOOTHING: Final = 0.1

# Metadata keys written by the identify service.
AGENT_VERSION: Final = "agent_version"
PROTOCOL_VERSION: Final = "protocol_version"
OBSERVED_ADDR: Final = "observed_addr"

_P2P_CODE: Final = 421


# How many addresses of a live connection may exceed ``max_addrs_per_peer``.
_PROTECTED_EXTRA: Final = 16


@functools.lru_cache(maxsize=8192)
def _split_p2p(raw: bytes) -> tuple[Multiaddr | None, str | None] | None:
    """For an address ending in ``/p2p/<id>``: (the address without it, or None when nothing is
    left; the id text, or None when it does not parse). None for any other address.

    Parsing multiaddrs is slow in the multiaddr package and the same addresses arrive again and
    again (identify, DHT answers), so the result of this pure function is memoised."""
    addr = Multiaddr(raw)
    protos = addr.protocols()
    if not protos or protos[-1].code != _P2P_CODE:
        return None
    try:
        named: str | None = addr.value_for_protocol(_P2P_CODE)
    except Exception:  # the multiaddr package raises several unrelated types
        named = None
    bare = addr.decapsulate_code(_P2P_CODE)
    return (bare if bare.to_bytes() else None), named


def _is_protected_ttl(ttl: float) -> bool:
    return ttl >= CONNECTED_ADDR_TTL


class _AddrEntry:
    __slots__ = ("expiry", "ttl")

    def __init__(self, ttl: float, expiry: float) -> None:
        self.ttl = ttl
        self.expiry = expiry


class _PeerRecord:
    __slots__ = ("addrs", "encoded_addrs", "latency", "metadata", "protocols", "pubkey", "soonest")

    def __init__(self) -> None:
        #: Written only through :meth:`put_addr`, :meth:`drop_addr` and :meth:`clear_addrs`,
        #: which keep :attr:`encoded_addrs` true.
        self.addrs: dict[Multiaddr, _AddrEntry] = {}
        #: The addresses' bytes, made when first asked for after a change (a kad server names
        #: the same peers in answer after answer).
        self.encoded_addrs: tuple[bytes, ...] | None = None
        #: No address expires before this (a lower bound): reads skip the expiry scan until
        #: then (a kad answer reads the addresses of up to k peers).
        self.soonest = math.inf
        self.protocols: dict[str, None] = {}  # an ordered set
        self.pubkey: PublicKey | None = None
        self.metadata: dict[str, Any] = {}
        self.latency: float | None = None

    def protected(self) -> bool:
        return any(_is_protected_ttl(e.ttl) for e in self.addrs.values())

    def put_addr(self, addr: Multiaddr, entry: _AddrEntry) -> None:
        self.addrs[addr] = entry
        self.encoded_addrs = None

    def drop_addr(self, addr: Multiaddr) -> None:
        if self.addrs.pop(addr, None) is not None:
            self.encoded_addrs = None

    def clear_addrs(self) -> None:
        self.addrs.clear()
        self.encoded_addrs = None


class PeerStore:
    """Addresses, protocols, public keys and metadata per :class:`~p2pnet.peer.peer_id.PeerID`."""

    def __init__(
        self,
        *,
        max_peers: int = DEFAULT_MAX_PEERS,
        max_addrs_per_peer: int = DEFAULT_MAX_ADDRS_PER_PEER,
        max_protocols_per_peer: int = DEFAULT_MAX_PROTOCOLS_PER_PEER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_peers < 1 or max_addrs_per_peer < 1 or max_protocols_per_peer < 1:
            raise ValueError("peer store limits must be positive")
        self.max_peers = max_peers
        self.max_addrs_per_peer = max_addrs_per_peer
        self.max_protocols_per_peer = max_protocols_per_peer
        self._clock = clock
        # Least recently updated first: every write moves the peer to the end.
        self._peers: OrderedDict[PeerID, _PeerRecord] = OrderedDict()

    # -- records ---------------------------------------------------------------------------

    def _touch(self, peer: PeerID) -> _PeerRecord:
        """The record of ``peer`` for writing: created if needed, marked most recently updated."""
        rec = self._peers.get(peer)
        if rec is not None:
            self._peers.move_to_end(peer)
            return rec
        rec = _PeerRecord()
        self._peers[peer] = rec
        if len(self._peers) > self.max_peers:
            self._evict(keep=peer)
        return rec

    def _evict(self, keep: PeerID) -> None:
        """Drop least recently updated unprotected peers until within ``max_peers``."""
        excess = len(self._peers) - self.max_peers
        # Protected peers met on the way are moved to the end, so a long run of them at the front
        # is scanned once, not on every insertion.
        for _ in range(len(self._peers)):
            if excess <= 0:
                return
            peer, rec = next(iter(self._peers.items()))
            if peer == keep:
                self._peers.move_to_end(peer)
                continue
            if rec.protected():
                self._peers.move_to_end(peer)
                continue
            del self._peers[peer]
            excess -= 1
            logger.debug("peer store full: evicted %s", peer)
        if excess > 0:
            logger.debug("peer store over its bound: %d peers all protected", len(self._peers))

    def peers(self) -> list[PeerID]:
        """Every peer the store holds anything about."""
        return list(self._peers)

    def peers_with_addrs(self) -> list[PeerID]:
        """Peers with at least one unexpired address."""
        now = self._clock()
        return [
            p for p, rec in self._peers.items() if any(e.expiry > now for e in rec.addrs.values())
        ]

    def remove_peer(self, peer: PeerID) -> None:
        """Forget everything about ``peer`` (no error if unknown)."""
        self._peers.pop(peer, None)

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    # -- addresses -------------------------------------------------------------------------

    def _normalise(self, peer: PeerID, addr: Multiaddr) -> Multiaddr | None:
        """``addr`` without a trailing ``/p2p/<peer>``; ``None`` if it names another peer."""
        split = _split_p2p(addr.to_bytes())
        if split is None:
            return addr
        bare, named_text = split
        try:
            named = PeerID.from_string(named_text) if named_text is not None else None
        except P2PError:
            return None
        if named != peer:
            logger.debug("ignoring address %s: it names another peer than %s", addr, peer)
            return None
        return bare

    def add_addrs(self, peer: PeerID, addrs: Iterable[Multiaddr], ttl: float) -> None:
        """Add addresses valid for ``ttl`` seconds; known ones keep the longer TTL and expiry.

        ``ttl <= 0`` does nothing. An address ending in ``/p2p/<id>`` is stored without that
        suffix, and ignored if ``<id>`` is another peer.
        """
        if ttl <= 0:
            return
        now = self._clock()
        expiry = now + ttl
        rec = self._touch(peer)
        for raw in addrs:
            addr = self._normalise(peer, raw)
            if addr is None:
                continue
            entry = rec.addrs.get(addr)
            if entry is None:
                if self._make_room(rec, ttl, now):
                    rec.put_addr(addr, _AddrEntry(ttl, expiry))
                    if expiry < rec.soonest:
                        rec.soonest = expiry
            else:
                entry.ttl = max(entry.ttl, ttl)
                entry.expiry = max(entry.expiry, expiry)

    def add_addr(self, peer: PeerID, addr: Multiaddr, ttl: float) -> None:
        self.add_addrs(peer, (addr,), ttl)

    def set_addrs(self, peer: PeerID, addrs: Iterable[Multiaddr], ttl: float) -> None:
        """Set the TTL of addresses, replacing the previous one; ``ttl <= 0`` removes them."""
        now = self._clock()
        rec = self._peers.get(peer) if ttl <= 0 else self._touch(peer)
        if rec is None:
            return
        for raw in addrs:
            addr = self._normalise(peer, raw)
            if addr is None:
                continue
            if ttl <= 0:
                rec.drop_addr(addr)
                continue
            entry = rec.addrs.get(addr)
            if entry is not None:
                entry.ttl = ttl
                entry.expiry = now + ttl
            elif self._make_room(rec, ttl, now):
                rec.put_addr(addr, _AddrEntry(ttl, now + ttl))
            else:
                continue
            rec.soonest = min(rec.soonest, now + ttl)

    def update_addrs(self, peer: PeerID, old_ttl: float, new_ttl: float) -> None:
        """Give the addresses whose TTL is ``old_ttl`` the TTL ``new_ttl`` (``<= 0``: remove)."""
        rec = self._peers.get(peer)
        if rec is None:
            return
        now = self._clock()
        for addr, entry in list(rec.addrs.items()):
            if entry.ttl != old_ttl:
                continue
            if new_ttl <= 0:
                rec.drop_addr(addr)
            else:
                entry.ttl = new_ttl
                entry.expiry = now + new_ttl
                rec.soonest = min(rec.soonest, entry.expiry)
        self._peers.move_to_end(peer)

    def _make_room(self, rec: _PeerRecord, ttl: float, now: float) -> bool:
        """Whether a new address with ``ttl`` fits in ``rec``, evicting another if needed."""
        self._drop_expired(rec, now)
        if len(rec.addrs) < self.max_addrs_per_peer:
            return True
        # Addresses of a live connection may exceed the cap, but only by a few: they come from
        # the peer (identify, push) as much as from us, and must not grow without bound.
        if _is_protected_ttl(ttl) and len(rec.addrs) < self.max_addrs_per_peer + _PROTECTED_EXTRA:
            return True
        victim: Multiaddr | None = None
        victim_expiry = math.inf
        for addr, entry in rec.addrs.items():
            if not _is_protected_ttl(entry.ttl) and entry.expiry < victim_expiry:
                victim, victim_expiry = addr, entry.expiry
        if victim is None:
            return False
        rec.drop_addr(victim)
        return True

    @staticmethod
    def _drop_expired(rec: _PeerRecord, now: float) -> None:
        if now < rec.soonest:
            return
        for addr in [a for a, e in rec.addrs.items() if e.expiry <= now]:
            rec.drop_addr(addr)
        rec.soonest = min((e.expiry for e in rec.addrs.values()), default=math.inf)

    def addrs(self, peer: PeerID) -> list[Multiaddr]:
        """The unexpired addresses of ``peer``, in the order they were first added."""
        rec = self._peers.get(peer)
        if rec is None:
            return []
        self._drop_expired(rec, self._clock())
        return list(rec.addrs)

    def addr_bytes(self, peer: PeerID) -> tuple[bytes, ...]:
        """:meth:`addrs` as binary multiaddrs (what answers carry); made once per change of the
        peer's addresses."""
        rec = self._peers.get(peer)
        if rec is None:
            return ()
        self._drop_expired(rec, self._clock())
        encoded = rec.encoded_addrs
        if encoded is None:
            encoded = rec.encoded_addrs = tuple([a.to_bytes() for a in rec.addrs])
        return encoded

    def addr_ttl(self, peer: PeerID, addr: Multiaddr) -> float | None:
        """The TTL an unexpired address was stored with, or ``None``."""
        rec = self._peers.get(peer)
        if rec is None:
            return None
        entry = rec.addrs.get(addr)
        if entry is None or entry.expiry <= self._clock():
            return None
        return entry.ttl

    def clear_addrs(self, peer: PeerID) -> None:
        rec = self._peers.get(peer)
        if rec is not None:
            rec.clear_addrs()

    def gc(self) -> int:
        """Drop expired addresses of every peer; returns how many were dropped."""
        now = self._clock()
        dropped = 0
        for rec in self._peers.values():
            before = len(rec.addrs)
            self._drop_expired(rec, now)
            dropped += before - len(rec.addrs)
        return dropped

    def is_protected(self, peer: PeerID) -> bool:
        """Whether ``peer`` has a connected or permanent address (and so is never evicted)."""
        rec = self._peers.get(peer)
        return rec is not None and rec.protected()

    # -- protocols -------------------------------------------------------------------------

    def _check_protocols(self, count: int) -> None:
        if count > self.max_protocols_per_peer:
            raise ProtocolError(
                f"peer announces {count} protocols, more than {self.max_protocols_per_peer}"
            )

    def set_protocols(self, peer: PeerID, protocols: Iterable[str]) -> None:
        """Replace the protocols of ``peer``."""
        new = dict.fromkeys(protocols)
        self._check_protocols(len(new))
        self._touch(peer).protocols = new

    def add_protocols(self, peer: PeerID, protocols: Iterable[str]) -> None:
        rec = self._peers.get(peer)
        merged = dict(rec.protocols) if rec is not None else {}
        merged.update(dict.fromkeys(protocols))
        self._check_protocols(len(merged))
        self._touch(peer).protocols = merged

    def remove_protocols(self, peer: PeerID, protocols: Iterable[str]) -> None:
        rec = self._peers.get(peer)
        if rec is None:
            return
        for proto in protocols:
            rec.protocols.pop(proto, None)
        self._peers.move_to_end(peer)

    def get_protocols(self, peer: PeerID) -> list[str]:
        """The protocols of ``peer``, in the order they were announced."""
        rec = self._peers.get(peer)
        return list(rec.protocols) if rec is not None else []

    def supports_protocols(self, peer: PeerID, protocols: Iterable[str]) -> list[str]:
        """Those of ``protocols`` that ``peer`` supports, in the order given."""
        rec = self._peers.get(peer)
        if rec is None:
            return []
        return [p for p in protocols if p in rec.protocols]

    def first_supported_protocol(self, peer: PeerID, protocols: Iterable[str]) -> str | None:
        rec = self._peers.get(peer)
        if rec is None:
            return None
        return next((p for p in protocols if p in rec.protocols), None)

    def peers_with_protocol(self, protocol: str) -> list[PeerID]:
        """Every peer known to support ``protocol``."""
        return [p for p, rec in self._peers.items() if protocol in rec.protocols]

    # -- keys ------------------------------------------------------------------------------

    def add_pubkey(self, peer: PeerID, key: PublicKey) -> None:
        """Store the key of ``peer``; :class:`PeerIDMismatch` if it is not that peer's key."""
        rec = self._peers.get(peer)
        if rec is not None and rec.pubkey is not None and rec.pubkey == key:
            return  # checked when it was stored (each connection and identify brings it again)
        if not peer.matches_public_key(key):
            raise PeerIDMismatch(f"public key does not belong to peer {peer}")
        self._touch(peer).pubkey = key

    def pubkey(self, peer: PeerID) -> PublicKey | None:
        """The stored key, or the key embedded in an identity peer id, or ``None``."""
        rec = self._peers.get(peer)
        if rec is not None and rec.pubkey is not None:
            return rec.pubkey
        try:
            return peer.extract_public_key()
        except CryptoError:
            return None

    # -- metadata --------------------------------------------------------------------------

    def put_metadata(self, peer: PeerID, key: str, value: Any) -> None:
        """Store any value under ``key`` for ``peer``."""
        self._touch(peer).metadata[key] = value

    def get_metadata(self, peer: PeerID, key: str, default: Any = None) -> Any:
        rec = self._peers.get(peer)
        if rec is None:
            return default
        return rec.metadata.get(key, default)

    def agent_version(self, peer: PeerID) -> str | None:
        value = self.get_metadata(peer, AGENT_VERSION)
        return value if isinstance(value, str) else None

    def protocol_version(self, peer: PeerID) -> str | None:
        value = self.get_metadata(peer, PROTOCOL_VERSION)
        return value if isinstance(value, str) else None

    def observed_addr(self, peer: PeerID) -> Multiaddr | None:
        """The address ``peer`` told us it sees us at (identify ``observedAddr``)."""
        value = self.get_metadata(peer, OBSERVED_ADDR)
        return value if isinstance(value, Multiaddr) else None

    def set_agent_version(self, peer: PeerID, version: str) -> None:
        self.put_metadata(peer, AGENT_VERSION, version)

    def set_protocol_version(self, peer: PeerID, version: str) -> None:
        self.put_metadata(peer, PROTOCOL_VERSION, version)

    def set_observed_addr(self, peer: PeerID, addr: Multiaddr) -> None:
        self.put_metadata(peer, OBSERVED_ADDR, addr)

    # -- latency ---------------------------------------------------------------------------

    def record_latency(self, peer: PeerID, seconds: float) -> None:
        """Fold a round-trip sample into the peer's moving average (go's EWMA, weight 0.1)."""
        rec = self._touch(peer)
        if rec.latency is None:
            rec.latency = seconds
        else:
            rec.latency = (
                LATENCY_EWMA_SMOOTHING * seconds + (1 - LATENCY_EWMA_SMOOTHING) * rec.latency
            )

    def latency(self, peer: PeerID) -> float | None:
        rec = self._peers.get(peer)
        return rec.latency if rec is not None else None
