"""identify: the pure build/parse/apply functions, and re-running identify through Node."""

from __future__ import annotations

import pytest
from multiaddr import Multiaddr

from p2pnet.crypto.keys import KeyPair
from p2pnet.errors import ProtocolError
from p2pnet.node import Node
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.peerstore import PeerStore
from p2pnet.peer.record import (
    SIGNED_PEER_RECORD,
    InvalidPeerRecord,
    check_peer_record,
    make_peer_record,
    verify_peer_record,
)
from p2pnet.protocols.identify_messages import apply_identify, build_identify, parse_identify
from p2pnet.stream import Stream
from p2pnet.wire.pb import identify_pb2

ADDRS = [Multiaddr("/ip4/10.0.0.1/tcp/4001"), Multiaddr("/ip4/10.0.0.2/tcp/4002")]


def message(key: KeyPair, **overrides: object) -> bytes:
    fields: dict[str, object] = {
        "public_key": key.public_key,
        "listen_addrs": ADDRS,
        "protocols": ["/ipfs/id/1.0.0", "/x/1"],
        "observed_addr": Multiaddr("/ip4/127.0.0.1/tcp/9"),
        "protocol_version": "ipfs/0.1.0",
        "agent_version": "test/1",
        "signed_peer_record": make_peer_record(key, ADDRS, 7),
    }
    fields.update(overrides)
    return build_identify(**fields)  # type: ignore[arg-type]


def test_build_parse_roundtrip_touches_no_state() -> None:
    key = KeyPair.generate()
    peer = PeerID.from_public_key(key.public_key)
    info = parse_identify(peer, message(key), push=False)
    assert info.peer == peer and not info.push
    assert info.protocols == ["/ipfs/id/1.0.0", "/x/1"]
    assert info.listen_addrs == ADDRS
    assert info.observed_addr == Multiaddr("/ip4/127.0.0.1/tcp/9")
    assert (info.agent_version, info.protocol_version) == ("test/1", "ipfs/0.1.0")
    assert info.public_key is not None and info.public_key.to_protobuf() == (
        key.public_key.to_protobuf()
    )
    assert info.signed_peer_record is not None


def test_parse_refuses_garbage_and_another_peers_key() -> None:
    key, other = KeyPair.generate(), KeyPair.generate()
    peer = PeerID.from_public_key(key.public_key)
    with pytest.raises(ProtocolError, match="malformed"):
        parse_identify(peer, b"\xff\xff\xff", push=False)
    with pytest.raises(ProtocolError, match="another peer"):
        parse_identify(peer, message(other), push=False)


def test_parse_reuses_the_authenticated_key_and_checks_any_other() -> None:
    """The key the connection authenticated is taken as it is when the message carries the
    same bytes; a message with another key is still decoded and checked against the peer."""
    key, other = KeyPair.generate(), KeyPair.generate()
    peer = PeerID.from_public_key(key.public_key)
    info = parse_identify(peer, message(key), push=False, known_key=key.public_key)
    assert info.public_key is key.public_key
    assert info.signed_peer_record is not None  # verified with that key
    with pytest.raises(ProtocolError, match="another peer"):
        parse_identify(peer, message(other), push=False, known_key=key.public_key)
    with pytest.raises(ProtocolError, match="bad public key"):
        bad = identify_pb2.Identify(publicKey=b"\x08\x09\x12\x01x")  # key type 9: none
        parse_identify(peer, bad.SerializeToString(), push=False, known_key=key.public_key)


def test_check_peer_record_keeps_the_record_undecoded() -> None:
    """What identify keeps of a record is checked like verify_peer_record checks it, without
    decoding its addresses; a record for another peer than expected is refused."""
    key, other = KeyPair.generate(), KeyPair.generate()
    peer = PeerID.from_public_key(key.public_key)
    record = make_peer_record(key, ADDRS, 7)
    got, pb = check_peer_record(record, peer)
    assert got is peer and pb.seq == 7
    assert [a.multiaddr for a in pb.addresses] == [a.to_bytes() for a in ADDRS]
    assert verify_peer_record(record, peer) == (peer, ADDRS)
    with pytest.raises(InvalidPeerRecord, match="expected"):
        check_peer_record(make_peer_record(other, ADDRS, 1), peer)


def test_parse_drops_a_record_signed_by_someone_else() -> None:
    key, other = KeyPair.generate(), KeyPair.generate()
    peer = PeerID.from_public_key(key.public_key)
    info = parse_identify(
        peer, message(key, signed_peer_record=make_peer_record(other, ADDRS, 1)), push=False
    )
    assert info.signed_peer_record is None
    store = PeerStore()
    apply_identify(store, info)
    assert store.get_metadata(peer, SIGNED_PEER_RECORD) is None


