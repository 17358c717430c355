"""The sans-IO kad behaviour as in-memory client/server pairs at the byte level: no sockets, no
event loop, no clock (``now`` is passed in)."""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Collection
from pathlib import Path

import pytest
from multiaddr import Multiaddr

from p2pnet.kad import messages as m
from p2pnet.kad.behaviour import (
    INITIAL_REFRESH_DELAY,
    CheckLiveness,
    Failure,
    KadBehaviour,
    Refresh,
    Republish,
)
from p2pnet.kad.config import KadConfig
from p2pnet.kad.errors import InvalidRecord, KadProtocolError
from p2pnet.kad.peer_entries import PeerEntries
from p2pnet.kad.providers import InMemoryProviderStore
from p2pnet.kad.records import FunctionValidator, InMemoryRecordStore, NamespacedValidator
from p2pnet.kad.routing_table import kad_key
from p2pnet.peer.peer_id import PeerID
from p2pnet.wire.framing import encode_length_prefixed
from p2pnet.wire.varint import decode_uvarint

PROTO = "/ipfs/kad/1.0.0"
WALL = 1_800_000_000.0


def peer(i: int) -> PeerID:
    return PeerID(b"\x12\x20" + hashlib.sha256(b"peer %d" % i).digest())


class Peers:
    """A PeerView: a dict of addresses, protocols and connections."""

    def __init__(self, own: list[Multiaddr]) -> None:
        self.own = own
        self.known: dict[PeerID, list[Multiaddr]] = {}
        self.protos: dict[PeerID, set[str]] = {}
        self.connected: set[PeerID] = set()
        self.keys: dict[PeerID, bytes] = {}

    def self_addrs(self) -> list[Multiaddr]:
        return self.own

    def addrs(self, peer: PeerID) -> list[Multiaddr]:
        return self.known.get(peer, [])

    def addr_bytes(self, peer: PeerID) -> tuple[bytes, ...]:
        return tuple(a.to_bytes() for a in self.addrs(peer))

    def is_connected(self, peer: PeerID) -> bool:
        return peer in self.connected

    def protocols(self, peer: PeerID) -> Collection[str]:
        return self.protos.get(peer, set())

    def public_key(self, peer: PeerID) -> bytes | None:
        return self.keys.get(peer)

    def server(self, p: PeerID, port: int) -> None:
        self.known[p] = [Multiaddr(f"/ip4/10.0.0.1/tcp/{port}")]
        self.protos[p] = {PROTO}


def behaviour(local: PeerID, **config: object) -> tuple[KadBehaviour, Peers]:
    peers = Peers([Multiaddr("/ip4/10.0.0.2/tcp/4001")])
    validator = NamespacedValidator({"test": FunctionValidator(lambda k, v: None, max_index)})
    b = KadBehaviour(
        local,
        KadConfig(**config),  # type: ignore[arg-type]
        peers,
        records=InMemoryRecordStore(),
        providers=InMemoryProviderStore(),
        validator=validator,
        now=0.0,
    )
    return b, peers


def max_index(key: bytes, values: object) -> int:
    vals = list(values)  # type: ignore[call-overload]
    return max(range(len(vals)), key=lambda i: vals[i])


def unframe(wire: bytes) -> bytes:
    """The one length-prefixed message ``wire`` holds."""
    decoded = decode_uvarint(wire)
    assert decoded is not None
    length, used = decoded
    assert len(wire) == used + length
    return wire[used:]


def exchange(server: KadBehaviour, client: PeerID, request: bytes) -> bytes:
    """What travels back on the wire for the framed ``request`` bytes (b"": no answer)."""
    resp = server.handle_request(client, m.decode(unframe(request)), WALL)
    return b"" if resp is None else encode_length_prefixed(m.encode(resp))


