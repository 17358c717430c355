"""The router takes the new messages of one read together (``handle_rpcs``'s batch): these tests
feed the same random traffic to a router that batches and to one that takes each message alone
(``batch_first_deliveries = False``) and require the same outcome after every read: frames
sent (bytes and order), events, counters, scores, caches and delivery records."""

from __future__ import annotations

import random

from test_pubsub_router import Harness, T, make_key, pid, sub

from p2pnet.pubsub import PeerScoreParams, PeerScoreThresholds, TopicScoreParams
from p2pnet.pubsub.errors import InvalidRPC
from p2pnet.pubsub.messages import SignaturePolicy, build_message
from p2pnet.pubsub.router import DeliverMessage, GossipsubRouter
from p2pnet.wire.pb import rpc_pb2

T2 = "other-topic"
UNSUBSCRIBED = "nobody-here"


def _params() -> tuple[PeerScoreParams, PeerScoreThresholds]:
    scored = TopicScoreParams(
        topic_weight=1.0,
        first_message_deliveries_weight=0.5,
        first_message_deliveries_cap=7.0,
        mesh_message_deliveries_weight=-0.5,
        mesh_message_deliveries_threshold=3.0,
        mesh_message_deliveries_cap=9.0,
        mesh_message_deliveries_activation=0.05,
        invalid_message_deliveries_weight=-30.0,
    )
    thresholds = PeerScoreThresholds(
        gossip_threshold=-10.0, publish_threshold=-20.0, graylist_threshold=-40.0
    )
    return PeerScoreParams(topics={T: scored}), thresholds


def _state(r: GossipsubRouter) -> object:
    events = []
    for ev in r.take_events():
        if isinstance(ev, DeliverMessage):
            m = ev.message
            events.append(
                (m.topic, m.data, m.from_peer, m.seqno, m.id, m.received_from, m.signature, m.key)
            )
        else:
            events.append((type(ev).__name__,))
    return (
        r.take_outgoing(prefixed=True),
        events,
        dict(r.stats),
        {t: dict(c) for t, c in r.topic_stats.items()},
        {p: r.peer_score(p, r.now) for p in r.peers},
        list(r.seen._items.items()),
        (r.mcache._msgs, r.mcache._topics, r.mcache._ids, list(r.mcache._windows)),
        (r.score._records, list(r.score._record_ids), list(r.score._record_expiry)),
        [list(q.dont_send) for q in r.peers.values()],
    )


def _harness(batch: bool) -> tuple[Harness, list]:
    params, thresholds = _params()
    h = Harness(params, thresholds, idontwant_message_threshold=300)
    h.r.batch_first_deliveries = batch
    h.r.join(T, h.now)
    h.r.join(T2, h.now)
    peers = h.add(6, subscribe=(T, T2))
    h.r.take_outgoing()
    h.r.take_events()
    return h, peers


def _frame(msg: rpc_pb2.Message, rng: random.Random) -> bytes:
    raw = msg.SerializeToString()
    if len(raw) < 0x80 and rng.random() < 0.1:  # a non-minimal two-byte length
        return b"\x12" + bytes(((len(raw) & 0x7F) | 0x80, 0)) + raw
    return rpc_pb2.RPC(publish=[msg]).SerializeToString()


