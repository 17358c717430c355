"""The sans-IO yamux core as an in-memory client/server pair, byte for byte, on a virtual time."""

from __future__ import annotations

import pytest

from p2pnet.errors import StreamClosed
from p2pnet.mux.yamux import (
    DEFAULT_WINDOW,
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    GO_AWAY_INTERNAL_ERROR,
    HEADER,
    HEADER_SIZE,
    STREAM_TRANSITIONS,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    DataReceived,
    Event,
    KeepaliveTimedOut,
    PongReceived,
    SendWindowUpdated,
    StreamEnded,
    StreamInput,
    StreamOpened,
    StreamResetByRemote,
    StreamState,
    YamuxConfig,
    YamuxSession,
)


def frames(out: list[bytes | memoryview]) -> list[tuple[int, int, int, int, bytes]]:
    """Parse the queued output into (type, flags, stream id, length, payload)."""
    data = b"".join(bytes(x) for x in out)
    parsed = []
    pos = 0
    while pos < len(data):
        _, ftype, flags, sid, length = HEADER.unpack_from(data, pos)
        pos += HEADER_SIZE
        payload = b""
        if ftype == TYPE_DATA:
            payload = data[pos : pos + length]
            pos += length
        parsed.append((ftype, flags, sid, length, payload))
    return parsed


def move(src: YamuxSession, dst: YamuxSession, now: float = 0.0) -> list[Event]:
    """Deliver everything ``src`` queued to ``dst``, one byte at a time (any split must work)."""
    data = b"".join(bytes(x) for x in src.take_outbound())
    events: list[Event] = []
    for i in range(0, len(data), 7):
        events += dst.receive_data(data[i : i + 7], now)
    return events


def pair(config: YamuxConfig | None = None) -> tuple[YamuxSession, YamuxSession]:
    return YamuxSession(initiator=True, config=config), YamuxSession(initiator=False, config=config)


def test_write_is_split_by_window_and_frame_size() -> None:
    cfg = YamuxConfig(max_frame_payload=100_000, keepalive_interval=None)
    client, server = pair(cfg)
    sid = client.open_stream(0.0)
    data = bytes(range(256)) * 2000  # 512000 bytes, twice the initial window
    sent = client.write(sid, data)
    assert sent == DEFAULT_WINDOW  # the window, not more
    queued = frames(client.take_outbound())
    data_frames = [f for f in queued if f[0] == TYPE_DATA]
    assert [f[3] for f in data_frames] == [100_000, 100_000, DEFAULT_WINDOW - 200_000]
    assert client.write(sid, data[sent:]) == 0  # no window left: wait for an update
    # replay the frames into the server and read them back
    server_events: list[Event] = []
    raw = b"".join(HEADER.pack(0, f[0], f[1], f[2], f[3]) + f[4] for f in queued)
    server_events += server.receive_data(raw, 0.0)
    assert isinstance(server_events[0], StreamOpened)
    got = b"".join(e.data for e in server_events if isinstance(e, DataReceived))
    assert got == data[:sent]
    server.accept_stream(sid)
    server.consume(sid, len(got), 0.0)  # the application read it: window goes back
    events = move(server, client)
    assert SendWindowUpdated(sid) in events
    assert client.send_window(sid) > 0
    assert client.write(sid, data[sent:]) == len(data) - sent


def test_high_water_stops_a_write_until_the_output_is_taken() -> None:
    cfg = YamuxConfig(write_high_water=1000, max_frame_payload=600, keepalive_interval=None)
    client, _ = pair(cfg)
    sid = client.open_stream(0.0)
    assert client.write(sid, b"x" * 5000) == 1200  # two frames, then above the mark
    assert client.write(sid, b"x") == 0
    client.take_outbound()
    assert client.write(sid, b"x" * 5000) == 1200