def test_find_node_answer_bytes() -> None:
    server, view = behaviour(peer(0))
    for i in range(1, 6):
        view.server(peer(i), 4000 + i)
        server.peer_identified(peer(i), 1.0)
    wire = exchange(server, peer(1), encode_length_prefixed(m.encode(m.find_node(b"key"))))
    resp = m.decode(unframe(wire))
    assert resp.type == m.FIND_NODE and resp.key == b"key"
    named = {PeerID.from_bytes(p.id) for p in resp.closerPeers}
    assert named == {peer(i) for i in range(2, 6)}  # never the requester
    client, _ = behaviour(peer(1))
    client.check_answer(peer(0), m.find_node(b"key"), resp)
    assert {i.peer for i in client.closer_peers(resp)} == named
    with pytest.raises(KadProtocolError, match="answered FIND_NODE with GET_VALUE"):
        client.check_answer(peer(0), m.find_node(b"key"), m.get_value(b"key"))


def test_answers_peer_lists_are_the_bytes_protobuf_makes() -> None:
    """Answers' peer lists are encoded by hand (encode_peer_entry): byte for byte what the
    protobuf API builds, for connected and unconnected peers, ourselves, a capped address
    list, a known target outside the table and a provider without addresses."""
    server, view = behaviour(peer(0), k=4, max_addrs_per_peer=2)
    for i in range(1, 8):
        view.server(peer(i), 4000 + i)
        server.peer_identified(peer(i), 1.0)
    view.known[peer(3)] = [Multiaddr(f"/ip4/10.0.0.3/tcp/{p}") for p in (1, 2, 3)]
    view.connected.update({peer(2), peer(5)})
    view.known[peer(50)] = [Multiaddr("/ip4/10.9.9.9/udp/1/quic-v1")]  # known, not in table

    def entries(names: list[PeerID]) -> list[m.kad_pb2.Message.Peer]:
        out = []
        for p in names:
            addrs = view.own if p == peer(0) else view.addrs(p)
            conn = m.kad_pb2.Message.CONNECTED if p == peer(0) or p in view.connected else 0
            out.append(m.peer_to_pb(m.PeerInfo(p, addrs[:2]), conn))
        return out

    def closest(key: bytes) -> list[PeerID]:
        return server.routing_table.closest(kad_key(key), 4, exclude=(peer(1),))

    for key, names in [
        (b"key", closest(b"key")),
        (peer(0).to_bytes(), [peer(0), *closest(peer(0).to_bytes())]),  # ourselves first
        (peer(50).to_bytes(), [*closest(peer(50).to_bytes()), peer(50)]),  # a known target
        (peer(2).to_bytes(), closest(peer(2).to_bytes())),  # a target in the table: once
    ]:
        resp = server.handle_request(peer(1), m.find_node(key), WALL)
        assert resp is not None
        want = m.find_node(key)
        want.closerPeers.extend(entries(names))
        assert m.encode(resp) == m.encode(want)
        assert any(p.connection == m.kad_pb2.Message.CONNECTED for p in resp.closerPeers)
    # providers: one with addresses, one whose addresses we no longer know (still named)
    server.providers.add_provider(b"cid", peer(4), WALL + 100, now=WALL)
    server.providers.add_provider(b"cid", peer(60), WALL + 100, now=WALL)
    resp = server.handle_request(peer(1), m.get_providers(b"cid"), WALL)
    assert resp is not None
    want = m.get_providers(b"cid")
    for prov in server.providers.get_providers(b"cid", WALL):
        want.providerPeers.append(m.peer_to_pb(m.PeerInfo(prov, view.addrs(prov)[:2]), 0))
    want.closerPeers.extend(entries(closest(b"cid")))
    assert m.encode(resp) == m.encode(want)
    assert len(resp.providerPeers) == 2 and len(resp.closerPeers) == 4


