"""The resource manager: scopes, refusals, and its wiring through yamux and the host."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pnet.crypto.keys import KeyPair
from p2pnet.errors import P2PError, ResourceLimitExceeded, StreamReset
from p2pnet.host.config import HostConfig
from p2pnet.host.host import Host
from p2pnet.peer.peer_id import PeerID
from p2pnet.resources import (
    ConnectionScope,
    ProtocolLimits,
    ResourceLimits,
    ResourceManager,
    TokenBucket,
)
from p2pnet.resources.limits import MiB
from p2pnet.stream import Direction, Stream
from p2pnet.wire.framing import encode_length_prefixed, read_length_prefixed
from p2pnet.wire.varint import encode_uvarint

SINK = "/test/sink/1.0.0"
BIG = "/test/big/1.0.0"
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


class Aborts:
    """What the host gives ``open_connection`` as ``on_evict``: records which were aborted."""

    def __init__(self) -> None:
        self.aborted: list[str] = []

    def hook(self, name: str) -> Callable[[], None]:
        return lambda: self.aborted.append(name)


def test_a_full_transient_scope_evicts_the_oldest_upgrade_of_the_biggest_address() -> None:
    rm = ResourceManager(ResourceLimits(transient_conns=6, transient_conns_per_ip=4))
    aborts = Aborts()
    opened: dict[str, ConnectionScope] = {}

    def open_from(ip: str, name: str, now: float) -> ConnectionScope:
        opened[name] = rm.open_connection(Direction.INBOUND, ip, now, on_evict=aborts.hook(name))
        return opened[name]

    # two stalling addresses fill the transient scope: a1..a3 and b1..b3
    for i in range(3):
        open_from("10.0.0.1", f"a{i + 1}", float(i))
        open_from("10.0.0.2", f"b{i + 1}", float(i) + 0.5)
    # an honest newcomer: the oldest upgrade of the (first of the) biggest addresses makes room
    open_from("10.0.0.9", "honest", 10.0)
    assert aborts.aborted == ["a1"] and opened["a1"].evicted
    # more from a: with the newcomer a would hold 3, as many as b: a evicts its own oldest
    open_from("10.0.0.1", "a4", 11.0)
    assert aborts.aborted == ["a1", "a2"]
    # a new address holding one: the oldest of b (3, the most) goes
    open_from("10.0.0.3", "c1", 12.0)
    assert aborts.aborted == ["a1", "a2", "b1"]
    # a and b hold 2 each (a3 opened at 2.0, b2 at 1.5), the honest and c 1 each: from a
    # fresh address, the older of the two biggest addresses' oldest goes
    open_from("10.0.0.4", "d1", 13.0)
    assert aborts.aborted == ["a1", "a2", "b1", "b2"]
    # the honest connection, the only one of its address, is never the one evicted
    for i in range(20):
        open_from(f"10.0.1.{i % 2}", f"x{i}", 20.0 + i)
    assert "honest" not in aborts.aborted
    assert rm.transient.used("conns") == 6
    assert rm.refused["transient/conns_evicted"] == len(aborts.aborted)
    assert rm.stat()["evicted"] == {"transient/conns_evicted": len(aborts.aborted)}
    # an evicted connection's upgrade may not finish; its scope gave everything back
    with pytest.raises(ResourceLimitExceeded):
        opened["a1"].set_peer(peer())
    # once the honest handshake is done it leaves the transient scope: no longer evictable
    opened["honest"].set_peer(peer())
    for scope in opened.values():
        scope.done()
    assert rm.system.idle and rm.transient.idle
    assert rm.stat()["scopes"] == {"peers": 0, "ips": 0, "protocols": 0}


def test_an_address_at_its_share_evicts_its_own_oldest_upgrade() -> None:
    rm = ResourceManager(ResourceLimits(transient_conns=100, transient_conns_per_ip=2))
    aborts = Aborts()
    scopes = [
        rm.open_connection(Direction.INBOUND, "10.0.0.1", float(i), on_evict=aborts.hook(str(i)))
        for i in range(5)
    ]
    assert aborts.aborted == ["0", "1", "2"]
    assert [s.evicted for s in scopes] == [True, True, True, False, False]
    assert rm.refused["ip/conns_transient_evicted"] == 3
    assert rm.transient.used("conns") == 2


def test_what_cannot_be_evicted_is_refused() -> None:
    rm = ResourceManager(ResourceLimits(transient_conns=2, system_conns_inbound=3))
    # outbound dials and connections opened without on_evict (a hole punch) stay
    rm.open_connection(Direction.OUTBOUND, None, 0.0)
    rm.open_connection(Direction.INBOUND, "10.0.0.1", 0.0)
    with pytest.raises(ResourceLimitExceeded) as info:
        rm.open_connection(Direction.INBOUND, "10.0.0.2", 1.0, on_evict=lambda: None)
    assert info.value.scope == "transient"
    # nothing is evicted when another limit (here the system's inbound connections) refuses
    rm2 = ResourceManager(ResourceLimits(transient_conns=2, system_conns_inbound=3))
    aborts = Aborts()
    a = rm2.open_connection(Direction.INBOUND, "10.0.0.1", 0.0, on_evict=aborts.hook("a"))
    rm2.open_connection(Direction.INBOUND, "10.0.0.1", 0.0, on_evict=aborts.hook("b"))
    a.set_peer(peer())  # established: out of the transient scope, still a system connection
    rm2.open_connection(Direction.INBOUND, "10.0.0.2", 0.0, on_evict=aborts.hook("c"))
    with pytest.raises(ResourceLimitExceeded):
        rm2.open_connection(Direction.INBOUND, "10.0.0.3", 1.0, on_evict=aborts.hook("d"))
    assert aborts.aborted == []
    assert rm2.refused["transient/conns"] == 1


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


async def test_stalled_handshakes_are_evicted_for_a_new_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # two slots for connections in their upgrade, both taken by connections that never speak
    async with host_with(ResourceLimits(transient_conns=2)) as victim:
        addr = victim.p2p_addrs()[0]
        host, port = addr.value_for_protocol("ip4"), int(addr.value_for_protocol("tcp"))
        stalled = [await asyncio.open_connection(host, port) for _ in range(2)]
        await wait_for(lambda: victim.resources.transient.used("conns") == 2)
        async with host_with(ResourceLimits()) as honest:
            await honest.connect(addr)  # evicts the oldest stalled one
        assert victim.resources.refused["ip/conns_transient_evicted"] == 0
        assert victim.resources.refused["transient/conns_evicted"] == 1
        async with asyncio.timeout(5):  # the victim dropped it: EOF (or a reset)
            with contextlib.suppress(ConnectionError):
                while await stalled[0][0].read():  # (after the victim's multistream header)
                    pass
        for _, writer in stalled:
            writer.close()
        await wait_for(lambda: victim.resources.transient.idle)
    no_tracebacks(caplog)


def test_the_documented_defaults_are_the_scaled_ones() -> None:
    """docs/limits.md's table gives the defaults of a 1 GiB machine with 1024 fds: they must be
    what ``ResourceLimits.scaled`` makes (the table is the one place they are documented)."""
    doc = (Path(__file__).parent.parent / "docs" / "limits.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2:
            rows.setdefault(cells[0], cells[1])
    lim = ResourceLimits.scaled(1 << 30, 1024)

    def mib(n: int) -> str:
        return f"{n // MiB} MiB"

    expected = {
        "system memory": mib(lim.system_memory),
        "system fds": str(lim.system_fds),
        "system connections in / out": f"{lim.system_conns_inbound} / {lim.system_conns_outbound}",
        "system streams in / out": (
            f"{lim.system_streams_inbound} / {lim.system_streams_outbound}"
        ),
        "transient connections (in upgrade)": str(lim.transient_conns),
        "transient connections per address": str(lim.transient_conns_per_ip),
        "transient streams (negotiating)": str(lim.transient_streams),
        "transient memory": mib(lim.transient_memory),
        "connections per address": str(lim.conns_per_ip),
        "new connections per address": (
            f"{lim.conn_rate_per_ip:g}/s, burst {lim.conn_burst_per_ip}"
        ),
        "connections per peer": str(lim.peer_conns),
        "streams per peer in / out": f"{lim.peer_streams_inbound} / {lim.peer_streams_outbound}",
        "memory per peer": f"{mib(lim.peer_memory)} (64 MiB at most)",
        "streams per connection in / out": (
            f"{lim.conn_streams_inbound} / {lim.conn_streams_outbound}"
        ),
        "new inbound streams per connection": (
            f"{lim.stream_rate_per_conn:g}/s, burst {lim.stream_burst_per_conn}"
        ),
        "memory per stream": mib(lim.stream_memory),
    }
    assert {name: rows.get(name) for name in expected} == expected
    assert rows["refused streams per connection"].startswith(f"{lim.stream_flood_close},")


def test_fds_and_outbound_connections_are_limited() -> None:
    rm = ResourceManager(ResourceLimits(system_fds=2, system_conns_outbound=1))
    a = rm.open_connection(Direction.OUTBOUND, None, 0.0)
    with pytest.raises(ResourceLimitExceeded) as info:
        rm.open_connection(Direction.OUTBOUND, None, 0.0)
    assert (info.value.scope, info.value.resource) == ("system", "conns_outbound")
    rm.open_connection(Direction.INBOUND, "10.0.0.1", 0.0)
    with pytest.raises(ResourceLimitExceeded) as info:
        rm.open_connection(Direction.INBOUND, "10.0.0.2", 0.0)
    assert (info.value.scope, info.value.resource) == ("system", "fds")
    a.done()
    rm.open_connection(Direction.INBOUND, "10.0.0.2", 0.0)  # its fd came back
    assert rm.refused["system/conns_outbound"] == 1 and rm.refused["system/fds"] == 1


async def test_a_frame_under_assembly_counts_against_the_peers_memory(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A length-prefixed frame being read holds its announced size in the peer's scope from
    its prefix on (not its bytes so far): a second frame beyond the peer's memory is refused and
    its stream reset, and everything is given back."""
    limits = ResourceLimits(peer_memory=4 * MiB, conn_memory=4 * MiB, stream_memory=4 * MiB)
    async with host_with(limits) as victim, host_with(ResourceLimits()) as attacker:

        async def read_big(stream: Stream) -> None:
            await read_length_prefixed(stream, 16 * MiB)

        victim.set_stream_handler(BIG, read_big)
        conn = await attacker.connect(victim.p2p_addrs()[0])
        first = await conn.new_stream([BIG])
        await first.write(encode_uvarint(3 * MiB) + b"x" * 1000)
        usage = victim.resources.peer_usage
        await wait_for(lambda: usage(attacker.peer_id).get("memory", 0) >= 3 * MiB)
        second = await conn.new_stream([BIG])
        await second.write(encode_uvarint(2 * MiB) + b"y" * 1000)
        with pytest.raises(StreamReset):
            async with asyncio.timeout(5):
                while await second.read():
                    pass
        refused = victim.resources.refused
        assert refused["peer/memory"] + refused["conn/memory"] >= 1
        await first.reset()
        await wait_for(lambda: usage(attacker.peer_id).get("memory", 0) == 0)
    no_tracebacks(caplog)


def test_new_connections_per_address_are_rate_limited_with_a_burst() -> None:
    rm = ResourceManager(ResourceLimits(conn_rate_per_ip=2.0, conn_burst_per_ip=3))
    assert [rm.allow_connection_from("10.0.0.1", 0.0) for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    assert rm.allow_connection_from("10.0.0.2", 0.0)  # each address has its own bucket
    assert rm.allow_connection_from("10.0.0.1", 0.5)  # refilled at 2/s
    assert not rm.allow_connection_from("10.0.0.1", 0.5)
    assert rm.refused["ip/conn_rate"] == 2
