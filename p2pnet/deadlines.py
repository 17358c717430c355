"""Deadlines that all lie one fixed delay after they were set: one timer for all of them.

A host bounds every inbound stream's negotiation by the same ``negotiate_timeout``, every drain
after a handler by the same ``drain_timeout``; a kad server every idle stream by the same
``inbound_idle_timeout``. Such deadlines expire in the order they were set, so a FIFO queue
with one event-loop timer (armed at the head's deadline) serves them all: setting a deadline
costs an append, cancelling it a flag, instead of a timer handle per stream (a ``call_at``, a
heap push, and a cancelled handle left in the loop's heap).

Time is the event loop's (the node's clock drives it: ``p2pnet.sim.loop`` on a virtual clock).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

__all__ = ["Deadline", "DeadlineQueue", "QueuedTimeout"]

log = logging.getLogger("p2pnet.deadlines")


class Deadline:
    """One deadline of a :class:`DeadlineQueue`; :meth:`cancel` before it fires keeps
    ``callback`` from being called."""

    __slots__ = ("at", "callback")

    def __init__(self, at: float, callback: Callable[[], object] | None) -> None:
        self.at = at
        self.callback = callback

    def cancel(self) -> None:
        self.callback = None

    @property
    def active(self) -> bool:
        return self.callback is not None


class DeadlineQueue:
    """Deadlines ``delay`` seconds after each :meth:`add`, fired in order by one timer."""

    __slots__ = ("_entries", "_loop", "_timer", "delay")

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._entries: deque[Deadline] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Entries queued (cancelled ones included, until their time passes)."""
        return len(self._entries)

    def add(self, callback: Callable[[], object]) -> Deadline:
        """Call ``callback`` ``delay`` seconds from now unless the deadline is cancelled."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
            self._timer = None
        entry = Deadline(loop.time() + self.delay, callback)
        entries = self._entries
        # cancelled ones at the head go now (most end in the order they began), not at their
        # time: on a virtual clock that stands still they would pile up
        while entries and entries[0].callback is None:
            entries.popleft()
        entries.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entry.at, self._fire)
        return entry

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None  # armed from add()
        now = loop.time()
        entries = self._entries
        while entries:
            head = entries[0]
            if head.callback is None:
                entries.popleft()
                continue
            if head.at > now:
                self._timer = loop.call_at(head.at, self._fire)
                return
            entries.popleft()
            callback, head.callback = head.callback, None
            try:
                callback()
            except Exception:  # one owner's bug must not stop the other deadlines
                log.exception("deadline callback failed")

    def timeout(self) -> QueuedTimeout:
        """``async with queue.timeout():`` is ``async with asyncio.timeout(queue.delay):``
        on this queue's one timer: the block's task is cancelled when the deadline passes
        and :class:`TimeoutError` raised out of the block (a cancellation from elsewhere
        stays a cancellation). For timeouts taken per connection or per request (the
        upgrade, a kad request): no timer handle in the loop's heap for each."""
        return QueuedTimeout(self)

    def clear(self) -> None:
        """Forget every deadline (their callbacks are never called)."""
        for entry in self._entries:
            entry.callback = None
        self._entries.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class QueuedTimeout:
    """:meth:`DeadlineQueue.timeout`: what ``asyncio.timeout`` does (the same cancellation
    bookkeeping: ``Task.cancelling``/``uncancel``), with a deadline of the queue."""

    __slots__ = ("_cancelling", "_deadline", "_expired", "_queue", "_task")

    def __init__(self, queue: DeadlineQueue) -> None:
        self._queue = queue
        self._task: asyncio.Task[object] | None = None
        self._deadline: Deadline | None = None
        self._expired = False
        self._cancelling = 0

    def expired(self) -> bool:
        """The deadline passed while the block ran (it was cancelled for it)."""
        return self._expired

    async def __aenter__(self) -> QueuedTimeout:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("QueuedTimeout must be used inside a task")
        if self._task is not None:
            raise RuntimeError("a QueuedTimeout is entered once")
        self._task = task
        self._cancelling = task.cancelling()
        self._deadline = self._queue.add(self._expire)
        return self

    def _expire(self) -> None:
        self._deadline = None
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._expired:
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
