"""Records, validators, agent presence records, stores and kad messages (no sockets)."""

from __future__ import annotations

import json
import time

import pytest
from multiaddr import Multiaddr

from p2pnet.agent.record import (
    MAX_AGENT_RECORD_SIZE,
    AgentRecordValidator,
    agent_key,
    eth_address_of_key,
    sign_agent_record,
    verify_agent_record,
)
from p2pnet.crypto.eth import eth_address
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.kad import messages as m
from p2pnet.kad.errors import InvalidRecord, KadProtocolError
from p2pnet.kad.messages import PeerInfo
from p2pnet.kad.providers import InMemoryProviderStore
from p2pnet.kad.records import (
    InMemoryRecordStore,
    NamespacedValidator,
    PublicKeyValidator,
    StoredRecord,
    StoreFull,
    Validator,
    format_rfc3339,
    split_key,
)
from p2pnet.peer.peer_id import PeerID
from p2pnet.wire.pb import kad_pb2

SECP_KEY = KeyPair.from_secp256k1_secret(bytes(31) + b"\x01")
SECP_PEER = PeerID.from_public_key(SECP_KEY.public_key)


def pk_record(key: KeyPair) -> tuple[bytes, bytes]:
    peer = PeerID.from_public_key(key.public_key)
    return b"/pk/" + peer.to_bytes(), key.public_key.to_protobuf()


# -- keys and /pk/ --------------------------------------------------------------------------


def test_split_key() -> None:
    assert split_key(b"/pk/abc") == ("pk", b"abc")
    assert split_key(b"/agent/0x12/x") == ("agent", b"0x12/x")
    for bad in (b"pk/abc", b"//abc", b"/pk", b"", b"/\xff\xfe/x"):
        with pytest.raises(InvalidRecord):
            split_key(bad)


@pytest.mark.parametrize("key_type", [KeyType.Ed25519, KeyType.Secp256k1, KeyType.ECDSA])
def test_public_key_validator(key_type: KeyType) -> None:
    v = PublicKeyValidator()
    key = KeyPair.generate(key_type)
    k, value = pk_record(key)
    v.validate(k, value)
    other = KeyPair.generate(key_type)
    with pytest.raises(InvalidRecord, match="does not hash"):
        v.validate(k, other.public_key.to_protobuf())
    with pytest.raises(InvalidRecord, match="no valid key"):
        v.validate(k, b"\x08\x01\x12\x03abc")
    with pytest.raises(InvalidRecord):
        v.validate(b"/other/" + k[4:], value)


def test_namespaced_validator_dispatch_size_and_select() -> None:
    class Longest(Validator):
        def validate(self, key: bytes, value: bytes) -> None:
            if not value.startswith(b"ok"):
                raise InvalidRecord("must start with ok")

        def select(self, key: bytes, values: list[bytes]) -> int:  # type: ignore[override]
            return max(range(len(values)), key=lambda i: len(values[i]))

    v = NamespacedValidator({"test": Longest()}, max_value_size=10)
    assert v.namespaces == ["pk", "test"]
    v.validate(b"/test/a", b"ok")
    with pytest.raises(InvalidRecord, match="no validator"):
        v.validate(b"/nope/a", b"ok")
    with pytest.raises(InvalidRecord, match="exceeds"):
        v.validate(b"/test/a", b"ok" + b"x" * 9)
    # invalid values are never selected, whatever the selector prefers
    assert v.select(b"/test/a", [b"ok1", b"bad-but-long", b"ok123"]) == 2
    with pytest.raises(InvalidRecord):
        v.select(b"/test/a", [b"bad"])
    with pytest.raises(ValueError):
        v.register("a/b", Longest())


# -- agent presence records -------------------------------------------------------------------