def test_answers_name_peers_as_they_are_now() -> None:
    """Encoded entries are reused from answer to answer, but a peer whose addresses or
    connectedness changed is named as it is now; the cache of entries stays bounded."""
    server, view = behaviour(peer(0), k=3)
    for i in range(1, 4):
        view.server(peer(i), 4000 + i)
        server.peer_identified(peer(i), 1.0)

    def named() -> dict[PeerID, tuple[list[bytes], int]]:
        resp = server.handle_request(peer(9), m.find_node(b"key"), WALL)
        assert resp is not None
        return {PeerID.from_bytes(p.id): (list(p.addrs), p.connection) for p in resp.closerPeers}

    assert named()[peer(2)] == ([view.known[peer(2)][0].to_bytes()], 0)
    view.known[peer(2)] = [Multiaddr("/ip4/10.7.7.7/tcp/7")]
    assert named()[peer(2)] == ([Multiaddr("/ip4/10.7.7.7/tcp/7").to_bytes()], 0)
    view.connected.add(peer(2))
    assert named()[peer(2)][1] == m.kad_pb2.Message.CONNECTED
    view.connected.discard(peer(2))
    assert named()[peer(2)][1] == 0
    view.known[peer(2)] = []  # no address left: not named
    assert peer(2) not in named()

    entries = PeerEntries(max_addrs=2, max_size=2)
    for i in range(5):
        entry = entries.encoded(peer(i), (b"a", b"b", b"c"), 0)
        assert entry == m.encode_peer(peer(i).to_bytes(), [b"a", b"b"], 0)
    assert len(entries) == 2


def test_put_value_answer_has_only_the_spec_fields() -> None:
    """py-libp2p adds its signed peer record as field 11; echoing the request verbatim made it
    read our answer as a refusal. The answer is type, key and record, nothing else."""
    server, _ = behaviour(peer(0))
    request = m.put_value(b"/test/k", b"value", "2026-01-01T00:00:00.000000000Z")
    extra = b"\x5a\x03abc"  # field 11, length-delimited, 3 bytes: unknown to the spec
    request.closerPeers.append(m.peer_to_pb(m.PeerInfo(peer(5))))
    wire = exchange(server, peer(1), encode_length_prefixed(m.encode(request) + extra))
    want = m.put_value(b"/test/k", b"value", "2026-01-01T00:00:00.000000000Z")
    assert wire == encode_length_prefixed(m.encode(want))
    rec = server.records.get(b"/test/k")
    assert rec is not None and rec.value == b"value" and rec.time_received == WALL


def test_add_provider_has_no_answer_and_only_the_sender_counts() -> None:
    server, _ = behaviour(peer(0))
    key = b"\x12\x20" + bytes(32)
    msg = m.add_provider(key, m.PeerInfo(peer(1), [Multiaddr("/ip4/1.2.3.4/tcp/1")]))
    msg.providerPeers.append(m.peer_to_pb(m.PeerInfo(peer(2))))  # someone else: ignored
    assert exchange(server, peer(1), encode_length_prefixed(m.encode(msg))) == b""
    assert server.providers.get_providers(key, WALL) == [peer(1)]
    assert server.providers.get_providers(key, WALL + server.config.provider_ttl) == []


def test_ping_and_malformed_requests() -> None:
    server, _ = behaviour(peer(0))
    pong = exchange(server, peer(1), encode_length_prefixed(m.encode(m.request(m.PING, b"x"))))
    assert m.decode(unframe(pong)).type == m.PING
    for bad in (m.find_node(b""), m.request(m.PUT_VALUE, b"/test/k"), m.find_node(b"k" * 2000)):
        with pytest.raises(KadProtocolError):
            server.handle_request(peer(1), bad, WALL)
    with pytest.raises(InvalidRecord, match="no validator for record namespace 'nope'"):
        server.handle_request(peer(1), m.put_value(b"/nope/k", b"v"), WALL)


def test_penalty_policy() -> None:
    b, view = behaviour(peer(0), max_failures=3)
    for i in (1, 2):
        view.server(peer(i), 4000 + i)
        b.peer_identified(peer(i), 0.0)
    b.request_failed(peer(1), Failure.PROTOCOL, 1.0)  # garbage: out at once
    assert peer(1) not in b.routing_table
    for t in (1.0, 2.0):
        b.request_failed(peer(2), Failure.TIMEOUT, t)
    assert peer(2) in b.routing_table
    b.peer_answered(peer(2), 3.0)  # an answer resets the count
    for t in (4.0, 5.0, 6.0):
        b.request_failed(peer(2), Failure.UNREACHABLE, t)
    assert peer(2) not in b.routing_table
    # a peer that stops advertising kad leaves; a non-kad peer never enters
    view.server(peer(3), 4003)
    b.peer_identified(peer(3), 7.0)
    view.protos[peer(3)] = set()
    b.peer_identified(peer(3), 8.0)
    assert peer(3) not in b.routing_table
    assert b.peer_answered(peer(3), 9.0) is None and peer(3) not in b.routing_table


