"""Waiters: what yamux streams and connections wait with instead of asyncio.Event."""

from __future__ import annotations

import asyncio

import pytest

from p2pnet.waiters import Waiters


async def test_wake_releases_every_waiter_and_only_those_waiting() -> None:
    w = Waiters()
    w.wake()  # nobody waits: nothing is remembered
    tasks = [asyncio.create_task(w.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert w.waiting == 3
    w.wake()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert w.waiting == 0
    late = asyncio.create_task(w.wait())
    await asyncio.sleep(0)
    assert not late.done()  # the earlier wake does not count for a later waiter
    w.wake()
    await asyncio.wait_for(late, 1)


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    w = Waiters()
    task = asyncio.create_task(w.wait())
    other = asyncio.create_task(w.wait())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert w.waiting == 1
    w.wake()
    await asyncio.wait_for(other, 1)
    assert w.waiting == 0
