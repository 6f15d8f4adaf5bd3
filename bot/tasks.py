"""Background tasks that stop when asked, and a cancel-safe wait.

Every long-running loop of the bot (inbox, outbox, channel housekeeping, the
escalation sweep) runs as a task of a `BackgroundTasks` set, so shutdown is one
call with one bound: cancel, wait at most `timeout`, name whatever did not
finish. Loops wait for work with `wait_event`, never with `asyncio.wait_for`:
on Python 3.11, `wait_for` returns normally when a cancellation arrives in the
same loop iteration as the awaited event, so a `while True` loop around it
carries on after being cancelled and whoever awaits the task waits forever.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Coroutine

log = logging.getLogger(__name__)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set or `timeout` seconds pass; True when it was set.

    A cancellation always propagates, whatever else happens at the same moment.
    """
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


class BackgroundTasks:
    """A named set of tasks owned by one component, stopped together with a bound."""

    def __init__(self, owner: str):
        self.owner = owner
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=f"{self.owner}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s ended with an error", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    def running(self, name: str) -> bool:
        full = f"{self.owner}:{name}"
        return any(t.get_name() == full for t in self._tasks)

    async def wait(self, timeout: float) -> bool:
        """Let the running tasks finish on their own; True when all did within `timeout`."""
        if not self._tasks:
            return True
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        return not pending

    async def stop(self, timeout: float = 5.0) -> list[str]:
        """Cancel every task and wait at most `timeout` seconds for them to end.

        Returns the names of tasks that were still running at the bound (they are
        logged with their stacks: a task that outlives its cancellation is a bug).
        """
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return []
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            log.error("%s did not stop within %.1f s of being cancelled", task.get_name(), timeout)
            task.print_stack(limit=20)
        return sorted(t.get_name() for t in pending)