def test_periodic_liveness_checks_are_bounded_and_evict_the_silent() -> None:
    """Issue 11: every ``liveness_interval`` the peers that have not answered for
    ``liveness_grace`` are checked, longest silent first, never more than
    ``max_liveness_checks`` in flight; a peer that fails its check leaves the table, one that
    answers (or answered a lookup meanwhile) stays and is not checked again for a while.
    Identify alone does not count as an answer."""
    b, view = behaviour(
        peer(0), auto_refresh=False, liveness_interval=60.0, liveness_grace=600.0,
        max_liveness_checks=3,
    )  # fmt: skip
    for i in range(1, 11):
        view.server(peer(i), 4000 + i)
        b.peer_identified(peer(i), float(i))  # peer(i) entered at time i
    assert b.get_timer(11.0) == 60.0
    assert b.handle_timer(60.0, WALL) == []  # nobody silent for 600 s yet
    assert b.get_timer(60.0) == 120.0
    b.peer_answered(peer(1), 500.0)  # answered a lookup: fresh
    b.peer_identified(peer(2), 500.0)  # identified again: still silent
    actions = b.handle_timer(660.0, WALL)
    assert actions == [CheckLiveness((peer(2), peer(3), peer(4)))]
    # the next round waits for room: three checks are still in flight
    assert b.handle_timer(720.0, WALL) == []
    b.liveness_result(peer(2), False, 721.0)  # dead: out
    b.liveness_result(peer(3), True, 721.0)  # alive: stays, not checked again soon
    assert peer(2) not in b.routing_table and peer(3) in b.routing_table
    assert b.handle_timer(780.0, WALL) == [CheckLiveness((peer(5), peer(6)))]
    for i in (4, 5, 6):
        b.liveness_result(peer(i), False, 781.0)
    assert b.handle_timer(840.0, WALL) == [CheckLiveness((peer(7), peer(8), peer(9)))]
    assert b.counters["liveness checks"] == 5 and b.counters["evicted by liveness check"] == 4
    # off: never
    off, view = behaviour(peer(0), auto_refresh=False, liveness_interval=0.0)
    view.server(peer(1), 4001)
    off.peer_identified(peer(1), 0.0)
    assert off.get_timer(0.0) == off.config.cleanup_interval
    assert off.handle_timer(1e9, WALL) == []


def test_value_query_selects_and_names_outdated_and_holders() -> None:
    b, _ = behaviour(peer(0))
    b.store_local(b"/test/k", b"b", WALL)
    q = b.value_query(b"/test/k", 0, WALL)
    for p, value in ((peer(1), b"a"), (peer(2), b"c"), (peer(3), b"c")):
        resp = m.get_value(b"/test/k")
        resp.record.CopyFrom(m.make_record(b"/test/k", value))
        q.on_answer(p, resp)
    q.on_answer(peer(4), m.get_value(b"/test/k"))  # no record
    q.on_answer(peer(5), m.get_value(b"/test/k"))
    result = q.result(closest={peer(4)})
    assert result is not None
    assert result.value == b"c" and result.peer == peer(2) and result.holders == [peer(2), peer(3)]
    assert result.outdated == [peer(1), peer(4)]  # peer(5) is not among the closest
    wrong = m.get_value(b"/test/k")
    wrong.record.CopyFrom(m.make_record(b"/test/other", b"z"))
    with pytest.raises(InvalidRecord, match="another key"):
        q.on_answer(peer(6), wrong)
    # our own record counts towards the quorum
    assert b.value_query(b"/test/k", 1, WALL).done