def test_apply_identify_replaces_and_push_changes_only_what_it_carries() -> None:
    key = KeyPair.generate()
    peer = PeerID.from_public_key(key.public_key)
    store = PeerStore()
    apply_identify(store, parse_identify(peer, message(key), push=False))
    assert set(store.addrs(peer)) == set(ADDRS)
    assert store.get_protocols(peer) == ["/ipfs/id/1.0.0", "/x/1"]
    assert store.get_metadata(peer, SIGNED_PEER_RECORD) is not None
    # a push with only new protocols leaves the addresses alone
    push = build_identify(
        public_key=key.public_key,
        listen_addrs=[],
        protocols=["/y/2"],
        observed_addr=None,
        protocol_version="",
        agent_version="",
        signed_peer_record=None,
    )
    apply_identify(store, parse_identify(peer, push, push=True))
    assert store.get_protocols(peer) == ["/y/2"]
    assert set(store.addrs(peer)) == set(ADDRS)
    # a requested identify always sets the protocols, even to none
    apply_identify(store, parse_identify(peer, message(key, protocols=[]), push=False))
    assert store.get_protocols(peer) == []


async def test_node_identify_runs_identify_again() -> None:
    async with Node() as a, Node() as b:
        await a.connect(b.p2p_addrs()[0])
        await a.wait_identified(b.peer_id)
        seen = []
        a.identify_service.on_identified(seen.append)

        async def handler(stream: Stream) -> None:
            await stream.close()

        b.set_stream_handler("/later/1.0.0", handler)
        info = await a.identify(b.peer_id)
        assert info.peer == b.peer_id and not info.push
        assert "/later/1.0.0" in info.protocols
        assert set(info.listen_addrs) == set(b.listen_addrs)
        assert info in seen
        assert "/later/1.0.0" in a.host.peerstore.get_protocols(b.peer_id)


def _record_naming(signer: KeyPair, named: PeerID, *, tamper: bool = False) -> bytes:
    """A signed peer record made by ``signer`` that names ``named`` (``tamper``: its
    signature broken)."""
    from p2pnet.peer.record import PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE, _signed_bytes
    from p2pnet.wire.pb import envelope_pb2, peer_record_pb2

    payload = peer_record_pb2.PeerRecord(peer_id=named.to_bytes(), seq=1).SerializeToString()
    signature = signer.sign(_signed_bytes(PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE, payload))
    if tamper:
        signature = bytes([signature[0] ^ 1]) + signature[1:]
    env = envelope_pb2.Envelope(
        payload_type=PEER_RECORD_PAYLOAD_TYPE, payload=payload, signature=signature
    )
    env.public_key.ParseFromString(signer.public_key.to_protobuf())
    return env.SerializeToString()


def test_a_record_signed_with_the_identify_key_is_still_checked() -> None:
    """The envelope key equal to the identify message's (checked) key is not decoded again;
    the record must still name the peer and carry a valid signature."""
    key, other = KeyPair.generate(), KeyPair.generate()
    peer = PeerID.from_public_key(key.public_key)
    own = parse_identify(
        peer, message(key, signed_peer_record=_record_naming(key, peer)), push=False
    )
    assert own.signed_peer_record is not None
    for record in (
        _record_naming(key, PeerID.from_public_key(other.public_key)),
        _record_naming(key, peer, tamper=True),
    ):
        info = parse_identify(peer, message(key, signed_peer_record=record), push=False)
        assert info.signed_peer_record is None


def test_identify_parts_around_the_observed_address_make_the_same_bytes() -> None:
    from p2pnet.protocols.identify_messages import identify_parts, observed_addr_field

    key = KeyPair.generate()
    for observed in (Multiaddr("/ip4/127.0.0.1/tcp/9"), None):
        for record in (make_peer_record(key, ADDRS, 7), None):
            fields: dict[str, object] = {
                "public_key": key.public_key,
                "listen_addrs": ADDRS,
                "protocols": ["/ipfs/id/1.0.0", "/x/1"],
                "protocol_version": "ipfs/0.1.0",
                "agent_version": "p2pnet/test",
                "signed_peer_record": record,
            }
            before, after = identify_parts(**fields)  # type: ignore[arg-type]
            whole = build_identify(observed_addr=observed, **fields)  # type: ignore[arg-type]
            assert before + observed_addr_field(observed) + after == whole
