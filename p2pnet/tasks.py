"""Task ownership: every background task belongs to an owner that cancels and awaits it on close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterator
from typing import Any

log = logging.getLogger("p2pnet.tasks")


class TaskOwner:
    """A set of tasks with one owner.

    Unlike ``asyncio.TaskGroup`` a failing child does not cancel its siblings (one bad stream must
    not end a connection); its exception is logged instead, so nothing fails silently.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.name}: cannot start a task after close")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    @contextlib.contextmanager
    def running_here(self) -> Iterator[None]:
        """Own the current task while inside the block: :meth:`close` cancels it too (for work
        that already runs in a task of its own, where :meth:`spawn` would add a second one)."""
        if self._closed:
            raise RuntimeError(f"{self.name}: cannot own a task after close")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("running_here() outside a task")
        self._tasks.add(task)
        try:
            yield
        finally:
            self._tasks.discard(task)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.warning("%s: task %s failed: %r", self.name, task.get_name(), exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self, timeout: float = 5.0) -> None:
        """Cancel every task and wait for them (the current task is never cancelled)."""
        self._closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            t.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                log.error("%s: task %s did not stop within %.1fs", self.name, t.get_name(), timeout)