def test_agent_record_roundtrip_and_content() -> None:
    addrs = [Multiaddr("/ip4/10.0.0.1/tcp/4001"), "/dns4/example.com/tcp/443"]
    key, value = sign_agent_record(SECP_KEY, SECP_PEER, addrs, seq=7, timestamp=1_700_000_000)
    address = eth_address(SECP_PEER).lower()
    assert key == f"/agent/{address}".encode() == agent_key(eth_address(SECP_PEER))
    assert eth_address_of_key(SECP_KEY) == address
    p = verify_agent_record(key, value)
    assert p.address == address and p.peer_id == SECP_PEER and p.seq == 7
    assert p.timestamp == 1_700_000_000
    assert [str(a) for a in p.addrs] == ["/ip4/10.0.0.1/tcp/4001", "/dns4/example.com/tcp/443"]
    payload = json.loads(value[65:])
    assert payload["type"] == "p2pnet/agent-presence/1"
    assert value[64] in (27, 28)
    AgentRecordValidator().validate(key, value)


def test_agent_record_signature_matches_eth_personal_sign() -> None:
    """The signature is a standard EIP-191 personal_sign: eth_keys recovers the same address."""
    from eth_hash.auto import keccak
    from eth_keys.datatypes import Signature

    key, value = sign_agent_record(SECP_KEY, SECP_PEER, [], seq=1)
    sig, payload = value[:65], value[65:]
    digest = keccak(b"\x19Ethereum Signed Message:\n" + str(len(payload)).encode() + payload)
    signature = Signature(sig[:64] + bytes([sig[64] - 27]))
    recovered = signature.recover_public_key_from_msg_hash(digest)
    assert recovered.to_checksum_address().lower() == key.decode().split("/")[-1]


def test_agent_record_may_name_another_peer() -> None:
    node = KeyPair.generate()  # an Ed25519 node run by the agent
    peer = PeerID.from_public_key(node.public_key)
    key, value = sign_agent_record(SECP_KEY, peer, [], seq=0)
    assert verify_agent_record(key, value).peer_id == peer


def _tamper(value: bytes, fn: object) -> bytes:
    payload = json.loads(value[65:])
    fn(payload)  # type: ignore[operator]
    return value[:65] + json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def test_agent_record_refusals() -> None:
    key, value = sign_agent_record(SECP_KEY, SECP_PEER, ["/ip4/1.2.3.4/tcp/1"], seq=3)
    other = KeyPair.generate(KeyType.Secp256k1)
    other_key, other_value = sign_agent_record(other, SECP_PEER, [], seq=3)
    cases: dict[str, tuple[bytes, bytes]] = {
        "bad signature (payload changed)": (key, _tamper(value, lambda p: p.update(seq=4))),
        "signature flipped": (key, bytes([value[0] ^ 1]) + value[1:]),
        "wrong key": (other_key, value),
        "other signer": (key, other_value),
        "short": (key, value[:60]),
        "oversize": (key, value + b" " * MAX_AGENT_RECORD_SIZE),
        "bad v": (key, value[:64] + b"\x05" + value[65:]),
        "not canonical": (key, value[:65] + value[65:].replace(b":", b": ", 1)),
        "upper-case key": (key.upper(), value),
        "not an address": (b"/agent/0x1234", value),
        "wrong namespace": (b"/pk/" + key[7:], value),
    }
    for name, (k, v) in cases.items():
        with pytest.raises(InvalidRecord):
            verify_agent_record(k, v)
            pytest.fail(name)


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("seq", -1),
        ("seq", "1"),
        ("seq", 1.5),
        ("timestamp", True),
        ("peer_id", "not-a-peer"),
        ("addrs", ["/not/a/multiaddr"]),
        ("addrs", "x"),
        ("type", "other"),
        ("extra", 1),
    ],
)
def test_agent_record_payload_checks(field: str, bad: object) -> None:
    """Well-signed payloads with bad fields are still refused (signed here by the same key)."""
    from p2pnet.crypto.eth import personal_sign

    key, value = sign_agent_record(SECP_KEY, SECP_PEER, [], seq=1)
    payload = json.loads(value[65:])
    payload[field] = bad
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    forged = personal_sign(SECP_KEY.private_key.to_bytes(), raw) + raw
    with pytest.raises(InvalidRecord):
        verify_agent_record(key, forged)


