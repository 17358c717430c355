"""Property tests: every parser of untrusted bytes raises only p2pnet errors, whatever arrives.

Inputs are valid encodings mutated (bytes flipped, inserted, removed, cut) and plain random
bytes: kad messages and records, gossipsub RPCs, identify, signed peer records, agent envelopes,
presence records and the p2p-node command line.
"""

from __future__ import annotations

import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multiaddr import Multiaddr

from p2pnet.agent.envelope import open_envelope, seal
from p2pnet.agent.record import sign_agent_record, verify_agent_record
from p2pnet.cli.p2p_node import CommandError, parse_command
from p2pnet.crypto.keys import KeyPair, KeyType
from p2pnet.errors import P2PError
from p2pnet.kad import messages as m
from p2pnet.peer.peer_id import PeerID
from p2pnet.peer.record import make_peer_record, verify_peer_record
from p2pnet.protocols.identify_messages import build_identify, parse_identify
from p2pnet.pubsub import GossipsubConfig, GossipsubRouter, SignaturePolicy
from p2pnet.pubsub.messages import build_message
from p2pnet.wire.json_bounded import loads_bounded
from p2pnet.wire.pb import rpc_pb2

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEY = KeyPair.from_ed25519_seed(bytes(31) + b"\x07")
PEER = PeerID.from_public_key(KEY.public_key)
ETH = KeyPair.from_eth_private_key("0x" + "11" * 32)
ADDRS = [Multiaddr("/ip4/127.0.0.1/tcp/4001"), Multiaddr("/ip6/::1/tcp/4002")]


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with a few random edits, or random bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = bytearray(valid)
    rng = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 6))):
        op = rng.randrange(4)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        elif op == 2 and data:
            del data[pos : pos + rng.randrange(1, 8)]
        else:
            data = data[:pos]
    return bytes(data)


def only_p2p_errors(fn: object, data: bytes) -> None:
    try:
        fn(data)  # type: ignore[operator]
    except P2PError:
        pass


# -- kad ---------------------------------------------------------------------------------------

VALID_KAD = m.encode(m.put_value(b"/pk/" + PEER.to_bytes(), KEY.public_key.to_protobuf()))


@FUZZ
@given(mutated(VALID_KAD))
def test_kad_messages(data: bytes) -> None:
    def parse(raw: bytes) -> None:
        msg = m.decode(raw)
        m.peers_from_pb(msg.closerPeers, max_peers=20, max_addrs=10)
        m.peers_from_pb(msg.providerPeers, max_peers=20, max_addrs=10)

    only_p2p_errors(parse, data)


VALID_PRESENCE = sign_agent_record(ETH, PEER, ADDRS, seq=3, timestamp=1_700_000_000)


@FUZZ
@given(mutated(VALID_PRESENCE[1]))
def test_agent_presence_records(data: bytes) -> None:
    only_p2p_errors(lambda raw: verify_agent_record(VALID_PRESENCE[0], raw), data)


# -- identify and peer records ------------------------------------------------------------------

VALID_RECORD = make_peer_record(KEY, ADDRS, 5)
VALID_IDENTIFY = build_identify(
    public_key=KEY.public_key,
    listen_addrs=ADDRS,
    protocols=["/ipfs/id/1.0.0", "/meshsub/1.1.0"],
    observed_addr=ADDRS[0],
    protocol_version="ipfs/0.1.0",
    agent_version="p2pnet/test",
    signed_peer_record=VALID_RECORD,
)


@FUZZ
@given(mutated(VALID_IDENTIFY), st.booleans())
def test_identify_messages(data: bytes, push: bool) -> None:
    only_p2p_errors(lambda raw: parse_identify(PEER, raw, push=push), data)


@FUZZ
@given(mutated(VALID_RECORD))
def test_signed_peer_records(data: bytes) -> None:
    only_p2p_errors(lambda raw: verify_peer_record(raw, PEER), data)


# -- gossipsub ------------------------------------------------------------------------------------

_router = GossipsubRouter(PEER, GossipsubConfig(), key=KEY, rng=random.Random(1))
_SENDER = PeerID.from_public_key(KeyPair.from_ed25519_seed(bytes(31) + b"\x08").public_key)
_router.add_peer(_SENDER, "/meshsub/1.1.0", outbound=False, ips=["127.0.0.1"], now=0.0)
_router.join("t", 0.0)
_rpc = rpc_pb2.RPC()
_rpc.subscriptions.add(subscribe=True, topicid="t")
_rpc.publish.append(
    build_message("t", b"hello", policy=SignaturePolicy.STRICT_SIGN, key=KEY, seqno=1)
)
_rpc.control.ihave.add(topicID="t", messageIDs=[b"x" * 20])
_rpc.control.graft.add(topicID="t")
VALID_RPC = _rpc.SerializeToString()


@FUZZ
@given(mutated(VALID_RPC))
def test_gossipsub_rpcs(data: bytes) -> None:
    only_p2p_errors(lambda raw: _router.handle_rpc(_SENDER, raw, 1.0), data)


# -- agent envelopes and the command line ------------------------------------------------------

VALID_ENVELOPE = seal(ETH, "announce", {"hello": [1, 2]}, now=1_700_000_000, nonce=bytes(8))


@FUZZ
@given(mutated(VALID_ENVELOPE))
def test_agent_envelopes(data: bytes) -> None:
    only_p2p_errors(lambda raw: open_envelope(raw, now=1_700_000_000), data)


VALID_COMMAND = json.dumps({"type": "publish", "id": 1, "topic": "t", "data": {"a": [1]}}).encode()


@FUZZ
@given(mutated(VALID_COMMAND))
def test_command_lines(data: bytes) -> None:
    try:
        parse_command(data)
    except CommandError:
        pass


def test_deep_json_is_a_clean_error() -> None:
    for text in ("[" * 1000 + "]" * 1000, '{"a":' * 5000 + "1" + "}" * 5000):
        try:
            parse_command(text.encode())
        except CommandError as exc:
            assert exc.code == "INVALID_JSON"
        else:  # pragma: no cover
            raise AssertionError("accepted")
    assert loads_bounded('["[[[[", {"a": "]]]"}]') == ["[[[[", {"a": "]]]"}]
    assert KeyType.Ed25519  # the module imports what the tests use
