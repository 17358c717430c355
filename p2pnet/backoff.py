"""Exponential backoff with jitter, and the bootstrap retry schedule built on it.

Both are plain objects: they compute delays, the caller waits (sans-IO, no clock).

Delay ``n`` (from 0) is drawn uniformly from ``[base*(1 - jitter), base]`` where
``base = min(maximum, initial * factor**n)``: it grows geometrically, never exceeds
``maximum``, and the jitter (from the node's seeded RNG) keeps many nodes that failed together
from retrying in lockstep. ``reset()`` after a success starts again from ``initial``.
"""

from __future__ import annotations

import enum
import random


class ExponentialBackoff:
    def __init__(
        self,
        initial: float,
        maximum: float,
        rng: random.Random,
        *,
        factor: float = 2.0,
        jitter: float = 0.5,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < initial <= maximum (got {initial}, {maximum})")
        if factor < 1 or not 0 <= jitter < 1:
            raise ValueError("need factor >= 1 and 0 <= jitter < 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rng = rng
        #: Delays handed out since the last reset.
        self.attempts = 0

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempts = 0


class BootstrapState(enum.Enum):
    #: No attempt yet.
    IDLE = "idle"
    #: An attempt is under way.
    ATTEMPTING = "attempting"
    #: The last attempt reached a bootstrap peer, and one is still connected.
    CONNECTED = "connected"
    #: The last attempt failed, or every bootstrap peer was lost: the next one is scheduled.
    WAITING = "waiting"


class BootstrapSchedule:
    """When a node (re)tries its bootstrap peers: a state machine over :class:`ExponentialBackoff`.

    The node reports what happened (an attempt starts, fails or succeeds; the last bootstrap peer
    disconnected) and is told whether and when to try again. Losing the peers while a retry is
    already scheduled (or running) changes nothing, so a flapping link cannot speed retries up.
    """

    def __init__(self, backoff: ExponentialBackoff) -> None:
        self.backoff = backoff
        self.state = BootstrapState.IDLE
        #: Attempts made so far (the number of the current or last one).
        self.attempts = 0
        #: Seconds to wait before the next attempt (meaningful in WAITING).
        self.retry_in = 0.0

    def attempt_started(self) -> int:
        """An attempt begins now; returns its number."""
        self.attempts += 1
        self.state = BootstrapState.ATTEMPTING
        return self.attempts

    def attempt_failed(self) -> float:
        """No bootstrap peer answered: returns the delay before the next attempt."""
        self.state = BootstrapState.WAITING
        self.retry_in = self.backoff.next_delay()
        return self.retry_in

    def attempt_succeeded(self) -> None:
        self.state = BootstrapState.CONNECTED
        self.backoff.reset()

    def peers_lost(self) -> float | None:
        """The last bootstrap peer disconnected: the delay before trying again, or None if a
        retry is already scheduled or under way."""
        if self.state is not BootstrapState.CONNECTED:
            return None
        self.state = BootstrapState.WAITING
        self.retry_in = self.backoff.next_delay()
        return self.retry_in
