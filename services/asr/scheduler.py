"""Where decodes run and who may open a stream (SPEC §4: concurrency limit, queue, refusal).

`DecodeScheduler` owns the decode threads: finals wait for a free worker in FIFO order ahead of every
partial; partials wait in a priority queue, the session that waited longest for a partial first.
With `batch_max` > 1, the finals, or else the partials, waiting in one batch group when a worker
frees run together as one batched decode (`DecodeScheduler.batch`, ASR_BATCH_MAX). `Admission` caps sessions per process
with a bounded wait queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
J = TypeVar("J")  # one member's decode job
R = TypeVar("R")  # its result

BatchDecode = Callable[[Sequence[J]], Sequence[R]]


@dataclass(frozen=True)
class BatchOutcome(Generic[R]):
    """One member's result of a batched decode: `seconds` is its share of the worker's wall time
    (the batch's time / `size`), so decode seconds summed over members are the worker's."""

    result: R
    seconds: float
    size: int


def run_batch(decode: BatchDecode[J, R], jobs: Sequence[J]) -> list[R | Exception]:
    """`decode(jobs)` on a decode thread. When the batch fails, each job is decoded again alone, so
    only a job that fails on its own gets an exception (one bad clip never costs the others)."""
    try:
        results = list(decode(jobs))
        if len(results) != len(jobs):
            raise RuntimeError(f"batched decode returned {len(results)} results for {len(jobs)} jobs")
        return list(results)
    except Exception as exc:
        if len(jobs) == 1:
            return [exc]
    outcomes: list[R | Exception] = []
    for job in jobs:
        try:
            outcomes.append(decode([job])[0])
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


class DecodeScheduler:
    """`workers` decode threads shared by every session of the process.

    A free worker goes first to the oldest waiting final, then to the waiting partial with the
    smallest key: sessions pass (0, time asked) for an utterance's first partial and (1, time
    asked) for later ones, so first partials come before updates and, within each, who asked first
    goes first. Each session has at most one partial waiting and takes its audio when the worker is
    granted, so under load partials thin out (fewer per session, each on fresher audio) instead of
    queueing up stale work; finals are never delayed by partials.

    A decode asked with `batch` joins a batch group (one engine, one language and prompt): when a
    worker goes to such a final (partial), up to `batch_max - 1` more waiting finals (partials) of
    its group, oldest (in key order) first, go with it, and their jobs run as one call on that
    worker.

    `update_duty` < 1 caps the share of a worker's time that partial updates (key (1, ...)) take:
    after an update decode of d seconds the next update waits d * (1 / update_duty - 1), while
    finals and first partials go at once. Updates are the work that grows with load; without the cap
    each ASR process spends every free cycle on them and the finals, first partials and the other
    processes on the same cores (VAD, gateway, another pool) wait (docs/performance.md)."""

    def __init__(
        self, workers: int, batch_max: int = 1, update_duty: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not 0.0 < update_duty <= 1.0:
            raise ValueError(f"update_duty={update_duty} must be in (0, 1]")
        self.workers = workers
        self.batch_max = batch_max
        self.update_duty = update_duty
        self._clock = clock
        self._updates_from = 0.0  # no partial update is granted before this clock time
        self._wake: asyncio.TimerHandle | None = None
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="asr-decode")
        self._free = workers
        # (waiter, batch group or None), oldest first
        self._finals: deque[tuple[asyncio.Future[Any], Hashable | None]] = deque()
        # (key, arrival, waiter, batch group or None); a batch member's waiter gets its `_Batch`
        self._partials: list[tuple[tuple[int, float], int, asyncio.Future[Any], Hashable | None]] = []
        self._seq = itertools.count()

    @property
    def idle(self) -> bool:
        """A worker is free and nobody waits for one."""
        return self._free > 0 and not self._finals and not self._partials

    @property
    def depth(self) -> int:
        """Decodes waiting for a worker."""
        return sum(not f[0].done() for f in self._finals) + sum(not e[2].done() for e in self._partials)

    @property
    def finals_waiting(self) -> bool:
        return any(not f[0].done() for f in self._finals)

    @contextlib.asynccontextmanager
    async def slot(self, partial_key: tuple[int, float] | None = None) -> AsyncIterator[None]:
        """Hold one worker: a final when `partial_key` is None, else a partial ordered by the key."""
        if self._free > 0 and self.depth == 0 and self._may_run(partial_key):
            self._free -= 1
        else:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if partial_key is None:
                self._finals.append((waiter, None))
            else:
                heapq.heappush(self._partials, (partial_key, next(self._seq), waiter, None))
            self._kick()
            try:
                await waiter  # granted: the releasing holder passed its worker on
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # granted while being cancelled: pass it on
                raise
        t0 = self._clock()
        try:
            yield
        finally:
            self._ran(partial_key, self._clock() - t0)
            self._release()

    @staticmethod
    def _is_update(partial_key: tuple[int, float] | None) -> bool:
        return partial_key is not None and partial_key[0] != 0

    def _may_run(self, partial_key: tuple[int, float] | None) -> bool:
        """Finals and first partials always; an update once the duty cap's rest is over."""
        return not self._is_update(partial_key) or self._clock() >= self._updates_from

    def _ran(self, partial_key: tuple[int, float] | None, seconds: float) -> None:
        if self._is_update(partial_key) and self.update_duty < 1.0:
            rest = seconds * (1.0 / self.update_duty - 1.0)
            self._updates_from = max(self._updates_from, self._clock() + rest)

    def _arm(self) -> None:
        """When only updates wait, a worker is free and their rest is not over: wake at its end."""
        if self._wake is not None or not self._partials or self._free == 0:
            return
        delay = self._updates_from - self._clock()
        if delay > 0:
            self._wake = asyncio.get_running_loop().call_later(delay, self._woken)

    def _woken(self) -> None:
        self._wake = None
        self._kick()

    def _kick(self) -> None:
        """A worker is free while someone waits (updates resting): it goes to the best waiter that
        may run now, or back, with the wake-up armed."""
        if self._free > 0:
            self._free -= 1
            self._release()

    def _release(self) -> None:
        while self._finals:
            waiter, group = self._finals.popleft()
            if waiter.done():
                continue
            if group is None:
                waiter.set_result(None)
            else:
                self._grant(waiter, self._pop_finals(group, self.batch_max - 1))
            return
        while self._partials:
            key = self._partials[0][0]
            if not self._may_run(key):
                break  # only updates wait (first partials sort first) and they rest: see _arm
            _, _, waiter, group = heapq.heappop(self._partials)
            if waiter.done():
                continue
            if group is None:
                waiter.set_result(None)
            else:
                self._grant(waiter, self._pop_group(group, self.batch_max - 1), self._is_update(key))
            return
        self._free += 1
        self._arm()

    def _grant(self, first: asyncio.Future[Any], others: list[asyncio.Future[Any]], update: bool = False) -> None:
        members = [first, *others]
        batch: _Batch[Any, Any] = _Batch(self, len(members), update)
        for member in members:
            member.set_result(batch)

    def _pop_finals(self, group: Hashable, limit: int) -> list[asyncio.Future[Any]]:
        """Up to `limit` live final waiters of `group`, oldest first, taken off the queue."""
        taken: list[asyncio.Future[Any]] = []
        kept: deque[tuple[asyncio.Future[Any], Hashable | None]] = deque()
        while self._finals:
            entry = self._finals.popleft()
            if entry[0].done():
                continue
            if entry[1] == group and len(taken) < limit:
                taken.append(entry[0])
            else:
                kept.append(entry)
        self._finals = kept
        return taken

    def _pop_group(self, group: Hashable, limit: int) -> list[asyncio.Future[Any]]:
        """Up to `limit` live waiters of `group`, in key order, taken off the queue."""
        taken: list[asyncio.Future[Any]] = []
        kept = []
        while self._partials and len(taken) < limit:
            entry = heapq.heappop(self._partials)
            if entry[2].done():
                continue
            if entry[3] == group and self._may_run(entry[0]):  # a resting update does not ride along
                taken.append(entry[2])
            else:
                kept.append(entry)
        for entry in kept:
            heapq.heappush(self._partials, entry)
        return taken

    async def batch(
        self,
        group: Hashable,
        prepare: Callable[[], J | None],
        decode: BatchDecode[J, R],
        partial_key: tuple[int, float] | None = None,
    ) -> BatchOutcome[R] | None:
        """A decode that may run batched with others of `group`: a final when `partial_key` is None
        (oldest first, ahead of every partial; finals batch only with finals), else a partial ordered
        by the key. When the worker is granted, `prepare()` (on the event loop) returns this member's
        job, or None to withdraw; the jobs of the batch then run as `decode(jobs)` on one decode
        thread (members of a group pass the same `decode`). Returns this job's outcome, or None when
        withdrawn; raises the job's exception when it failed (see `run_batch`). Cancelled before
        `prepare`, the member withdraws."""
        if self._free > 0 and self.depth == 0 and self._may_run(partial_key):
            self._free -= 1
            batch: _Batch[Any, Any] = _Batch(self, 1, self._is_update(partial_key))
        else:
            waiter: asyncio.Future[_Batch[Any, Any]] = asyncio.get_running_loop().create_future()
            if partial_key is None:
                self._finals.append((waiter, group))
            else:
                heapq.heappush(self._partials, (partial_key, next(self._seq), waiter, group))
            self._kick()
            try:
                batch = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    waiter.result().withdraw()  # granted while being cancelled
                raise
        try:
            job = prepare()
        except BaseException:
            batch.withdraw()
            raise
        if job is None:
            batch.withdraw()
            return None
        outcome: BatchOutcome[R] = await batch.submit(job, decode)
        return outcome

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
        if self._wake is not None:
            self._wake.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


