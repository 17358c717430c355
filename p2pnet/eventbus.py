"""A bounded fan-out of events to any number of async iterators (asyncio only, no p2pnet deps).

Used by the Node and the Agent for their events, and by the SDK for a p2p-node's events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

E = TypeVar("E")


class EventStream(Generic[E]):
    """One consumer's view of the bus; registered from creation, so nothing is missed between
    ``node.events()`` and the first ``async for`` step."""

    def __init__(self, bus: EventBus[E], predicate: Callable[[E], bool] | None = None) -> None:
        self._bus = bus
        # Bounded in _put (not by the queue itself, so the end mark always fits).
        self._queue: asyncio.Queue[E | None] = asyncio.Queue()
        self._bytes = 0  # of the queued events, when the bus has a byte budget
        self._done = False
        #: Only the events for which this holds are queued (None: all).
        self.predicate = predicate
        #: Events this consumer lost because it fell ``maxsize`` events behind.
        self.dropped = 0
        self._dropped_seen = 0
        if bus.closed:
            self._queue.put_nowait(None)
        else:
            bus._streams.add(self)

    def _put(self, event: E | None) -> None:
        if event is not None and self.predicate is not None and not self.predicate(event):
            return
        if event is None:  # the end: after every event already queued
            self._queue.put_nowait(None)
            return
        size = self._bus.size_of(event)
        budget = self._bus.max_bytes
        while not self._queue.empty() and (
            self._queue.qsize() >= self._bus.maxsize
            or (budget is not None and self._bytes + size > budget)
        ):
            self._bytes -= self._bus.size_of(self._queue.get_nowait())
            self.dropped += 1
            self._bus.dropped += 1
        self._bytes += size
        self._queue.put_nowait(event)

    def __aiter__(self) -> EventStream[E]:
        return self

    async def __anext__(self) -> E:
        if self._done:
            raise StopAsyncIteration
        event = await self._queue.get()
        self._bytes -= self._bus.size_of(event)
        if event is None:
            self.close()
            raise StopAsyncIteration
        return event

    async def next(self, timeout: float | None = None) -> E:
        """The next event; TimeoutError after ``timeout`` s, StopAsyncIteration at the end."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    async def first(self, predicate: Callable[[E], bool], timeout: float | None = None) -> E:
        """The next event for which ``predicate`` holds (others are skipped).

        TimeoutError after ``timeout`` s; StopAsyncIteration if the stream ends first.
        """
        async with asyncio.timeout(timeout):
            async for event in self:
                if predicate(event):
                    return event
        raise StopAsyncIteration

    def take_dropped(self) -> int:
        """Events lost since the last call. Called right after an event was taken, it counts
        the events lost just before that one (the oldest are the ones dropped)."""
        missed = self.dropped - self._dropped_seen
        self._dropped_seen = self.dropped
        return missed

    def close(self) -> None:
        self._done = True
        self._bus._streams.discard(self)


class EventBus(Generic[E]):
    """Fan-out of events to any number of :class:`EventStream` consumers, each bounded.

    A consumer that falls ``maxsize`` events (or ``max_bytes`` bytes) behind loses the oldest
    ones (counted in ``dropped``) instead of growing memory without bound or blocking the
    network code.
    """

    def __init__(
        self,
        maxsize: int = 1000,
        *,
        max_bytes: int | None = None,
        sizeof: Callable[[E], int] | None = None,
    ) -> None:
        """``max_bytes`` (with ``sizeof``, the size of an event): a consumer also loses its
        oldest events when those it holds would exceed this many bytes (it always keeps the
        newest one)."""
        if (max_bytes is None) != (sizeof is None):
            raise ValueError("max_bytes and sizeof go together")
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._sizeof = sizeof
        self._streams: set[EventStream[E]] = set()
        self.dropped = 0
        self.closed = False

    def emit(self, event: E) -> None:
        for stream in self._streams:
            stream._put(event)

    def size_of(self, event: E | None) -> int:
        if event is None or self._sizeof is None:
            return 0
        return self._sizeof(event)

    @property
    def subscribers(self) -> int:
        return len(self._streams)

    def subscribe(self, predicate: Callable[[E], bool] | None = None) -> EventStream[E]:
        """A new consumer; with ``predicate``, of the events for which it holds."""
        return EventStream(self, predicate)

    def close(self) -> None:
        """End every stream (after the events already queued)."""
        self.closed = True
        for stream in list(self._streams):
            stream._put(None)
