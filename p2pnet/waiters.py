"""Waiting for a state change without an :class:`asyncio.Event` per object.

A stream or connection that a reader or writer may wait on needs something to wait with, but
most of them are never waited on, or only briefly: an :class:`asyncio.Event` costs its
``deque`` of waiters (~800 bytes per Event), made up front. :class:`Waiters` makes a future
only while someone waits. There is no "set" flag: the waiter checks its condition, waits for
the next :meth:`Waiters.wake`, and checks again (nothing runs in between on the event loop, so
no wake is missed).
"""

from __future__ import annotations

import asyncio

__all__ = ["Flag", "Waiters"]


class Waiters:
    """The tasks waiting for the next :meth:`wake`."""

    __slots__ = ("_futures",)

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[None]] | None = None

    async def wait(self) -> None:
        """Until the next :meth:`wake` (a cancelled waiter leaves no trace)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        futures = self._futures
        if futures is None:
            self._futures = [fut]
        else:
            futures.append(fut)
        try:
            await fut
        finally:
            futures = self._futures
            if futures is not None and fut in futures:
                futures.remove(fut)

    def wake(self) -> None:
        """Wake every task waiting now."""
        futures = self._futures
        if futures:
            self._futures = None
            for fut in futures:
                if not fut.done():
                    fut.set_result(None)

    @property
    def waiting(self) -> int:
        return len(self._futures) if self._futures else 0


class Flag:
    """What an :class:`asyncio.Event` does (``set``, ``is_set``, ``wait``) for a flag that is
    set once, with a future only while someone waits (an Event makes its deque up front)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters = Waiters()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        self._waiters.wake()

    async def wait(self) -> None:
        while not self._set:
            await self._waiters.wait()
