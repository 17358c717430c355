"""Exponential backoff with jitter, as a plain object: it computes delays, the caller waits.

Delay ``n`` (from 0) is drawn uniformly from ``[base*(1 - jitter), base]`` where
``base = min(maximum, initial * factor**n)``: it grows geometrically, never exceeds
``maximum``, and the jitter (from the node's seeded RNG) keeps many nodes that failed together
from retrying in lockstep. ``reset()`` after a success starts again from ``initial``.
"""

from __future__ import annotations

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
