"""Where decodes run and who may open a stream (SPEC §4: concurrency limit, queue, refusal).

`DecodeScheduler` owns the decode threads: finals wait for a free worker in FIFO order ahead of every
partial; partials wait in a priority queue, the session that waited longest for a partial first.
`Admission` caps sessions per process with a bounded wait queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class DecodeScheduler:
    """`workers` decode threads shared by every session of the process.

    A free worker goes first to the oldest waiting final, then to the waiting partial with the
    smallest key: sessions pass (0, time asked) for an utterance's first partial and (1, time
    asked) for later ones, so first partials come before updates and, within each, who asked first
    goes first. Each session has at most one partial waiting and takes its audio when the worker is
    granted, so under load partials thin out (fewer per session, each on fresher audio) instead of
    queueing up stale work; finals are never delayed by partials."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="asr-decode")
        self._free = workers
        self._finals: deque[asyncio.Future[None]] = deque()
        self._partials: list[tuple[tuple[int, float], int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def idle(self) -> bool:
        """A worker is free and nobody waits for one."""
        return self._free > 0 and not self._finals and not self._partials

    @property
    def depth(self) -> int:
        """Decodes waiting for a worker."""
        return sum(not f.done() for f in self._finals) + sum(not e[2].done() for e in self._partials)

    @property
    def finals_waiting(self) -> bool:
        return any(not f.done() for f in self._finals)

    @contextlib.asynccontextmanager
    async def slot(self, partial_key: tuple[int, float] | None = None) -> AsyncIterator[None]:
        """Hold one worker: a final when `partial_key` is None, else a partial ordered by the key."""
        if self._free > 0 and self.depth == 0:
            self._free -= 1
        else:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if partial_key is None:
                self._finals.append(waiter)
            else:
                heapq.heappush(self._partials, (partial_key, next(self._seq), waiter))
            try:
                await waiter  # granted: the releasing holder passed its worker on
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # granted while being cancelled: pass it on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._finals:
            waiter = self._finals.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        while self._partials:
            waiter = heapq.heappop(self._partials)[2]
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1

    async def execute(self, fn: Callable[[], T]) -> T:
        """Run `fn` on a decode thread (call it while holding a `slot`)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` as a final: wait for a worker (FIFO, ahead of every partial)."""
        async with self.slot():
            return await self.execute(fn)

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
