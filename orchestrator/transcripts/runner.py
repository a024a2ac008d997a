"""`JobRunner`: transcribes due deferred jobs, at most `concurrency` at once, while an injected
`capacity_available()` says the ASR can take them. What follows a failed attempt is `policy.py`'s:
a busy or unavailable service makes the job wait without using an attempt; other failures retry with
exponential backoff up to `max_attempts`, then the job is `failed` with its last error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from orchestrator.metrics import REGISTRY
from orchestrator.transcripts.policy import after_failure, describe
from orchestrator.transcripts.srt import to_srt
from orchestrator.transcripts.store import Backoff, Job, JobsConfig, TranscriptStore
from orchestrator.transcripts.view import normalise_finals

log = logging.getLogger(__name__)
Transcribe = Callable[[Job], Awaitable[list[dict[str, Any]]]]
CapacityCheck = Callable[[], Awaitable[bool]]

JOB_OUTCOMES = Counter(
    "transcribe_jobs_total", "Deferred transcription attempts, by outcome", ["outcome"], registry=REGISTRY
)
JOBS_INFLIGHT = Gauge("transcribe_jobs_inflight", "Deferred transcription jobs running now", registry=REGISTRY)
JOBS_BACKLOG = Gauge(
    "transcribe_jobs_backlog", "Deferred transcription jobs not finished yet (pending or running)", registry=REGISTRY
)
JOBS_OLDEST_AGE = Gauge(
    "transcribe_jobs_oldest_age_seconds",
    "Age of the oldest unfinished deferred transcription job (0 when none), computed at scrape",
    registry=REGISTRY,
)
JOB_AGE = Histogram(
    "transcribe_job_age_seconds",
    "Age of a deferred transcription job (queued to finished) when it ends, by outcome",
    ["outcome"],
    buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 24 * 3600),
    registry=REGISTRY,
)
JOB_ATTEMPTS = Histogram(
    "transcribe_job_attempts",
    "Attempts a deferred transcription job used (waits for capacity not counted) when it ends, by outcome",
    ["outcome"],
    buckets=(1, 2, 3, 4, 5, 7, 10),
    registry=REGISTRY,
)
JOB_WAITS = Histogram(
    "transcribe_job_waits",
    "Times a deferred transcription job found its ASR busy or down before it ended, by outcome",
    ["outcome"],
    buckets=(0, 1, 2, 5, 10, 20, 50, 100),
    registry=REGISTRY,
)
for _outcome in ("done", "retry", "wait", "failed"):
    JOB_OUTCOMES.labels(_outcome)  # exported from the start, at 0
for _outcome in ("done", "failed"):
    JOB_AGE.labels(_outcome)
    JOB_ATTEMPTS.labels(_outcome)
    JOB_WAITS.labels(_outcome)


class _Backlog:
    """What the last look at the store found; the age gauge reads it at scrape time, so it grows
    between looks (the runner may sleep until the next job is due)."""

    oldest_created_at: float | None = None
    now_fn: Callable[[], float] = time.time

    @classmethod
    def age_s(cls) -> float:
        oldest = cls.oldest_created_at
        return 0.0 if oldest is None else max(0.0, cls.now_fn() - oldest)


JOBS_OLDEST_AGE.set_function(_Backlog.age_s)


class JobRunner:
    """Runs due jobs until stopped. It sleeps on an event (set by `enqueue`, `wake` and finished
    attempts) or until the next job is due; while `capacity_available()` is false it re-checks every
    `capacity_poll_s` (or on `wake`). On a shared store it also looks every `poll_s` (other gateways
    queue jobs, and their leases run out, without waking it) and renews the leases of its running
    jobs every third of `lease_s`; an attempt whose job another gateway took over is cancelled."""

    def __init__(
        self,
        store: TranscriptStore,
        transcribe: Transcribe,
        config: JobsConfig,
        capacity_available: CapacityCheck | None = None,
    ) -> None:
        self.store, self._transcribe, self.config = store, transcribe, config
        self._capacity = capacity_available
        self._backoff = Backoff(config)
        self._wake = asyncio.Event()
        self._inflight: dict[tuple[str, str], asyncio.Task[None]] = {}  # by (tenant, flowId)
        self._loop_task: asyncio.Task[None] | None = None
        self.checked_at: float | None = None  # store time of the last completed look for due jobs

    @property
    def inflight(self) -> frozenset[str]:
        """The flowIds being transcribed now."""
        return frozenset(flow_id for _, flow_id in self._inflight)

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self.run(), name="job-runner")

    def wake(self) -> None:
        """Re-evaluate now (a job was queued, capacity may have returned, the clock moved)."""
        self._wake.set()

    async def enqueue(self, flow_id: str, record_url: str, lang: str = "", domain: str = "", tenant: str = "") -> Job:
        job, created = await self.store.enqueue(flow_id, record_url, lang, domain, tenant)
        if created:
            log.info("transcription queued", extra={"flowId": flow_id, "stage": "jobs", "event": "queued"})
        self.wake()
        return job

    async def stop(self) -> None:
        """Cancel the loop and in-flight attempts; their jobs go back to pending, attempt not counted
        (this gateway's `running` rows only: on a shared store the others' are theirs). Call it before
        closing the store."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.release_running()

    async def run(self) -> None:
        """The dispatch loop (and, on a shared store, the lease renewal), forever: `start()` runs it
        as its own task, or a supervisor runs it."""
        if not self.store.shared:
            await self._dispatch_loop()
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(self._renew_leases(), name="job-leases")
            await self._dispatch_loop()

    async def _dispatch_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                delay = await self._dispatch()
            except Exception:  # a store error must not end the runner; try again later
                log.exception("job dispatch failed", extra={"stage": "jobs", "err_code": "jobs_store"})
                delay = self.config.capacity_poll_s
            if self.store.shared:  # look again soon whatever this store said
                delay = self.config.poll_s if delay is None else min(delay, self.config.poll_s)
            if delay is None:
                await self._wake.wait()
            elif delay > 0:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel (stop()) that comes
                # as the wake event is set, and the loop would never end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()

    async def _renew_leases(self) -> None:
        """Every third of the lease, `renew_leases`; a failed round is logged and the next tries again."""
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            try:
                await self.renew_leases()
            except Exception:  # the store is away: the leases may run out; the next round tries again
                log.exception("lease renewal failed", extra={"stage": "jobs", "err_code": "jobs_store"})

    async def renew_leases(self) -> None:
        """Extend the leases of the jobs running here; cancel an attempt whose job is no longer this
        gateway's (it lost its lease and another gateway took the job over)."""
        for key in await self.store.renew(list(self._inflight)):
            task = self._inflight.get(key)
            if task is not None:
                extra = {"flowId": key[1], "stage": "jobs", "event": "lease_lost"}
                log.warning("job lease lost, attempt cancelled", extra=extra)
                task.cancel()

    async def _dispatch(self) -> float | None:
        """Start what is due; return how long to sleep (None: until woken)."""
        await self._refresh_backlog()  # every wake: a job queued, finished or retried
        free = self.config.concurrency - len(self._inflight)
        if free <= 0:
            return None  # a finishing attempt wakes the loop
        started = False
        now = self.store.now_fn()
        for job in await self.store.due(free, now):
            if job.attempts >= self.config.max_attempts:  # its last attempt was cut by a crash
                await self._give_up(job, job.last_error or "interrupted")
                started = True
                continue
            if self._capacity is not None and not await self._capacity():
                return self.config.capacity_poll_s
            claimed = await self.store.claim(job.flow_id, job.tenant)
            if claimed is not None and job.status == "running":
                log.warning(
                    "job taken over: %s",
                    claimed.last_error,
                    extra={"flowId": job.flow_id, "stage": "jobs", "event": "taken_over"},
                )
            if claimed is not None:
                self._inflight[(job.tenant, job.flow_id)] = asyncio.create_task(self._attempt(claimed))
                JOBS_INFLIGHT.set(len(self._inflight))
                started = True
        self.checked_at = now
        if started:
            return 0.0
        next_at = await self.store.next_due_at()
        return None if next_at is None else max(0.0, next_at - now)

    async def _refresh_backlog(self) -> None:
        count, oldest = await self.store.backlog()
        JOBS_BACKLOG.set(count)
        _Backlog.oldest_created_at, _Backlog.now_fn = oldest, self.store.now_fn

    async def _attempt(self, job: Job) -> None:
        extra = {"flowId": job.flow_id, "stage": "jobs", "lang": job.lang}
        t0 = time.monotonic()
        try:
            try:
                async with asyncio.timeout(self.config.attempt_timeout_s):
                    raw = await self._transcribe(job)
                finals = normalise_finals(raw)
            except Exception as exc:
                await self._after_failure(job, exc)
                return
            await self.store.complete(job.flow_id, {"finals": finals, "srt": to_srt(finals)}, job.tenant)
            JOB_OUTCOMES.labels("done").inc()
            self._observe_end(job, "done")
            log.info(
                "transcription done: %d finals",
                len(finals),
                extra={**extra, "event": "done", "latency_ms": round((time.monotonic() - t0) * 1000)},
            )
        except Exception:  # the store failed; the job stays running and is recovered at the next start
            log.exception("job bookkeeping failed", extra={**extra, "err_code": "jobs_store"})
        finally:
            self._inflight.pop((job.tenant, job.flow_id), None)
            JOBS_INFLIGHT.set(len(self._inflight))
            self._wake.set()

    async def _after_failure(self, job: Job, exc: Exception) -> None:
        error = describe(exc)
        verdict = after_failure(job, exc, self.config, self._backoff)
        if verdict.action == "fail":
            await self._give_up(job, error)
            return
        if verdict.action == "wait":
            await self.store.wait(job.flow_id, error, self.store.now_fn() + verdict.delay_s, job.tenant)
            JOB_OUTCOMES.labels("wait").inc()
            log.info(
                "transcription waits for capacity, next try in %.1f s: %s",
                verdict.delay_s,
                error,
                extra={"flowId": job.flow_id, "stage": "jobs", "event": "wait"},
            )
            return
        delay = verdict.delay_s
        await self.store.retry(job.flow_id, error, self.store.now_fn() + delay, job.tenant)
        JOB_OUTCOMES.labels("retry").inc()
        log.warning(
            "transcription attempt %d failed, retry in %.1f s: %s",
            job.attempts,
            delay,
            error,
            extra={"flowId": job.flow_id, "stage": "jobs", "err_code": "transcribe_failed"},
        )

    async def _give_up(self, job: Job, error: str) -> None:
        await self.store.fail(job.flow_id, error, job.tenant)
        JOB_OUTCOMES.labels("failed").inc()
        self._observe_end(job, "failed")
        log.error(
            "transcription failed after %d attempts: %s",
            job.attempts,
            error,
            extra={"flowId": job.flow_id, "stage": "jobs", "err_code": "transcribe_failed"},
        )

    def _observe_end(self, job: Job, outcome: str) -> None:
        """A job's age, attempts and waits when it ends (docs/metrics.md)."""
        JOB_AGE.labels(outcome).observe(max(0.0, self.store.now_fn() - job.created_at))
        JOB_ATTEMPTS.labels(outcome).observe(job.attempts)
        JOB_WAITS.labels(outcome).observe(job.waits)