def test_agent_selector_prefers_highest_seq_then_timestamp() -> None:
    v = AgentRecordValidator()
    key, r1 = sign_agent_record(SECP_KEY, SECP_PEER, [], seq=1, timestamp=100)
    _, r5 = sign_agent_record(SECP_KEY, SECP_PEER, [], seq=5, timestamp=50)
    _, r5b = sign_agent_record(SECP_KEY, SECP_PEER, [], seq=5, timestamp=60)
    assert v.select(key, [r1, r5, r5b]) == 2
    assert v.select(key, [r5, r1]) == 0
    assert v.select(key, [r5, r5]) == 0  # ties: the first
    forged = _tamper(r5b, lambda p: p.update(seq=99))
    assert v.select(key, [forged, r1]) == 1
    with pytest.raises(InvalidRecord):
        v.select(key, [forged])


def test_sign_agent_record_needs_secp256k1() -> None:
    with pytest.raises(Exception, match="secp256k1"):
        sign_agent_record(KeyPair.generate(), SECP_PEER, [], seq=1)
    with pytest.raises(ValueError):
        sign_agent_record(SECP_KEY, SECP_PEER, [], seq=-1)
    with pytest.raises(ValueError):
        agent_key("0x1234")


# -- time format ----------------------------------------------------------------------------


def test_rfc3339() -> None:
    t = 1_700_000_000.123
    text = format_rfc3339(t)
    assert text == "2023-11-14T22:13:20.123000000Z"
    assert format_rfc3339(1_700_000_000) == "2023-11-14T22:13:20.000000000Z"


# -- stores -----------------------------------------------------------------------------------


def test_record_store_bounds_and_gc() -> None:
    store = InMemoryRecordStore(max_records=2)
    store.put(StoredRecord(b"/a/1", b"x", 10.0))
    store.put(StoredRecord(b"/a/2", b"y", 20.0))
    store.put(StoredRecord(b"/a/1", b"z", 30.0))  # replacing is fine when full
    with pytest.raises(StoreFull):
        store.put(StoredRecord(b"/a/3", b"w", 30.0))
    assert len(store) == 2
    rec = store.get(b"/a/1")
    assert rec is not None and rec.value == b"z"
    assert store.gc(now=35.0, max_age=10.0) == 1
    assert store.get(b"/a/2") is None and len(store) == 1
    store.delete(b"/a/1")
    assert list(store) == []


def test_provider_store_expiry_and_bounds() -> None:
    peers = [PeerID.from_public_key(KeyPair.generate().public_key) for _ in range(4)]
    store = InMemoryProviderStore(max_keys=2, max_per_key=2)
    now = time.time()
    store.add_provider(b"k1", peers[0], now + 10, now=now)
    store.add_provider(b"k1", peers[1], now + 20, now=now)
    assert store.get_providers(b"k1", now) == [peers[1], peers[0]]
    store.add_provider(b"k1", peers[2], now + 30, now=now)  # evicts the one expiring first
    assert set(store.get_providers(b"k1", now)) == {peers[1], peers[2]}
    assert store.get_providers(b"k1", now + 25) == [peers[2]]
    store.add_provider(b"k2", peers[0], now + 100, now=now)
    with pytest.raises(StoreFull):
        store.add_provider(b"k3", peers[0], now + 100, now=now)
    assert store.gc(now + 1000) >= 1
    assert len(store) == 0
    store.add_provider(b"k3", peers[3], now + 100, now=now)
    store.remove_provider(b"k3", peers[3])
    assert store.get_providers(b"k3", now) == []


# -- messages -----------------------------------------------------------------------------------


