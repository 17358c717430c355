"""What a batch of simulated find_peer lookups found and cost (full-stack and cores runs alike)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from p2pnet.kad.query import LookupStats

__all__ = ["LookupResults"]

#: How a run names a failed lookup (peer IDs and an error, or node indexes).
FailureT = TypeVar("FailureT")


@dataclass
class LookupResults(Generic[FailureT]):
    """Outcome of a batch of find_peer lookups."""

    lookups: int = 0
    found: int = 0
    stats: list[LookupStats] = field(default_factory=list)
    failures: list[FailureT] = field(default_factory=list)

    @property
    def hops(self) -> list[int]:
        return [s.hops for s in self.stats]

    @property
    def messages(self) -> list[int]:
        return [s.messages for s in self.stats]

    @property
    def durations(self) -> list[float]:
        return [s.duration for s in self.stats]
