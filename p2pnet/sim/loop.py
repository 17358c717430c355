"""An asyncio event loop whose time is a :class:`~p2pnet.clock.VirtualClock`.

With the memory transport nothing waits on a socket, so whenever the loop has no ready callback it
may jump the clock straight to its next timer instead of sleeping. Every ``asyncio.sleep``,
``asyncio.timeout`` and ``call_later`` in the stack then costs no real time: a network of
thousands of nodes runs through minutes of protocol time in seconds, and the same seed gives the
same run. Real file descriptors (the loop's own self-pipe, subprocess pipes) still work: the loop
polls them without blocking before it moves the clock.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

from p2pnet.clock import VirtualClock

T = TypeVar("T")


class _VirtualSelector(selectors.DefaultSelector):
    """A selector that, instead of blocking for ``timeout``, advances the virtual clock by it."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout is None or timeout <= 0:
            if not ready and timeout is None:
                # Nothing scheduled and nothing ready: only an outside event can wake us.
                return super().select(None)
            return ready
        self._clock.advance(timeout)
        return []


class VirtualTimeEventLoop(asyncio.SelectorEventLoop):
    """``asyncio.SelectorEventLoop`` whose ``time()`` is ``clock.monotonic()``."""

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock if clock is not None else VirtualClock()
        super().__init__(selector=_VirtualSelector(self.clock))

    def time(self) -> float:
        return self.clock.monotonic()


def run_virtual(main: Coroutine[Any, Any, T], clock: VirtualClock | None = None) -> T:
    """Run ``main`` on a fresh :class:`VirtualTimeEventLoop`, like ``asyncio.run``."""
    loop = VirtualTimeEventLoop(clock)
    runner = asyncio.Runner(loop_factory=lambda: loop)
    with runner:
        return runner.run(main)
