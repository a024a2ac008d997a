"""Where decodes run and who may open a stream (SPEC §4: concurrency limit, queue, refusal).

`DecodeScheduler` owns the decode threads: finals wait for a free worker in FIFO order; a partial only
runs when a worker is idle right now and no final waits, else it is skipped (skip partials rather
than delay finals). `Admission` caps sessions per process with a bounded wait queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class DecodeScheduler:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="asr-decode")
        self._slots: asyncio.Semaphore | None = None

    def _sem(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        return self._slots

    @property
    def idle(self) -> bool:
        """A worker is free and nobody waits for one."""
        return not self._sem().locked()

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on a decode thread, waiting for a worker if all are busy."""
        async with self._sem():
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def try_run(self, fn: Callable[[], T]) -> tuple[bool, T | None]:
        """Run `fn` only if a worker is idle now; `(False, None)` when skipped."""
        if not self.idle:
            return False, None
        return True, await self.run(fn)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Busy(Exception):
    """Every session slot and queue place is taken (RESOURCE_EXHAUSTED)."""


class Admission:
    """At most `max_sessions` at once; up to `queue` more wait at most `queue_timeout_s`."""

    def __init__(self, max_sessions: int, queue: int, queue_timeout_s: float) -> None:
        self.max_sessions = max_sessions
        self.queue = queue
        self.queue_timeout_s = queue_timeout_s
        self.active = 0
        self.waiting = 0
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self._acquire()
        try:
            yield
        finally:
            cond = self._condition()
            async with cond:
                self.active -= 1
                cond.notify(1)

    async def _acquire(self) -> None:
        if self.active < self.max_sessions and self.waiting == 0:
            self.active += 1
            return
        if self.waiting >= self.queue:
            raise Busy(
                f"{self.active} sessions active, {self.waiting} queued (limits {self.max_sessions}/{self.queue})"
            )
        cond = self._condition()
        self.waiting += 1
        try:
            async with cond:
                await asyncio.wait_for(cond.wait_for(lambda: self.active < self.max_sessions), self.queue_timeout_s)
                self.active += 1
        except TimeoutError:
            raise Busy(f"no session slot within {self.queue_timeout_s:.1f} s") from None
        finally:
            self.waiting -= 1