def test_stream_states_through_half_close_both_ways() -> None:
    client, server = pair()
    sid = client.open_stream(0.0)
    move(client, server)
    theirs = server.stream(sid)
    ours = client.stream(sid)
    assert ours is not None and theirs is not None
    server.accept_stream(sid)
    client.close_stream(sid)
    assert ours.state is StreamState.LOCAL_CLOSED and ours.local_closed
    with pytest.raises(StreamClosed):
        client.write(sid, b"late")
    assert StreamEnded(sid) in move(client, server)
    assert theirs.state is StreamState.REMOTE_CLOSED and theirs.remote_closed
    assert server.write(sid, b"still open this way") == 19
    server.close_stream(sid)
    events = move(server, client)
    got = b"".join(e.data for e in events if isinstance(e, DataReceived))
    assert got == b"still open this way"
    assert isinstance(events[-1], StreamEnded)
    assert ours.state is theirs.state is StreamState.CLOSED
    assert not client.has_stream(sid) and not server.has_stream(sid)
    # closing again is a no-op: nothing is queued
    client.close_stream(sid)
    assert client.take_outbound() == []


def test_reset_ends_both_records() -> None:
    client, server = pair()
    sid = client.open_stream(0.0)
    move(client, server)
    theirs = server.stream(sid)
    ours = client.stream(sid)
    assert ours is not None and theirs is not None
    client.reset_stream(sid)
    assert ours.state is StreamState.RESET and ours.is_reset
    assert StreamResetByRemote(sid) in move(client, server)
    assert theirs.state is StreamState.RESET
    assert server.num_streams == client.num_streams == 0


def test_transition_table_ignores_inputs_after_the_end() -> None:
    for state in (StreamState.CLOSED, StreamState.RESET):
        for event in StreamInput:
            assert (state, event) not in STREAM_TRANSITIONS
    assert STREAM_TRANSITIONS[StreamState.LOCAL_CLOSED, StreamInput.REMOTE_FIN] is (
        StreamState.CLOSED
    )


def test_keepalive_pings_and_times_out_on_virtual_time() -> None:
    cfg = YamuxConfig(keepalive_interval=30.0, ping_timeout=10.0)
    client, server = pair(cfg)
    client.start(100.0)
    first = frames(client.take_outbound())
    assert first[0][:2] == (TYPE_PING, FLAG_SYN)  # the RTT ping at start
    assert client.get_timer() == 130.0
    assert client.handle_timer(129.9) == []
    assert client.take_outbound() == []
    assert client.handle_timer(130.0) == []
    [ping] = frames(client.take_outbound())
    assert ping[:2] == (TYPE_PING, FLAG_SYN)
    # one keepalive in flight: the timer is now its deadline
    assert client.get_timer() == 140.0
    # the server answers, the pong arrives in time
    server.receive_data(HEADER.pack(0, *ping[:4]), 131.0)
    events = move(server, client, now=131.5)
    assert PongReceived(ping[3], 1.5) in events
    assert client.get_timer() == 160.0
    # next keepalive goes unanswered
    assert client.handle_timer(160.0) == []
    client.take_outbound()
    assert client.handle_timer(169.9) == []
    assert client.handle_timer(170.0) == [KeepaliveTimedOut(10.0)]
    assert (TYPE_GO_AWAY, 0, 0, GO_AWAY_INTERNAL_ERROR, b"") in frames(client.take_outbound())
    assert client.terminated and client.get_timer() is None


def test_no_keepalive_timer_when_disabled() -> None:
    client, _ = pair(YamuxConfig(keepalive_interval=None))
    client.start(0.0)
    assert client.get_timer() is None
    assert client.handle_timer(1e9) == []