class _Batch(Generic[J, R]):
    """The partials granted one worker together: runs once every member submitted or withdrew,
    and gives the worker back when the decode thread is done (even if members were cancelled)."""

    def __init__(self, scheduler: DecodeScheduler, members: int, update: bool = False) -> None:
        self._scheduler = scheduler
        self._update = update  # partial updates: their time counts against the duty cap
        self._pending = members
        self._jobs: list[J] = []
        self._futures: list[asyncio.Future[BatchOutcome[R]]] = []
        self._decode: BatchDecode[J, R] | None = None

    def submit(self, job: J, decode: BatchDecode[J, R]) -> asyncio.Future[BatchOutcome[R]]:
        future: asyncio.Future[BatchOutcome[R]] = asyncio.get_running_loop().create_future()
        self._jobs.append(job)
        self._futures.append(future)
        self._decode = self._decode or decode
        self._member_done()
        return future

    def withdraw(self) -> None:
        self._member_done()

    def _member_done(self) -> None:
        self._pending -= 1
        if self._pending > 0:
            return
        if self._decode is None:  # everyone withdrew: the worker goes to the next waiter
            self._scheduler._release()
            return
        decode, jobs = self._decode, self._jobs

        def work() -> tuple[list[R | Exception], float]:
            t0 = time.perf_counter()
            outcomes = run_batch(decode, jobs)
            return outcomes, time.perf_counter() - t0

        loop = asyncio.get_running_loop()
        try:
            running = loop.run_in_executor(self._scheduler._executor, work)
        except RuntimeError as exc:  # the executor was shut down: the service is stopping
            running = loop.create_future()
            running.set_exception(exc)
        running.add_done_callback(self._deliver)

    def _deliver(self, running: asyncio.Future[tuple[list[R | Exception], float]]) -> None:
        if running.cancelled() or running.exception() is not None:  # executor shut down
            outcomes: list[R | Exception] = [RuntimeError("decode worker stopped")] * len(self._jobs)
            seconds = 0.0
        else:
            outcomes, seconds = running.result()
        self._scheduler._ran((1, 0.0) if self._update else None, seconds)
        self._scheduler._release()
        for future, outcome in zip(self._futures, outcomes, strict=True):
            if future.done():  # its member was cancelled meanwhile
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(BatchOutcome(outcome, seconds / len(self._jobs), len(self._jobs)))


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
