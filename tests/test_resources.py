"""The resource manager: scopes, refusals, and its wiring through yamux and the host."""

from __future__ import annotations

import asyncio
import logging

import pytest

from p2pnet.crypto.keys import KeyPair
from p2pnet.errors import P2PError, ResourceLimitExceeded, StreamReset
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.peer.peer_id import PeerID
from p2pnet.resources import ProtocolLimits, ResourceLimits, ResourceManager, TokenBucket
from p2pnet.resources.limits import MiB
from p2pnet.stream import Direction, Stream
from p2pnet.wire.framing import encode_length_prefixed, read_length_prefixed

SINK = "/test/sink/1.0.0"
ONE = "/test/one/1.0.0"


def peer() -> PeerID:
    return PeerID.from_public_key(KeyPair.generate().public_key)


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


# -- the scopes alone ------------------------------------------------------------------------


def test_connection_moves_from_transient_to_peer_and_gives_everything_back() -> None:
    rm = ResourceManager(ResourceLimits(transient_conns=2, peer_conns=1))
    p = peer()
    a = rm.open_connection(Direction.INBOUND, "10.0.0.1", 0.0)
    b = rm.open_connection(Direction.INBOUND, "10.0.0.1", 0.0)
    with pytest.raises(ResourceLimitExceeded) as info:
        rm.open_connection(Direction.INBOUND, "10.0.0.2", 0.0)
    assert info.value.scope == "transient"
    a.set_peer(p)
    with pytest.raises(ResourceLimitExceeded):  # one connection per peer here
        b.set_peer(p)
    s = a.open_stream(Direction.INBOUND, 0.0)
    s.set_protocol(ONE)
    s.reserve_memory(1000)
    assert rm.peer_usage(p)["memory"] == 1000
    a.done()
    b.done()
    s.done()
    assert rm.system.idle and rm.transient.idle
    assert rm.stat()["scopes"] == {"peers": 0, "ips": 0, "protocols": 0}
    assert rm.refused["transient/conns"] == 1 and rm.refused["peer/conns"] == 1


def test_per_ip_and_per_protocol_per_peer_limits() -> None:
    limits = ResourceLimits(
        conns_per_ip=2,
        protocols={ONE: ProtocolLimits(streams_inbound=10, streams_inbound_per_peer=2)},
    )
    rm = ResourceManager(limits)
    c1 = rm.open_connection(Direction.INBOUND, "10.0.0.1", 0.0)
    rm.open_connection(Direction.INBOUND, "10.0.0.1", 0.0)
    with pytest.raises(ResourceLimitExceeded):
        rm.open_connection(Direction.INBOUND, "10.0.0.1", 0.0)
    rm.open_connection(Direction.INBOUND, "10.0.0.9", 0.0)  # another address is not affected
    c1.set_peer(peer())
    streams = [c1.open_stream(Direction.INBOUND, 0.0) for _ in range(3)]
    streams[0].set_protocol(ONE)
    streams[1].set_protocol(ONE)
    with pytest.raises(ResourceLimitExceeded):
        streams[2].set_protocol(ONE)
    streams[2].set_protocol(SINK)  # other protocols have their own budget


def test_memory_is_bounded_per_stream_and_per_peer() -> None:
    rm = ResourceManager(ResourceLimits(peer_memory=10 * MiB, stream_memory=4 * MiB))
    conn = rm.open_connection(Direction.INBOUND, None, 0.0)
    conn.set_peer(peer())
    a, b, c = (conn.open_stream(Direction.INBOUND, 0.0) for _ in range(3))
    a.reserve_memory(4 * MiB)
    with pytest.raises(ResourceLimitExceeded):
        a.reserve_memory(1)
    b.reserve_memory(4 * MiB)
    with pytest.raises(ResourceLimitExceeded) as info:
        c.reserve_memory(4 * MiB)
    assert info.value.scope.startswith("peer:")
    a.done()
    c.reserve_memory(4 * MiB)
    conn.done()
    b.done()
    c.done()
    assert rm.system.idle


def test_inbound_stream_rate_and_flood_detection() -> None:
    limits = ResourceLimits(stream_rate_per_conn=10, stream_burst_per_conn=5, stream_flood_close=20)
    rm = ResourceManager(limits)
    conn = rm.open_connection(Direction.INBOUND, "10.0.0.5", 0.0)
    for _ in range(5):
        conn.open_stream(Direction.INBOUND, 0.0).done()
    refused = 0
    for _ in range(30):
        try:
            conn.open_stream(Direction.INBOUND, 0.0)
        except ResourceLimitExceeded:
            refused += 1
    assert refused == 30 and conn.flooding
    # the address may not come back for a while; others may
    assert not rm.allow_connection_from("10.0.0.5", 1.0)
    assert rm.allow_connection_from("10.0.0.6", 1.0)
    assert rm.allow_connection_from("10.0.0.5", 1.0 + limits.flood_ban)


def test_streams_within_the_rate_never_flood() -> None:
    limits = ResourceLimits(stream_rate_per_conn=10, stream_burst_per_conn=5, stream_flood_close=20)
    conn = ResourceManager(limits).open_connection(Direction.INBOUND, None, 0.0)
    for i in range(100):
        conn.open_stream(Direction.INBOUND, i * 0.1).done()
    assert not conn.flooding


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)


