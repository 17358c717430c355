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

__all__ = ["Deadline", "DeadlineQueue"]

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

    def clear(self) -> None:
        """Forget every deadline (their callbacks are never called)."""
        for entry in self._entries:
            entry.callback = None
        self._entries.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
