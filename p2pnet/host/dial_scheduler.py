"""Dialling one peer at several addresses at once (sans-IO).

:class:`DialScheduler` follows a plan from :func:`~p2pnet.host.dial_ranker.rank_addresses`:
``now`` and the outcome of each attempt go in; which addresses to start and when to look again
come out (:meth:`DialScheduler.poll`). The first attempt to succeed wins (the adapter cancels
the others and closes whatever connection they still make); when every attempt under way has
failed, the next planned address starts at once and the rest of the plan moves up by as much;
past the overall timeout, or once every address failed, the dial fails with every address's
error (:meth:`DialScheduler.error_summary`).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from multiaddr import Multiaddr

from p2pnet.host.dial_ranker import PlannedDial

#: Attempts under way at once for one peer (a peer may list many addresses).
MAX_PARALLEL = 8
#: Start times within this of ``now`` are due (plan delays are sums of floats).
_EPSILON = 1e-9


class DialState(enum.Enum):
    DIALING = "dialing"
    CONNECTED = "connected"
    FAILED = "failed"  # every address failed
    TIMED_OUT = "timed out"


@dataclass
class DialStep:
    """What the adapter does now: start these addresses, and poll again at ``wake_at`` (or
    when an attempt ends)."""

    start: list[Multiaddr] = field(default_factory=list)
    wake_at: float | None = None


class DialScheduler:
    def __init__(
        self,
        plan: Sequence[PlannedDial],
        now: float,
        timeout: float,
        max_parallel: int = MAX_PARALLEL,
    ) -> None:
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        self._pending: deque[PlannedDial] = deque(plan)
        self._origin = now
        self.deadline = now + timeout
        self.timeout = timeout
        self.max_parallel = max_parallel
        self.in_flight: set[Multiaddr] = set()
        #: Every failed attempt, in the order they failed.
        self.errors: list[tuple[Multiaddr, BaseException]] = []
        self.state = DialState.DIALING if self._pending else DialState.FAILED
        self.winner: Multiaddr | None = None
        #: Addresses started, in order (for tests and logs).
        self.started: list[Multiaddr] = []

    @property
    def finished(self) -> bool:
        return self.state is not DialState.DIALING

    def poll(self, now: float) -> DialStep:
        if self.finished:
            return DialStep()
        if now >= self.deadline:
            self.state = DialState.TIMED_OUT
            return DialStep()
        step = DialStep()
        if not self.in_flight and self._pending:
            # nothing under way (at the start, or every attempt failed): no reason to wait;
            # the rest of the plan moves up by as much
            self._origin = min(self._origin, now - self._pending[0].delay)
            self._start(step)
        while self._pending and len(self.in_flight) < self.max_parallel:
            if self._origin + self._pending[0].delay > now + _EPSILON:
                break
            self._start(step)
        if not self.in_flight and not self._pending:
            self.state = DialState.FAILED
            return step
        wake = self.deadline
        if self._pending and len(self.in_flight) < self.max_parallel:
            wake = min(wake, self._origin + self._pending[0].delay)
        step.wake_at = wake
        return step

    def _start(self, step: DialStep) -> None:
        planned = self._pending.popleft()
        self.in_flight.add(planned.addr)
        self.started.append(planned.addr)
        step.start.append(planned.addr)

    def failed(self, addr: Multiaddr, error: BaseException) -> None:
        """The attempt at ``addr`` failed (call :meth:`poll` next)."""
        self.in_flight.discard(addr)
        self.errors.append((addr, error))

    def succeeded(self, addr: Multiaddr) -> bool:
        """The attempt at ``addr`` connected. True: it is the winner; False: another won
        before, and this connection must be closed."""
        self.in_flight.discard(addr)
        if self.state is not DialState.DIALING:
            return False  # another won, or the dial already timed out
        self.state = DialState.CONNECTED
        self.winner = addr
        return True

    def abandoned(self) -> list[Multiaddr]:
        """The attempts still under way once the dial is decided: the adapter cancels them."""
        left = list(self.in_flight)
        self.in_flight.clear()
        return left

    def error_summary(self) -> str:
        """Every address's error, one after another; what a failed dial reports."""
        parts = [f"{addr}: {err}" for addr, err in self.errors]
        if self.state is DialState.TIMED_OUT:
            tried = len(self.started)
            parts.append(f"timed out after {self.timeout:g}s ({tried} addresses tried)")
        return "; ".join(parts) if parts else "no address to dial"