def _traffic(seed: int, peers: list) -> list[tuple[int, list[bytes]]]:
    """Reads (sender index, frames) of random traffic, the same for both routers."""
    rng = random.Random(seed)
    authors = [make_key(i) for i in range(len(peers))] + [make_key(50 + i) for i in range(3)]
    seqnos = [0] * len(authors)
    sent: list[rpc_pb2.Message] = []
    reads = []
    for _ in range(40):
        sender = rng.randrange(len(peers))
        frames = []
        for _ in range(rng.randrange(1, 12)):
            roll = rng.random()
            if roll < 0.08 and sent:  # a duplicate (maybe of one earlier in this read)
                frames.append(_frame(rng.choice(sent), rng))
                continue
            if roll < 0.11:  # an IDONTWANT from the sender for a message to come or seen
                ids = [m.from_ + m.seqno for m in rng.sample(sent, min(2, len(sent)))]
                ctrl = rpc_pb2.ControlMessage(idontwant=[rpc_pb2.ControlIDontWant(messageIDs=ids)])
                frames.append(rpc_pb2.RPC(control=ctrl).SerializeToString())
                continue
            if roll < 0.13:  # a subscription change
                frames.append(
                    rpc_pb2.RPC(subscriptions=[sub(T2, rng.random() < 0.5)]).SerializeToString()
                )
                continue
            a = rng.choice(
                [sender] * 6 + list(range(len(authors)))
            )  # mostly the sender's own, else another peer's or a stranger's
            seqnos[a] += 1
            topic = rng.choice([T] * 6 + [T2] * 3 + [UNSUBSCRIBED])
            data = bytes(rng.choice((0, 10, 100, 200, 400)))
            key = authors[a]
            msg = build_message(
                topic,
                data,
                policy=SignaturePolicy.STRICT_SIGN,
                key=key,
                peer_id=pid(key),
                seqno=seqnos[a],
            )
            if rng.random() < 0.07:
                msg.signature = bytes(64)  # invalid
            sent.append(msg)
            frames.append(_frame(msg, rng))
        if rng.random() < 0.03:
            frames.insert(rng.randrange(len(frames) + 1), b"\x12\x05ab")  # undecodable
        reads.append((sender, frames))
    return reads


def test_a_batched_read_has_the_outcome_of_one_message_at_a_time() -> None:
    for seed in range(8):
        (one, peers1), (many, peers2) = _harness(False), _harness(True)
        assert peers1 == peers2
        for sender, frames in _traffic(seed, peers1):
            outcomes = []
            for h, peers in ((one, peers1), (many, peers2)):
                h.now += 0.01
                try:
                    h.r.handle_rpcs(peers[sender], frames, h.now)
                    raised = False
                except InvalidRPC:
                    raised = True
                outcomes.append((raised, _state(h.r)))
            assert outcomes[0] == outcomes[1], f"seed {seed}"
            if one.ids and one.r.heartbeat_ticks % 3 == 0:
                for h in (one, many):
                    h.r.heartbeat(h.now)
                assert _state(one.r) == _state(many.r)


def test_the_batch_is_used_and_a_graylisted_sender_is_refused_from_the_next_frame_on() -> None:
    """Sanity of the comparison above: messages are batched (deliveries come out), and a
    sender whose invalid messages sink its score below the graylist threshold is ignored from
    the next frame on, within the same read."""
    h, peers = _harness(True)
    key = make_key(0)
    msgs = [
        build_message(T, b"x", policy=SignaturePolicy.STRICT_SIGN, key=key, seqno=i + 1)
        for i in range(6)
    ]
    for m in msgs[2:4]:
        m.signature = bytes(64)
    frames = [rpc_pb2.RPC(publish=[m]).SerializeToString() for m in msgs]
    h.r.handle_rpcs(peers[0], frames, h.now)
    delivered = [e for e in h.r.take_events() if isinstance(e, DeliverMessage)]
    assert [e.message.seqno for e in delivered] == [1, 2]
    assert h.r.stats["msg_invalid"] == 2  # two invalid: -60 < -40, the rest ignored
    assert h.r.stats["rpc_graylisted"] == 2


def test_a_read_that_fails_midway_leaves_no_batch_for_the_next_read() -> None:
    """The router keeps one batch object for every read: messages gathered by a read that ends
    in an unexpected error are dropped with it, never delivered by the next read as if that
    read's sender had sent them."""
    h, peers = _harness(True)
    key = make_key(0)
    msgs = [
        build_message(T, b"x", policy=SignaturePolicy.STRICT_SIGN, key=key, seqno=i + 1)
        for i in range(3)
    ]
    frames = [rpc_pb2.RPC(publish=[m]).SerializeToString() for m in msgs]
    verify = h.r.verifier.verify_fields
    calls = []

    def failing_second(*args: object) -> object:
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("a bug")
        return verify(*args)  # type: ignore[arg-type]

    h.r.verifier.verify_fields = failing_second  # type: ignore[method-assign]
    try:
        h.r.handle_rpcs(peers[0], frames[:2], h.now)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the error was swallowed")
    h.r.verifier.verify_fields = verify  # type: ignore[method-assign]
    h.r.handle_rpcs(peers[1], frames[2:], h.now)
    delivered = [e.message for e in h.r.take_events() if isinstance(e, DeliverMessage)]
    assert [(m.seqno, m.received_from) for m in delivered] == [(3, peers[1])]