def test_message_roundtrip_all_fields() -> None:
    peer = PeerID.from_public_key(KeyPair.generate().public_key)
    msg = m.get_value(b"/pk/x")
    msg.record.CopyFrom(m.make_record(b"/pk/x", b"value", "2023-11-14T22:13:20.000000000Z"))
    msg.closerPeers.append(m.peer_to_pb(PeerInfo(peer, [Multiaddr("/ip4/1.2.3.4/tcp/5")]), 1))
    msg.providerPeers.append(m.peer_to_pb(PeerInfo(peer)))
    msg.clusterLevelRaw = 3
    back = m.decode(m.encode(msg))
    assert back == msg
    infos, bad = m.peers_from_pb(back.closerPeers)
    assert bad == 0 and infos == [PeerInfo(peer, [Multiaddr("/ip4/1.2.3.4/tcp/5")])]
    # field numbers of the spec: type=1, key=2, record=3, closerPeers=8, providerPeers=9
    raw = m.encode(m.find_node(b"\x01\x02"))
    assert raw == b"\x08\x04\x12\x02\x01\x02"
    put = m.encode(m.put_value(b"k", b"v"))
    assert put == b"\x12\x01k\x1a\x06\x0a\x01k\x12\x01v"  # type PUT_VALUE=0 is implicit


def test_message_decode_rejects_garbage() -> None:
    for junk in (b"\xff\xff\xff", b"\x08", b"\x12\x10short", b"\x08\x09"):
        with pytest.raises(KadProtocolError):
            m.decode(junk)


def test_peers_from_pb_skips_bad_entries_and_bounds() -> None:
    good = PeerID.from_public_key(KeyPair.generate().public_key)
    pbs = [
        kad_pb2.Message.Peer(id=b"\x00garbage", addrs=[]),
        kad_pb2.Message.Peer(
            id=good.to_bytes(), addrs=[b"\xff\xff", Multiaddr("/ip4/1.1.1.1/tcp/1").to_bytes()]
        ),
        kad_pb2.Message.Peer(
            id=good.to_bytes(), addrs=[Multiaddr("/ip4/2.2.2.2/tcp/2").to_bytes()]
        ),
    ]
    infos, bad = m.peers_from_pb(pbs)
    assert bad == 1
    assert infos == [
        PeerInfo(good, [Multiaddr("/ip4/1.1.1.1/tcp/1"), Multiaddr("/ip4/2.2.2.2/tcp/2")])
    ]
    many = [
        kad_pb2.Message.Peer(id=PeerID.from_public_key(KeyPair.generate().public_key).to_bytes())
        for _ in range(10)
    ]
    infos, bad = m.peers_from_pb(many, max_peers=4)
    assert len(infos) == 4 and bad == 6


def test_peer_entries_decode_the_same_memoised_or_not() -> None:
    """Small entries are decoded once (memoised by their bytes), large ones every time and
    only up to the address bound; both give what the entry says, duplicates removed."""
    good = PeerID.from_public_key(KeyPair.generate().public_key)
    a1 = Multiaddr("/ip4/1.1.1.1/tcp/1")
    small = kad_pb2.Message.Peer(id=good.to_bytes(), addrs=[a1.to_bytes(), a1.to_bytes()])
    assert len(small.SerializeToString()) <= m.MAX_MEMO_PEER_ENTRY
    assert m.decode_peer(small, 32) == (good, (a1,))
    assert m.decode_peer(small, 32) == (good, (a1,))  # from the memo
    big_addrs = [Multiaddr(f"/ip4/10.0.{i // 256}.{i % 256}/tcp/1").to_bytes() for i in range(80)]
    big = kad_pb2.Message.Peer(id=good.to_bytes(), addrs=big_addrs)
    assert len(big.SerializeToString()) > m.MAX_MEMO_PEER_ENTRY
    got = m.decode_peer(big, 5)
    assert got is not None and got[0] == good and [a.to_bytes() for a in got[1]] == big_addrs[:5]
    assert m.decode_peer(kad_pb2.Message.Peer(id=b"\x00garbage"), 32) is None
    infos, bad = m.peers_from_pb([small, big, small], max_addrs=3)
    assert bad == 0 and len(infos) == 1
    assert [a.to_bytes() for a in infos[0].addrs] == [a1.to_bytes(), *big_addrs[:2]]