def test_defaults_scale_with_the_machine() -> None:
    small = ResourceLimits.scaled(memory=512 * MiB, fds=256)
    big = ResourceLimits.scaled(memory=64 * 1024 * MiB, fds=65536)
    assert small.system_memory == 64 * MiB and small.system_fds == 128
    assert big.system_memory == 2048 * MiB and big.peer_memory == 64 * MiB
    assert small.peer_memory <= small.system_memory // 8
    with pytest.raises(ValueError):
        ResourceLimits(peer_conns=0)


# -- wired through yamux and the host ----------------------------------------------------------


async def sink_one_message(stream: Stream) -> None:
    # Reads one message and returns without waiting for EOF (what identify push did).
    await read_length_prefixed(stream, 1024)


def host_with(limits: ResourceLimits, **config: object) -> Host:
    host = Host(KeyPair.generate(), HostConfig(resources=limits, **config))  # type: ignore[arg-type]
    host.set_stream_handler(SINK, sink_one_message)

    async def hold(stream: Stream) -> None:
        await asyncio.sleep(3600)

    host.set_stream_handler(ONE, hold)
    return host


async def wait_for(predicate: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_streams_beyond_a_protocols_per_peer_limit_are_reset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = ResourceLimits(protocols={ONE: ProtocolLimits(100, 3)})
    async with host_with(limits) as victim, host_with(ResourceLimits()) as attacker:
        conn = await attacker.connect(victim.p2p_addrs()[0])
        # the victim refuses the 4th to 6th after negotiation: the opener sees a reset (while
        # negotiating or at its first read)
        outcomes: list[object] = []
        for _ in range(6):
            try:
                s = await conn.new_stream([ONE])
            except StreamReset:
                outcomes.append("reset")
                continue
            try:
                async with asyncio.timeout(0.5):
                    outcomes.append(await s.read())
            except StreamReset:
                outcomes.append("reset")
            except TimeoutError:
                outcomes.append("open")
        assert outcomes.count("reset") == 3 and outcomes.count("open") == 3
        assert victim.resources.refused["protocol_peer/streams_inbound"] == 3
    no_tracebacks(caplog)


async def test_a_handler_that_returns_early_gets_its_stream_reset_and_memory_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        host_with(ResourceLimits(), drain_timeout=0.3) as victim,
        host_with(ResourceLimits()) as attacker,
    ):
        conn = await attacker.connect(victim.p2p_addrs()[0])
        streams = []
        for _ in range(20):
            s = await conn.new_stream([SINK])
            await s.write(encode_length_prefixed(b"hello") + b"x" * 200_000)
            streams.append(s)
        for s in streams:
            with pytest.raises(StreamReset):
                async with asyncio.timeout(5):
                    while await s.read():
                        pass
        await wait_for(lambda: victim.resources.peer_usage(attacker.peer_id).get("memory", 0) == 0)
        await wait_for(
            lambda: victim.resources.peer_usage(attacker.peer_id).get("streams_inbound", 0) == 0
        )
    no_tracebacks(caplog)


async def test_a_peers_buffered_bytes_are_capped_and_streams_reset_beyond(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 64 streams each writing 256 KiB to a handler that never reads: 16 MiB, beyond a 4 MiB cap.
    limits = ResourceLimits(peer_memory=4 * MiB, conn_memory=4 * MiB)
    async with host_with(limits) as victim, host_with(ResourceLimits()) as attacker:
        conn = await attacker.connect(victim.p2p_addrs()[0])
        resets = 0

        async def push() -> None:
            nonlocal resets
            s = await conn.new_stream([ONE])
            try:
                async with asyncio.timeout(3):
                    await s.write(b"y" * 256 * 1024)
                    await s.read()
            except (StreamReset, TimeoutError):
                resets += 1

        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                used = victim.resources.peer_usage(attacker.peer_id).get("memory", 0)
                peak = max(peak, used)
                await asyncio.sleep(0.005)

        watcher = asyncio.ensure_future(watch())
        await asyncio.gather(*(push() for _ in range(64)))
        watcher.cancel()
        assert peak <= 4 * MiB
        assert victim.resources.refused["peer/memory"] + victim.resources.refused["conn/memory"] > 0
        assert resets > 0
    no_tracebacks(caplog)


async def test_connections_per_peer_are_capped() -> None:
    async with host_with(ResourceLimits(peer_conns=2)) as victim:
        hosts = [host_with(ResourceLimits()) for _ in range(1)]
        key = KeyPair.generate()
        # several hosts with one identity (a host dedups its own dials)
        same = [Host(key, HostConfig()) for _ in range(4)]
        for h in same:
            await h.start()
        results = []
        for h in same:
            try:
                await h.connect(victim.p2p_addrs()[0])
                results.append("ok")
            except P2PError:
                results.append("refused")
        await wait_for(lambda: len(victim.connections(same[0].peer_id)) <= 2)
        assert results.count("ok") >= 2
        await wait_for(lambda: victim.resources.refused["peer/conns"] >= 2)
        for h in same + hosts:
            await h.close()
        await wait_for(lambda: victim.resources.system.idle)
