"""Property tests of the sans-IO yamux core: arbitrary input only ever raises p2pnet errors."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnet.errors import P2PError, ProtocolError
from p2pnet.mux.yamux import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_PROTOCOL_ERROR,
    HEADER,
    HEADER_SIZE,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    DataReceived,
    Event,
    StreamState,
    YamuxConfig,
    YamuxSession,
)

CONFIG = YamuxConfig(max_streams=8, max_unacked_inbound=4)


def frames_of(out: list[bytes | memoryview]) -> list[tuple[int, int, int, int, int]]:
    """Parse what the session queued; every header must be well formed."""
    data = b"".join(out)
    frames = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= HEADER_SIZE
        frame = HEADER.unpack_from(data, pos)
        assert frame[0] == 0 and frame[1] in (0, 1, 2, 3)
        pos += HEADER_SIZE
        if frame[1] == TYPE_DATA:
            pos += frame[4]
        frames.append(frame)
    assert pos == len(data)
    return frames


def check_invariants(session: YamuxSession) -> None:
    assert session.inbound_streams >= 0 and session.outbound_streams >= 0
    assert session.inbound_streams <= CONFIG.max_streams
    assert session._inbound_unacked <= CONFIG.max_unacked_inbound
    assert session.inbound_streams + session.outbound_streams == session.num_streams
    for state in session.streams():
        assert state.state not in (StreamState.CLOSED, StreamState.RESET)
        assert 0 <= state.recv_credit <= state.recv_window <= CONFIG.max_window
        assert 0 <= state.send_window <= 0xFFFFFFFF


def feed(session: YamuxSession, chunks: list[bytes]) -> list[Event]:
    """Feed chunks; a protocol error must queue a go-away(1) and end the session."""
    events: list[Event] = []
    for i, chunk in enumerate(chunks):
        try:
            events.extend(session.receive_data(chunk, float(i)))
        except ProtocolError:
            assert session.terminated
            frames = frames_of(session.take_outbound())
            assert (0, TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR) in frames
            return events
        except P2PError:
            return events
        check_invariants(session)
        # the application consumes everything it got, as a reader would
        for ev in events:
            if isinstance(ev, DataReceived):
                session.consume(ev.stream_id, len(ev.data), float(i))
        frames_of(session.take_outbound())
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans(), st.lists(st.integers(0, 400), max_size=8))
def test_random_bytes(data: bytes, initiator: bool, cuts: list[int]) -> None:
    session = YamuxSession(initiator=initiator, config=CONFIG)
    feed(session, split(data, cuts))


frame_strategy = st.one_of(
    st.tuples(
        st.just(TYPE_WINDOW_UPDATE),
        st.sampled_from([0, FLAG_SYN, FLAG_ACK, FLAG_FIN, FLAG_RST, FLAG_SYN | FLAG_FIN]),
        st.integers(0, 12),
        st.integers(0, 300_000),
        st.just(b""),
    ),
    st.tuples(
        st.just(TYPE_DATA),
        st.sampled_from([0, FLAG_SYN, FLAG_FIN, FLAG_RST, FLAG_SYN | FLAG_FIN]),
        st.integers(0, 12),
        st.just(-1),
        st.binary(max_size=64),
    ),
    st.tuples(
        st.just(TYPE_PING),
        st.sampled_from([FLAG_SYN, FLAG_ACK, 0]),
        st.just(0),
        st.integers(0, 2**32 - 1),
        st.just(b""),
    ),
    st.tuples(st.just(TYPE_GO_AWAY), st.just(0), st.just(0), st.integers(0, 3), st.just(b"")),
)


def encode(frames: list[tuple[int, int, int, int, bytes]]) -> bytes:
    out = bytearray()
    for ftype, flags, sid, length, payload in frames:
        if length < 0:
            length = len(payload)
        out += HEADER.pack(0, ftype, flags, sid, length) + payload
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(frame_strategy, max_size=30),
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.lists(st.integers(0, 10_000), max_size=6),
)
def test_mutated_frames(
    frames: list[tuple[int, int, int, int, bytes]],
    initiator: bool,
    mutations: list[tuple[int, int]],
    cuts: list[int],
) -> None:
    data = bytearray(encode(frames))
    for pos, value in mutations:
        if data:
            data[pos % len(data)] = value
    session = YamuxSession(initiator=initiator, config=CONFIG)
    feed(session, split(bytes(data), cuts))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=6), st.data())
def test_chunking_does_not_change_what_arrives(payloads: list[bytes], data: st.DataObject) -> None:
    """A valid byte stream split anywhere yields the same bytes per stream and the same events."""
    frames: list[tuple[int, int, int, int, bytes]] = []
    for i, payload in enumerate(payloads):
        sid = 2 * (i % 3) + 1
        if i < 3:
            frames.append((TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0, b""))
        frames.append((TYPE_DATA, 0, sid, -1, payload))
    frames.append((TYPE_PING, FLAG_SYN, 0, 42, b""))
    frames.append((TYPE_DATA, FLAG_FIN, 1, 0, b""))
    raw = encode(frames)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=20))

    def run(chunks: list[bytes]) -> tuple[dict[int, bytes], list[Event]]:
        session = YamuxSession(initiator=False, config=CONFIG)
        got: dict[int, bytes] = {}
        others: list[Event] = []
        for chunk in chunks:
            for ev in session.receive_data(chunk, 0.0):
                if isinstance(ev, DataReceived):
                    got[ev.stream_id] = got.get(ev.stream_id, b"") + ev.data
                else:
                    others.append(ev)
        return got, others

    whole = run([raw])
    assert run(split(raw, cuts)) == whole
    assert run([raw[i : i + 1] for i in range(len(raw))]) == whole
    expected: dict[int, bytes] = {}
    for i, payload in enumerate(payloads):
        sid = 2 * (i % 3) + 1
        expected[sid] = expected.get(sid, b"") + payload
    assert whole[0] == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(["open", "write", "close", "reset", "consume", "ping", "timer", "input"]),
        max_size=40,
    ),
    st.lists(frame_strategy, max_size=10),
)
def test_local_actions_interleaved_with_input(
    actions: list[str], frames: list[tuple[int, int, int, int, bytes]]
) -> None:
    """Local API calls mixed with remote frames keep the session consistent."""
    session = YamuxSession(initiator=True, config=CONFIG)
    raw = encode(frames)
    opened: list[int] = []
    for step, action in enumerate(actions):
        now = float(step)
        try:
            if action == "open":
                opened.append(session.open_stream(now))
            elif opened:
                sid = opened[step % len(opened)]
                if action == "write":
                    sent = session.write(sid, b"z" * 1000)
                    assert 0 <= sent <= 1000
                elif action == "close":
                    session.close_stream(sid)
                elif action == "reset":
                    session.reset_stream(sid)
                elif action == "consume":
                    session.consume(sid, 0, now)
            if action == "ping":
                session.ping(now)
            elif action == "timer":
                session.handle_timer(now)
            elif action == "input" and raw:
                session.receive_data(raw[: len(raw) // 2 + 1], now)
                raw = raw[len(raw) // 2 + 1 :]
        except P2PError:
            pass
        check_invariants(session)
        frames_of(session.take_outbound())
