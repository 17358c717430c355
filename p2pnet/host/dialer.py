"""The asyncio side of dialling a peer at several addresses (see ``dial_scheduler.py``).

:func:`dial_first` runs one attempt per address the :class:`DialScheduler` starts, each in its
own task, and returns the first that connects. The others are cancelled (an attempt cancelled
mid-way aborts its socket); one that connected anyway is handed to ``discard``, which closes
it. Nothing outlives the call: when it returns or raises, every task it made has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from multiaddr import Multiaddr

from p2pnet.clock import Clock
from p2pnet.errors import DialError
from p2pnet.host.dial_ranker import PlannedDial
from p2pnet.host.dial_scheduler import MAX_PARALLEL, DialScheduler, DialState

T = TypeVar("T")


class DialFailed(DialError):
    """No address connected: ``errors`` has each address's error, ``timed_out`` says whether
    the overall timeout ended the dial."""

    def __init__(
        self, message: str, errors: list[tuple[Multiaddr, BaseException]], timed_out: bool
    ):
        super().__init__(message)
        self.errors = errors
        self.timed_out = timed_out


async def dial_first(
    plan: Sequence[PlannedDial],
    attempt: Callable[[Multiaddr], Awaitable[T]],
    discard: Callable[[T], Awaitable[None]],
    *,
    clock: Clock,
    timeout: float,
    what: str = "peer",
    max_parallel: int = MAX_PARALLEL,
) -> T:
    """The result of the first ``attempt`` to succeed, following ``plan``."""
    scheduler = DialScheduler(plan, clock.monotonic(), timeout, max_parallel=max_parallel)
    if len(plan) == 1:
        return await _dial_only(scheduler, attempt, discard, clock, what)
    tasks: dict[asyncio.Future[T], Multiaddr] = {}
    won: list[T] = []
    try:
        while True:
            step = scheduler.poll(clock.monotonic())
            for addr in step.start:
                tasks[asyncio.ensure_future(attempt(addr))] = addr
            if scheduler.finished:
                break
            wait = None if step.wake_at is None else max(0.0, step.wake_at - clock.monotonic())
            if not tasks:  # pragma: no cover - the scheduler always has an attempt under way
                await asyncio.sleep(wait or 0.0)
                continue
            done, _ = await asyncio.wait(tasks, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            # in plan order, so of two that finished together the better-ranked one wins
            for task in [t for t in tasks if t in done]:
                addr = tasks.pop(task)
                if task.cancelled():
                    scheduler.failed(addr, DialError("attempt cancelled"))
                    continue
                exc = task.exception()
                if exc is not None:
                    scheduler.failed(addr, exc)
                elif scheduler.succeeded(addr):
                    won.append(task.result())
                else:
                    await discard(task.result())
    finally:
        await _end(tasks, discard)
    if won:
        return won[0]
    timed_out = scheduler.state is DialState.TIMED_OUT
    raise DialFailed(
        f"could not dial {what}: {scheduler.error_summary()}", scheduler.errors, timed_out
    )


async def _dial_only(
    scheduler: DialScheduler,
    attempt: Callable[[Multiaddr], Awaitable[T]],
    discard: Callable[[T], Awaitable[None]],
    clock: Clock,
    what: str,
) -> T:
    """A plan of one address (the usual case: one known address): the attempt runs in the
    caller's task, with nothing to race against, under the overall timeout."""
    step = scheduler.poll(clock.monotonic())
    for addr in step.start:
        try:
            async with asyncio.timeout(max(0.0, scheduler.deadline - clock.monotonic())) as cm:
                result = await attempt(addr)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and cm.expired():
                scheduler.poll(max(clock.monotonic(), scheduler.deadline))  # timed out
            else:
                scheduler.failed(addr, exc)
                scheduler.poll(clock.monotonic())
        else:
            if scheduler.succeeded(addr):
                return result
            await discard(result)  # pragma: no cover - nothing else can have decided the dial
    timed_out = scheduler.state is DialState.TIMED_OUT
    raise DialFailed(
        f"could not dial {what}: {scheduler.error_summary()}", scheduler.errors, timed_out
    )


async def _end(
    tasks: dict[asyncio.Future[T], Multiaddr], discard: Callable[[T], Awaitable[None]]
) -> None:
    """Cancel the attempts still under way and wait for them; close what they connected."""
    left = list(tasks)
    tasks.clear()
    for task in left:
        task.cancel()
    if not left:
        return
    # Cancelled attempts end promptly; wait for them even if we are cancelled meanwhile, so
    # that no attempt (and no socket) outlives the dial.
    ended = asyncio.ensure_future(asyncio.wait(left))
    interrupted = False
    while not ended.done():
        try:
            await asyncio.shield(ended)
        except asyncio.CancelledError:
            interrupted = True
    for task in left:
        if task.cancelled():
            continue
        if task.exception() is None:  # connected before the cancellation reached it
            await discard(task.result())
    if interrupted:
        raise asyncio.CancelledError