def test_receive_data_stops_at_its_frame_budget_and_the_next_call_goes_on() -> None:
    """``max_frames`` bounds the frames parsed per call; the rest is kept, parsed first by the
    next call, and the events are those of one unbudgeted call, in order."""
    data = (
        b"".join(HEADER.pack(0, TYPE_PING, FLAG_SYN, 0, i) for i in range(10))
        + HEADER.pack(0, TYPE_DATA, FLAG_SYN, 1, 5)
        + b"hello"
        + b"".join(HEADER.pack(0, TYPE_PING, FLAG_SYN, 0, i) for i in range(10, 13))
    )
    _, whole = pair()
    expected = whole.receive_data(data, 0.0)
    _, budgeted = pair()
    events: list[Event] = []
    calls = 0
    # a first chunk cut inside the data frame's payload, then the rest
    cut = 11 * HEADER_SIZE + 2
    events += budgeted.receive_data(data[:cut], 0.0, max_frames=4)
    calls += 1
    assert budgeted.unparsed == cut - 4 * HEADER_SIZE
    events += budgeted.receive_data(data[cut:], 0.0, max_frames=4)  # appended to what is kept
    calls += 1
    while budgeted.unparsed:
        events += budgeted.receive_data(b"", 0.0, max_frames=4)
        calls += 1
    assert [type(e) for e in events] == [type(e) for e in expected]
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == b"hello"
    assert calls == 4  # 14 frames, 4 at a time
    assert frames(budgeted.take_outbound()) == frames(whole.take_outbound())  # 13 pongs, ACK


def test_what_the_frame_budget_leaves_of_a_reused_buffer_is_copied() -> None:
    pings = b"".join(HEADER.pack(0, TYPE_PING, FLAG_SYN, 0, i) for i in range(10))
    buffer = bytearray(pings)
    _, session = pair()
    session.receive_data(memoryview(buffer), 0.0, max_frames=3)
    assert session.unparsed == 7 * HEADER_SIZE
    buffer[:] = bytes(len(buffer))  # the caller reuses its buffer
    while session.unparsed:
        session.receive_data(b"", 0.0, max_frames=3)
    pongs = [f[3] for f in frames(session.take_outbound()) if f[0] == TYPE_PING]
    assert pongs == list(range(10))


def test_a_lazy_accept_acks_with_the_first_frame_sent() -> None:
    client, server = pair()
    sid = client.open_stream(0.0)
    assert [e for e in move(client, server) if isinstance(e, StreamOpened)]
    server.accept_stream(sid, lazily=True)
    assert server.take_outbound() == []  # no Window Update of its own
    assert server.unacked_inbound == 1 and client.ack_backlog == 1
    server.write(sid, b"answer")
    out = b"".join(bytes(x) for x in server.take_outbound())
    [(ftype, flags, fsid, _, payload)] = frames([out])
    assert (ftype, flags & FLAG_ACK, fsid, payload) == (TYPE_DATA, FLAG_ACK, sid, b"answer")
    assert server.unacked_inbound == 0
    client.receive_data(out, 0.0)
    assert client.ack_backlog == 0  # the client took the ACK from the data frame
    server.write(sid, b"more")  # once only
    [(_, flags, _, _, _)] = frames(server.take_outbound())
    assert flags & FLAG_ACK == 0


def test_a_lazy_accept_of_a_larger_window_announces_it_at_once() -> None:
    client, server = pair(YamuxConfig(initial_window=2 * DEFAULT_WINDOW))
    sid = client.open_stream(0.0)
    move(client, server)
    server.accept_stream(sid, lazily=True)
    [(ftype, flags, fsid, delta, _)] = frames(server.take_outbound())
    assert (ftype, flags, fsid, delta) == (TYPE_WINDOW_UPDATE, FLAG_ACK, sid, DEFAULT_WINDOW)


def test_a_lazily_accepted_stream_reset_or_closed_unanswered_carries_its_ack() -> None:
    client, server = pair()
    a, b = client.open_stream(0.0), client.open_stream(0.0)
    move(client, server)
    server.accept_stream(a, lazily=True)
    server.accept_stream(b, lazily=True)
    server.reset_stream(a)
    server.close_stream(b)
    got = {(sid, flags) for _, flags, sid, _, _ in frames(server.take_outbound())}
    assert got == {(a, FLAG_ACK | FLAG_RST), (b, FLAG_ACK | FLAG_FIN)}
    assert server.unacked_inbound == 0
