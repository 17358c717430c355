"""The one clock a node reads, injected everywhere; a virtual one for simulations.

A node reads time only through its :class:`Clock`: ``monotonic()`` for timers, timeouts and
ages (seconds, arbitrary origin) and ``time()`` for wall-clock values that leave the process
(record timestamps, signed envelopes). Sans-IO cores never read a clock: adapters pass ``now``
in. :class:`SystemClock` is the real one; :class:`VirtualClock` only moves when told to, so a
simulation of many nodes is deterministic and runs as fast as the CPU allows
(:mod:`p2pnet.sim.loop` drives an asyncio loop from it).
"""

from __future__ import annotations

import time as _time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Monotonic time for timers, wall time for records."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for timers and ages)."""
        ...

    def time(self) -> float:
        """Seconds since the Unix epoch (for timestamps that other nodes read)."""
        ...


class SystemClock:
    """The machine's clocks. ``monotonic`` is the one asyncio's default loop uses."""

    # The C functions themselves, so reading the clock costs no Python call on hot paths.
    monotonic = staticmethod(_time.monotonic)
    time = staticmethod(_time.time)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


class VirtualClock:
    """A clock that moves only when :meth:`advance` (or :meth:`set`) is called.

    Wall time is ``wall_epoch + monotonic()``, so both views move together.
    """

    def __init__(self, start: float = 0.0, *, wall_epoch: float = 1_767_225_600.0) -> None:
        # wall_epoch default: 2026-01-01T00:00:00Z, a fixed point so runs are reproducible.
        self._now = start
        self._wall_epoch = wall_epoch

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._wall_epoch + self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        self._now += seconds

    def set(self, now: float) -> None:
        """Jump forward to ``now`` (no-op if it is in the past)."""
        if now > self._now:
            self._now = now

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now:.6f})"
