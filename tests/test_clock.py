"""The node clock and the virtual-time event loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from p2pnet.clock import SYSTEM_CLOCK, Clock, SystemClock, VirtualClock
from p2pnet.sim import VirtualTimeEventLoop, run_virtual


def test_system_clock_is_a_clock() -> None:
    assert isinstance(SYSTEM_CLOCK, Clock)
    a = SystemClock().monotonic()
    assert SystemClock().monotonic() >= a
    assert abs(SystemClock().time() - time.time()) < 5


def test_virtual_clock_moves_only_when_told() -> None:
    clock = VirtualClock(10.0, wall_epoch=1000.0)
    assert isinstance(clock, Clock)
    assert clock.monotonic() == 10.0
    assert clock.time() == 1010.0
    clock.advance(2.5)
    assert clock.monotonic() == 12.5
    clock.set(5.0)  # the past: ignored
    assert clock.monotonic() == 12.5
    clock.set(20.0)
    assert clock.time() == 1020.0
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_virtual_loop_runs_an_hour_of_timers_without_waiting() -> None:
    clock = VirtualClock()
    order: list[str] = []

    async def main() -> float:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeEventLoop)
        started = time.monotonic()

        async def sleeper(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            order.append(name)

        await asyncio.gather(sleeper("late", 3600), sleeper("early", 60))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.sleep(100)
        return time.monotonic() - started

    real = run_virtual(main(), clock)
    assert order == ["early", "late"]
    assert clock.monotonic() == pytest.approx(3605.0)
    assert real < 5.0  # an hour and five seconds of protocol time, no real waiting


def test_virtual_loop_still_serves_call_soon_threadsafe() -> None:
    # The loop's self-pipe is a real fd: a wake-up from another thread must still arrive.
    async def main() -> str:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        loop.run_in_executor(None, lambda: loop.call_soon_threadsafe(fut.set_result, "woken"))
        return await fut

    assert run_virtual(main()) == "woken"
