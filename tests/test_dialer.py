"""Dialling a peer at several addresses: ranking, the sans-IO scheduler on a virtual clock, and
the host over loopback TCP (a blackhole address does not cost a timeout, a relay is not used
when a direct address works, nothing leaks)."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from multiaddr import Multiaddr

from p2pnet.clock import VirtualClock
from p2pnet.crypto.keys import KeyPair
from p2pnet.errors import DialError, PeerIDMismatch
from p2pnet.host.config import HostConfig
from p2pnet.host.dial_ranker import (
    LOCAL_STAGGER,
    PUBLIC_STAGGER,
    RELAY_DELAY,
    PlannedDial,
    rank_addresses,
)
from p2pnet.host.dial_scheduler import DialScheduler, DialState
from p2pnet.host.dialer import DialFailed, dial_first
from p2pnet.host.host import Host
from p2pnet.peer.peer_id import PeerID
from p2pnet.protocols.ping import PingService
from p2pnet.sim import run_virtual
from p2pnet.transport.memory import MemoryNetwork

M = Multiaddr
RELAY_ID = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


def _plan(addrs: list[str]) -> list[tuple[str, float]]:
    return [(str(p.addr), round(p.delay, 6)) for p in rank_addresses([M(a) for a in addrs])]


# -- ranking ----------------------------------------------------------------------------------


def test_ranking_local_then_public_interleaved_then_relays() -> None:
    relayed = f"/ip4/1.0.0.1/tcp/4001/p2p/{RELAY_ID}/p2p-circuit"
    plan = _plan(
        [
            relayed,
            "/ip4/9.9.9.9/tcp/1",
            "/ip4/8.8.8.8/tcp/2",
            "/ip6/2606:4700::1111/tcp/3",
            "/dns4/example.org/tcp/4",
            "/ip4/192.168.1.5/tcp/5",
            "/ip4/127.0.0.1/tcp/6",
            "/ip4/127.0.0.1/tcp/6",  # a duplicate is dialled once
            "/memory/7",
        ]
    )
    L, P = LOCAL_STAGGER, PUBLIC_STAGGER
    expected = [
        ("/ip4/127.0.0.1/tcp/6", 0.0),
        ("/ip4/192.168.1.5/tcp/5", L),
        # public: IPv6 first, then alternating with IPv4 (names count as IPv4 for dns4)
        ("/ip6/2606:4700::1111/tcp/3", 2 * L),
        ("/ip4/9.9.9.9/tcp/1", 2 * L + P),
        ("/ip4/8.8.8.8/tcp/2", 2 * L + 2 * P),
        ("/dns4/example.org/tcp/4", 2 * L + 3 * P),
        ("/memory/7", 2 * L + 4 * P),
        # relayed: only RELAY_DELAY after the last direct address
        (relayed, 2 * L + 4 * P + RELAY_DELAY),
    ]
    assert plan == [(a, round(d, 6)) for a, d in expected]


def test_ranking_relays_alone_start_at_once() -> None:
    one = f"/ip4/1.0.0.1/tcp/4001/p2p/{RELAY_ID}/p2p-circuit"
    two = f"/ip4/1.1.1.1/tcp/4001/p2p/{RELAY_ID}/p2p-circuit"
    assert _plan([one, two]) == [(one, 0.0), (two, PUBLIC_STAGGER)]
    assert rank_addresses([]) == []


# -- the scheduler (sans-IO) ------------------------------------------------------------------


def _planned(*items: tuple[str, float]) -> list[PlannedDial]:
    return [PlannedDial(M(a), d) for a, d in items]


A, B, C = "/ip4/10.0.0.1/tcp/1", "/ip4/10.0.0.2/tcp/2", "/ip4/10.0.0.3/tcp/3"


def test_scheduler_staggers_and_the_first_success_wins() -> None:
    s = DialScheduler(_planned((A, 0.0), (B, 0.25), (C, 0.5)), now=100.0, timeout=15.0)
    step = s.poll(100.0)
    assert step.start == [M(A)] and step.wake_at == 100.25
    assert s.poll(100.1).start == []
    step = s.poll(100.25)
    assert step.start == [M(B)] and step.wake_at == 100.5
    assert s.succeeded(M(B))
    assert s.state is DialState.CONNECTED and s.winner == M(B)
    assert not s.succeeded(M(A))  # connected too late: the adapter closes it
    assert s.poll(100.6).start == []  # C is never started
    assert s.started == [M(A), M(B)]


def test_scheduler_moves_up_when_everything_under_way_failed() -> None:
    s = DialScheduler(_planned((A, 0.0), (B, 0.25), (C, 0.5)), now=0.0, timeout=15.0)
    assert s.poll(0.0).start == [M(A)]
    s.failed(M(A), DialError("refused"))
    step = s.poll(0.01)  # nothing under way: B starts now, not at 0.25
    assert step.start == [M(B)]
    assert step.wake_at == pytest.approx(0.26)  # C keeps its distance to B
    s.failed(M(B), DialError("refused"))
    assert s.poll(0.02).start == [M(C)]
    s.failed(M(C), DialError("unreachable"))
    assert s.poll(0.03).start == []
    assert s.state is DialState.FAILED
    summary = s.error_summary()
    assert all(a in summary for a in (A, B, C)) and "unreachable" in summary


def test_scheduler_overall_timeout_and_parallel_cap() -> None:
    plan = _planned(*((f"/ip4/10.0.0.{i}/tcp/1", 0.0) for i in range(1, 12)))
    s = DialScheduler(plan, now=0.0, timeout=5.0, max_parallel=8)
    step = s.poll(0.0)
    assert len(step.start) == 8 and step.wake_at == 5.0
    s.failed(step.start[0], DialError("refused"))
    assert len(s.poll(1.0).start) == 1  # a slot freed, the next one takes it
    assert s.poll(5.0).start == []
    assert s.state is DialState.TIMED_OUT
    assert "timed out after 5s (9 addresses tried)" in s.error_summary()
    assert len(s.in_flight) == 8
    assert not s.succeeded(M("/ip4/10.0.0.2/tcp/1"))  # too late to win
    assert len(s.abandoned()) == 7 and not s.in_flight
    assert DialScheduler([], now=0.0, timeout=1.0).state is DialState.FAILED


# -- the adapter on the virtual clock ---------------------------------------------------------


def test_dial_first_on_the_virtual_clock() -> None:
    """A slow first address (10 s to answer), a working second: the dial takes the second's
    time from its planned start, the first is cancelled, and a third that connected after
    the winner is discarded."""
    clock = VirtualClock()
    started: dict[str, float] = {}
    cancelled: list[str] = []
    discarded: list[str] = []
    answers = {A: (10.0, True), B: (0.1, True), C: (0.0, True)}

    async def attempt(addr: Multiaddr) -> str:
        started[str(addr)] = clock.monotonic()
        delay, ok = answers[str(addr)]
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            cancelled.append(str(addr))
            raise
        if not ok:
            raise DialError(f"{addr} refused")
        return str(addr)

    async def discard(conn: str) -> None:
        discarded.append(conn)

    async def main() -> tuple[str, float, int]:
        before = len(asyncio.all_tasks())
        t0 = clock.monotonic()
        winner = await dial_first(
            _planned((A, 0.0), (B, 0.25), (C, 0.35)),
            attempt,
            discard,
            clock=clock,
            timeout=15.0,
        )
        return winner, clock.monotonic() - t0, len(asyncio.all_tasks()) - before

    winner, took, extra_tasks = run_virtual(main(), clock)
    assert winner == B
    assert took == pytest.approx(0.35)  # B started at 0.25, answered 0.1 later
    assert started == {A: 0.0, B: pytest.approx(0.25), C: pytest.approx(0.35)}
    assert A in cancelled
    assert discarded == [C] or C in cancelled  # C finished at once, or was cancelled
    assert extra_tasks == 0


def test_dial_first_collects_every_error_and_times_out_on_the_virtual_clock() -> None:
    clock = VirtualClock()

    async def refused(addr: Multiaddr) -> str:
        await asyncio.sleep(0.01)
        raise DialError(f"{addr}: connection refused")

    async def hangs(addr: Multiaddr) -> str:
        await asyncio.sleep(3600)
        return "never"

    async def nothing(_: str) -> None:
        return None

    async def main() -> None:
        with pytest.raises(DialFailed) as info:
            await dial_first(
                _planned((A, 0.0), (B, 0.25)), refused, nothing, clock=clock, timeout=15.0
            )
        assert not info.value.timed_out
        assert [str(a) for a, _ in info.value.errors] == [A, B]
        # every address failed within 0.02 s: B did not wait for its 0.25 s slot
        assert clock.monotonic() == pytest.approx(0.02)
        t0 = clock.monotonic()
        with pytest.raises(DialFailed, match="timed out after 15s") as info:
            await dial_first(_planned((A, 0.0)), hangs, nothing, clock=clock, timeout=15.0)
        assert info.value.timed_out
        assert clock.monotonic() - t0 == pytest.approx(15.0)

    run_virtual(main(), clock)


def test_dial_first_of_one_address_runs_it_in_the_callers_task() -> None:
    clock = VirtualClock()

    async def nothing(_: object) -> None:
        return None

    async def main() -> None:
        caller = asyncio.current_task()

        async def here(addr: Multiaddr) -> asyncio.Task[object] | None:
            return asyncio.current_task()

        assert await dial_first(_planned((A, 0.0)), here, nothing, clock=clock, timeout=5) is caller

        # a timeout of the attempt's own (a TCP connect timeout) is that address's error,
        # not the dial's overall timeout
        async def own_timeout(addr: Multiaddr) -> str:
            await asyncio.sleep(1.0)
            raise TimeoutError("connect timed out")

        with pytest.raises(DialFailed) as info:
            await dial_first(_planned((A, 0.0)), own_timeout, nothing, clock=clock, timeout=5)
        assert not info.value.timed_out
        assert [(str(a), str(e)) for a, e in info.value.errors] == [(A, "connect timed out")]

    run_virtual(main(), clock)


def test_host_dial_on_a_virtual_clock_skips_a_silent_address() -> None:
    """Two hosts on a memory network, the peer's first address accepts and never speaks: the
    dial connects through the second in a fraction of a second of virtual time, not after the
    10 s upgrade timeout."""
    clock = VirtualClock()

    async def main() -> float:
        net = MemoryNetwork()
        silent = await net.transport().listen(M("/memory/0"), _never_speak)
        config = HostConfig(listen_addrs=["/memory/0"])
        a = Host(KeyPair.generate(), config, transports=[net.transport()], clock=clock)
        b = Host(KeyPair.generate(), config, transports=[net.transport()], clock=clock)
        async with a, b:
            a.peerstore.add_addrs(b.peer_id, [silent.multiaddrs[0], *b.listen_addrs], 60)
            t0 = clock.monotonic()
            conn = await a.connect_peer(b.peer_id)
            took = clock.monotonic() - t0
            assert conn.remote_peer == b.peer_id and conn.remote_addr == b.listen_addrs[0]
        await silent.close()
        return took

    took = run_virtual(main(), clock)
    assert took < 1.0


async def _never_speak(raw: object) -> None:
    await asyncio.Event().wait()


# -- the host over loopback TCP ---------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_blackhole_first_address_does_not_cost_the_timeout() -> None:
    """The first address accepts TCP and never says a word (a blackhole): the dial still
    connects through the second address at once; the blackhole's connection is closed by us,
    and no task or fd is left behind."""
    blackhole = socket.create_server(("127.0.0.1", 0))
    blackhole.setblocking(False)
    port = blackhole.getsockname()[1]
    accepted: list[socket.socket] = []
    loop = asyncio.get_running_loop()

    def accept() -> None:
        conn, _ = blackhole.accept()
        accepted.append(conn)

    loop.add_reader(blackhole.fileno(), accept)
    target = Host(KeyPair.generate())
    PingService(target)
    try:
        async with target:
            fds = _open_fds()
            tasks = len(asyncio.all_tasks())
            dialer = Host(KeyPair.generate(), HostConfig(upgrade_timeout=10.0))
            ping = PingService(dialer)
            async with dialer:
                dialer.peerstore.add_addrs(
                    target.peer_id, [M(f"/ip4/127.0.0.1/tcp/{port}"), *target.listen_addrs], 60
                )
                t0 = loop.time()
                conn = await dialer.connect_peer(target.peer_id)
                took = loop.time() - t0
                assert conn.remote_addr == target.listen_addrs[0]
                assert took < 2.0, took  # not the 10 s upgrade timeout of the blackhole
                assert await ping.ping(target.peer_id)
                assert dialer.dial_attempts == 2 and dialer.dial_failures == 0
                # the attempt at the blackhole was cancelled and its socket closed
                async with asyncio.timeout(5):
                    while not accepted:
                        await asyncio.sleep(0.01)
                    accepted[0].setblocking(False)
                    while True:
                        try:
                            if accepted[0].recv(4096) == b"":
                                break
                        except BlockingIOError:
                            await asyncio.sleep(0.01)
            async with asyncio.timeout(5):
                while len(asyncio.all_tasks()) > tasks:
                    await asyncio.sleep(0.01)
            for conn_sock in accepted:
                conn_sock.close()
            accepted.clear()
            assert _open_fds() <= fds
    finally:
        loop.remove_reader(blackhole.fileno())
        blackhole.close()
        for conn_sock in accepted:
            conn_sock.close()


async def test_all_addresses_fail_one_clear_error() -> None:
    refusing = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    ports = [s.getsockname()[1] for s in refusing]
    for s in refusing:
        s.close()  # nothing listens there now: connection refused
    target = PeerID.from_public_key(KeyPair.generate().public_key)
    async with Host(KeyPair.generate()) as dialer:
        dialer.peerstore.add_addrs(target, [M(f"/ip4/127.0.0.1/tcp/{p}") for p in ports], 60)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(DialError) as info:
            await dialer.connect_peer(target)
        message = str(info.value)
        assert message.startswith(f"could not dial {target}")
        assert all(f"/tcp/{p}:" in message for p in ports)
        assert asyncio.get_running_loop().time() - t0 < 1.0
        assert dialer.dial_failures == 2


async def test_one_address_keeps_its_own_error() -> None:
    async with Host(KeyPair.generate()) as target, Host(KeyPair.generate()) as dialer:
        other = PeerID.from_public_key(KeyPair.generate().public_key)
        with pytest.raises(PeerIDMismatch):
            await dialer.connect(target.listen_addrs[0], peer=other)


async def test_concurrent_dials_share_one_attempt() -> None:
    async with Host(KeyPair.generate()) as target, Host(KeyPair.generate()) as dialer:
        dialer.peerstore.add_addrs(target.peer_id, target.listen_addrs, 60)
        conns = await asyncio.gather(*(dialer.connect_peer(target.peer_id) for _ in range(5)))
        assert all(c is conns[0] for c in conns)
        assert dialer.dial_attempts == 1
        assert len(dialer.connections(target.peer_id)) == 1


async def test_host_closed_during_a_dial_ends_it_cleanly() -> None:
    """close() while a dial waits on a silent address (upgrade timeout 10 s): the dial runs in a
    task the host owns, so it ends at once with a DialError, its attempt's socket is closed and
    nothing is left running."""
    blackhole = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    loop = asyncio.get_running_loop()
    blackhole.setblocking(False)
    loop.add_reader(blackhole.fileno(), lambda: held.append(blackhole.accept()[0]))
    target = PeerID.from_public_key(KeyPair.generate().public_key)
    try:
        tasks = len(asyncio.all_tasks())
        dialer = Host(KeyPair.generate(), HostConfig(upgrade_timeout=10.0))
        await dialer.start()
        port = blackhole.getsockname()[1]
        dialer.peerstore.add_addrs(target, [M(f"/ip4/127.0.0.1/tcp/{port}")], 60)
        dials = [asyncio.ensure_future(dialer.connect_peer(target)) for _ in range(2)]
        async with asyncio.timeout(5):
            while not held:
                await asyncio.sleep(0.01)
        t0 = loop.time()
        await dialer.close()
        for dial in dials:
            with pytest.raises(DialError, match="aborted"):
                await dial
        assert loop.time() - t0 < 2.0
        held[0].setblocking(False)
        async with asyncio.timeout(5):
            while True:  # our side of the blackhole connection was closed
                try:
                    if held[0].recv(4096) == b"":
                        break
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            while len(asyncio.all_tasks()) > tasks:
                await asyncio.sleep(0.01)
        with pytest.raises(DialError, match="closed"):
            await dialer.connect_peer(target)
    finally:
        loop.remove_reader(blackhole.fileno())
        blackhole.close()
        for sock in held:
            sock.close()


async def test_a_caller_that_gives_up_does_not_end_the_dial_for_others() -> None:
    async with Host(KeyPair.generate()) as target, Host(KeyPair.generate()) as dialer:
        dialer.peerstore.add_addrs(target.peer_id, target.listen_addrs, 60)
        first = asyncio.ensure_future(dialer.connect_peer(target.peer_id))
        second = asyncio.ensure_future(dialer.connect_peer(target.peer_id))
        await asyncio.sleep(0)
        first.cancel()
        conn = await asyncio.wait_for(second, 10)
        assert conn.remote_peer == target.peer_id and dialer.dial_attempts == 1
