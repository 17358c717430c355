"""The bounded fan-out of events: filters, loss accounting, count and byte budgets."""

from __future__ import annotations

import pytest

from p2pnet.eventbus import EventBus


async def test_predicate_and_loss_accounting() -> None:
    bus: EventBus[int] = EventBus(3)
    evens = bus.subscribe(lambda n: n % 2 == 0)
    every = bus.subscribe()
    for n in range(10):
        bus.emit(n)
    bus.close()
    # Each consumer keeps the newest 3 of what it wants; the loss is told once, in order.
    assert [await every.next(1) for _ in range(3)] == [7, 8, 9]
    assert every.take_dropped() == 7 and every.take_dropped() == 0
    assert [n async for n in evens] == [4, 6, 8]
    assert evens.dropped == 2 and bus.dropped == 9
    assert [n async for n in every] == []  # the end comes after what was queued
    assert bus.subscribers == 0


async def test_byte_budget_keeps_the_newest_that_fit() -> None:
    bus: EventBus[bytes] = EventBus(100, max_bytes=10, sizeof=len)
    stream = bus.subscribe()
    for chunk in (b"aaaa", b"bbbb", b"cc", b"dddd"):
        bus.emit(chunk)
    assert stream.dropped == 1  # aaaa went to make room for dddd
    assert await stream.next(1) == b"bbbb"
    bus.emit(b"x" * 50)  # larger than the budget: kept alone
    assert stream.dropped == 3
    assert await stream.next(1) == b"x" * 50
    bus.emit(b"ee")
    assert await stream.next(1) == b"ee" and stream.dropped == 3
    with pytest.raises(ValueError):
        EventBus(1, max_bytes=1)