def test_a_record_is_validated_once_on_store_not_on_every_get() -> None:
    """Issue 11: validation (a signature check for agent records) runs when a record arrives;
    GETs of the stored record and a later PUT's selection against it do not validate it again.
    Only its age is checked again: an old record is no longer served."""
    calls: list[bytes] = []

    def validate(key: bytes, value: bytes) -> None:
        calls.append(value)
        if value == b"bad":
            raise InvalidRecord("bad value")

    b, _ = behaviour(peer(0))
    b.validator.register("count", FunctionValidator(validate, max_index))
    key = b"/count/k"
    b.handle_request(peer(1), m.put_value(key, b"v1"), WALL)
    assert calls == [b"v1"]
    for _ in range(5):
        resp = b.handle_request(peer(2), m.get_value(key), WALL + 1)
        assert resp is not None and resp.record.value == b"v1"
    assert b.local_value(key, WALL + 2) == b"v1"
    assert calls == [b"v1"]  # GETs validated nothing
    b.handle_request(peer(1), m.put_value(key, b"v2"), WALL + 3)  # better: replaces v1
    assert calls == [b"v1", b"v2"]  # only the new value, not the stored one again
    with pytest.raises(InvalidRecord):
        b.handle_request(peer(1), m.put_value(key, b"bad"), WALL + 4)
    assert b.local_value(key, WALL + 4) == b"v2"
    # a GET's answers are validated as they arrive, and the selection trusts that
    q = b.value_query(key, 0, WALL + 5)
    for p, value in ((peer(3), b"v3"), (peer(4), b"v1")):
        resp = m.get_value(key)
        resp.record.CopyFrom(m.make_record(key, value))
        q.on_answer(p, resp)
    result = q.result(closest=set())
    assert result is not None and result.value == b"v3"
    assert calls == [b"v1", b"v2", b"bad", b"v3", b"v1"]
    # what changes with time is checked on every read: the record's age
    assert b.local_value(key, WALL + 3 + b.config.max_record_age + 1) is None
    assert b.records.get(key) is None


def test_refresh_timer_after_empty_table_and_per_bucket() -> None:
    b, view = behaviour(
        peer(0), refresh_interval=600.0, cleanup_interval=3600.0, liveness_interval=0.0
    )
    assert b.get_timer(0.0) == 3600.0  # empty table: only the cleanup
    view.server(peer(1), 4001)
    b.peer_identified(peer(1), 10.0)
    assert b.get_timer(10.0) == 10.0 + INITIAL_REFRESH_DELAY
    assert b.handle_timer(10.5, WALL) == []
    assert b.handle_timer(11.0, WALL) == [Refresh()]
    cpls = b.refresh_plan(11.0, force=False)
    assert cpls == list(range(b.routing_table.cpl(peer(1)) + 1))
    b.lookup_ran(peer(0).to_bytes(), 11.0)
    assert b.get_timer(11.0) == 611.0
    assert b.handle_timer(300.0, WALL) == []
    # a lookup refreshes its bucket; the others are due at their own time
    b.lookup_ran(b.routing_table.random_key_for_cpl(0), 400.0)
    assert b.get_timer(400.0) == 611.0
    # every peer leaves, one comes back: the self lookup runs again soon
    b.request_failed(peer(1), Failure.PROTOCOL, 500.0)
    b.peer_identified(peer(1), 501.0)
    assert b.get_timer(501.0) == 501.0 + INITIAL_REFRESH_DELAY
    assert b.handle_timer(502.0, WALL) == [Refresh()]


def test_cleanup_and_republish_are_timed() -> None:
    b, _ = behaviour(peer(0), auto_refresh=False, cleanup_interval=100.0)
    b.provide_locally(b"\x12\x20" + bytes(32), WALL)
    b.store_local(b"/test/old", b"v", WALL - b.config.max_record_age - 1)
    assert b.handle_timer(100.0, WALL) == []
    assert b.records.get(b"/test/old") is None
    later = WALL + b.config.provider_republish_interval
    assert b.handle_timer(200.0, later) == [Republish((b"\x12\x20" + bytes(32),))]


CORES = ["behaviour", "routing_table", "query", "records", "providers", "messages", "cid"]


@pytest.mark.parametrize("name", CORES)
def test_kad_cores_import_no_asyncio_socket_or_time(name: str) -> None:
    path = Path(__file__).parent.parent / "p2pnet" / "kad" / f"{name}.py"
    tree = ast.parse(path.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "time", "trio"}, imported
