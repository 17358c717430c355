"""Plain counters that services keep for metrics, with no dependency on a metrics library.

Services record what happened in these (a few integer additions on the hot path);
:mod:`p2pnet.metrics` reads them when Prometheus scrapes, so a node without metrics pays almost
nothing and one with metrics never does per-event work in prometheus-client.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

#: Seconds; spans a fast in-memory heartbeat (sub-millisecond) to a slow DHT lookup (a minute).
DEFAULT_DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
)


class DurationHistogram:
    """Cumulative histogram of durations: counts per upper bound, their sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = DEFAULT_DURATION_BUCKETS) -> None:
        if list(bounds) != sorted(bounds) or not bounds:
            raise ValueError("bucket bounds must be a non-empty ascending sequence")
        self.bounds: tuple[float, ...] = tuple(bounds)
        #: counts[i]: observations <= bounds[i] and > bounds[i - 1]; the last slot is +Inf.
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``(upper bound, observations <= bound)`` pairs ending with ``+Inf``, as Prometheus
        histograms expose them."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out
