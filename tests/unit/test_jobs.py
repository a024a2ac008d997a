"""The deferred transcription store and runner (issue 4 items 3-4): fake transcribe coroutines (plain
async functions) and a fake clock moved by hand. The tests of the store's contract (`store` fixture)
run on both stores: a temp sqlite file (unit) and a schema on a real PostgreSQL server (integration,
one server for the session: tests/conftest.py `postgres_server`)."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from common.envconf import ConfigError
from orchestrator.transcripts.pgstore import PostgresJobStore
from orchestrator.transcripts.policy import Verdict, after_failure
from orchestrator.transcripts.runner import JobRunner
from orchestrator.transcripts.srt import to_srt
from orchestrator.transcripts.store import (
    AsyncJobStore,
    Backoff,
    CapacityUnavailable,
    Job,
    JobsConfig,
    JobStore,
    PermanentJobError,
    Record,
    TranscriptStore,
)
from orchestrator.transcripts.view import transcript_response, transcript_view
from tests.clock import T0, FakeClock
from tests.poll import seconds, until

unit = pytest.mark.unit
# The store's contract runs on both: sqlite as a unit test, PostgreSQL on its real server.
STORES = [pytest.param("sqlite", marks=pytest.mark.unit), pytest.param("postgres", marks=pytest.mark.integration)]
FINALS = [{"text": "hello world", "ts": [0.5, 1.25], "lang": "en"}]


def cfg(**kw: Any) -> JobsConfig:
    base: dict[str, Any] = {
        "backoff_base_s": 10,
        "backoff_factor": 2,
        "backoff_cap_s": 100,
        "backoff_jitter": 0,
        "capacity_poll_s": 0.01,
    }
    return JobsConfig(**{**base, **kw})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[TranscriptStore]:
    s = await open_test_store(request, tmp_path, clock)
    yield s
    await s.close()


async def open_test_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock, owner: str = "gw-a"
) -> TranscriptStore:
    """A fresh store of the fixture's kind: a sqlite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        return await AsyncJobStore.open(tmp_path / "jobs.sqlite", clock)
    return await open_pg(request, clock, owner)


async def open_pg(request: pytest.FixtureRequest, clock: FakeClock, owner: str, url: str = "") -> PostgresJobStore:
    """A PostgreSQL store with its own schema (or on `url`, to share one with another store)."""
    if not url:
        url = request.getfixturevalue("postgres_server").create_schema(f"t_{uuid.uuid4().hex[:12]}")
    return await PostgresJobStore.open(url, lease_s=60, now_fn=clock, owner=owner)


def status_is(store: TranscriptStore, flow_id: str, status: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        job = await store.get(flow_id)
        return job is not None and job.status == status

    return check


# store ----------------------------------------------------------------------------------------
async def test_enqueue_is_idempotent_and_done_stays_done(store: TranscriptStore, clock: FakeClock) -> None:
    job, created = await store.enqueue("f1", "http://h/a.ogg", "en", "default")
    assert created and job.status == "pending" and job.attempts == 0 and job.next_attempt_at == T0
    clock.t = T0 + 1
    again, created = await store.enqueue("f1", "http://h/other.ogg", "zh", "x")
    assert not created and again == job
    clock.t = T0 + 2
    assert await store.claim("f1") is not None
    clock.t = T0 + 3
    assert await store.complete("f1", {"finals": FINALS, "srt": to_srt(FINALS)}) is not None
    clock.t = T0 + 4
    done, created = await store.enqueue("f1", "http://h/a.ogg", "en", "default")
    assert not created and done.status == "done" and done.finals == FINALS
    assert await store.counts() == {"pending": 0, "running": 0, "done": 1, "failed": 0}


async def test_due_orders_by_time_and_skips_future_and_claimed(store: TranscriptStore, clock: FakeClock) -> None:
    for flow_id, at in (("late", T0 + 5), ("early", T0 + 1), ("future", T0 + 50), ("taken", T0)):
        clock.t = at
        await store.enqueue(flow_id, f"http://h/{flow_id}")
    clock.t = T0 + 6
    assert await store.claim("taken") is not None
    assert await store.claim("taken") is None  # a job is claimed once
    assert [j.flow_id for j in await store.due(10, T0 + 10)] == ["early", "late"]
    assert [j.flow_id for j in await store.due(1, T0 + 10)] == ["early"]
    assert await store.next_due_at() == T0 + 1


@unit
def test_reopen_puts_running_jobs_back_to_pending(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    s = JobStore(path, now=T0)
    s.enqueue("crashed", "http://h/a", "en", "d", T0)
    s.enqueue("done", "http://h/b", "en", "d", T0)
    s.claim("crashed", T0)
    s.claim("done", T0)
    s.complete("done", {"finals": [], "srt": ""}, T0)
    s.close()  # the "crash": nothing else happened to the running job
    reopened = JobStore(path, now=T0 + 100)
    assert reopened.recovered == 1
    job = reopened.get("crashed")
    assert job is not None and job.status == "pending" and job.attempts == 1
    assert job.next_attempt_at == T0 + 100 and job.last_error == "interrupted by a restart"
    assert reopened.get("done") is not None and reopened.get("done").status == "done"  # type: ignore[union-attr]
    reopened.close()


@unit
def test_backoff_schedule_is_exponential_capped_and_seeded() -> None:
    plain = Backoff(cfg())
    assert [plain.delay_s(n) for n in range(1, 7)] == [10, 20, 40, 80, 100, 100]
    jittered = [Backoff(cfg(backoff_jitter=0.5, jitter_seed=7)).delay_s(n) for n in range(1, 5)]
    again = [Backoff(cfg(backoff_jitter=0.5, jitter_seed=7)).delay_s(n) for n in range(1, 5)]
    assert jittered == again
    for n, d in enumerate(jittered, 1):
        full = min(100, 10 * 2 ** (n - 1))
        assert full * 0.5 <= d <= full


@unit
def test_config_rejects_bad_limits() -> None:
    from common.envconf import ConfigError, load_env
    from orchestrator.config import GatewayConfig

    with pytest.raises(ConfigError):
        JobsConfig(max_attempts=0)
    with pytest.raises(ConfigError):
        JobsConfig(backoff_factor=0.5)
    env = {"JOBS_DB": "/tmp/x.sqlite", "JOBS_MAX_ATTEMPTS": "2", "JOBS_JITTER_SEED": "3"}
    got = load_env(GatewayConfig, env).jobs
    assert got.db_path == "/tmp/x.sqlite" and got.max_attempts == 2 and got.jitter_seed == 3
    assert got.store_url == "" and got.lease_s == 60 and got.poll_s == 5
    shared = {"JOBS_STORE_URL": "postgresql://gw@db:5432/speechgw", "JOBS_LEASE_SEC": "30", "JOBS_POLL_SEC": "2"}
    got = load_env(GatewayConfig, shared).jobs
    assert (got.store_url, got.lease_s, got.poll_s) == ("postgresql://gw@db:5432/speechgw", 30, 2)
    for bad in ({"JOBS_STORE_URL": "redis://db:6379"}, {"JOBS_LEASE_SEC": "0"}, {"JOBS_POLL_SEC": "-1"}):
        with pytest.raises(ConfigError):
            load_env(GatewayConfig, bad)


# runner ---------------------------------------------------------------------------------------
async def test_runner_transcribes_and_stores_finals_and_srt(store: TranscriptStore) -> None:
    seen: list[Job] = []

    async def transcribe(job: Job) -> list[dict[str, Any]]:
        seen.append(job)
        return [*FINALS, {"text": "  ", "ts": [2, 3], "lang": "en"}]  # an empty final is dropped

    runner = JobRunner(store, transcribe, cfg())
    runner.start()
    await runner.enqueue("f1", "http://h/f1.ogg", "en", "default")
    await until(status_is(store, "f1", "done"), what="done")
    await runner.stop()
    job = await store.get("f1")
    assert job is not None and job.attempts == 1 and job.finals == FINALS
    assert seen[0].record_url == "http://h/f1.ogg" and seen[0].lang == "en" and seen[0].domain == "default"
    view = transcript_view(job)
    assert view["flowId"] == "f1" and view["status"] == "done" and view["error"] is None
    assert view["srt"] == "1\n00:00:00,500 --> 00:00:01,250\nhello world\n"
    assert json.loads(json.dumps(view)) == view


async def test_failures_back_off_then_fail_with_last_error(store: TranscriptStore, clock: FakeClock) -> None:
    calls: list[float] = []

    async def transcribe(job: Job) -> list[dict[str, Any]]:
        calls.append(clock())
        raise ConnectionError(f"asr down #{len(calls)}")

    runner = JobRunner(store, transcribe, cfg(max_attempts=3))
    runner.start()
    await runner.enqueue("f1", "http://h/a", "en", "d")
    for attempt, delay in ((1, 10), (2, 20)):
        await until(functools.partial(_attempts_pending, store, "f1", attempt), what=f"retry {attempt}")
        job = await store.get("f1")
        assert job is not None and job.next_attempt_at == clock() + delay
        assert job.last_error == f"ConnectionError: asr down #{attempt}"
        clock.t += delay - 0.5
        runner.wake()  # not yet due: the runner looks and runs nothing
        await until(lambda: _checked(runner, clock()), what="a look at the queue")
        assert len(calls) == attempt
        clock.t += 0.5
        runner.wake()
    await until(status_is(store, "f1", "failed"), what="failed")
    await runner.stop()
    job = await store.get("f1")
    assert job is not None and job.attempts == 3 and job.last_error == "ConnectionError: asr down #3"
    assert calls == [T0, T0 + 10, T0 + 30]
    status, body = transcript_response("f1", job)
    assert status == 200 and body["status"] == "failed" and body["error"].endswith("#3")


async def _checked(runner: JobRunner, now: float) -> bool:
    return runner.checked_at is not None and runner.checked_at >= now


async def _attempts_pending(store: TranscriptStore, flow_id: str, attempts: int) -> bool:
    job = await store.get(flow_id)
    return job is not None and job.status == "pending" and job.attempts == attempts


async def test_permanent_error_fails_at_once(store: TranscriptStore) -> None:
    async def transcribe(job: Job) -> list[dict[str, Any]]:
        raise PermanentJobError("not audio")

    runner = JobRunner(store, transcribe, cfg(max_attempts=5))
    runner.start()
    await runner.enqueue("f1", "http://h/a")
    await until(status_is(store, "f1", "failed"))
    await runner.stop()
    job = await store.get("f1")
    assert job is not None and job.attempts == 1 and job.last_error == "PermanentJobError: not audio"


async def test_concurrency_limit_holds(store: TranscriptStore) -> None:
    release = asyncio.Event()
    running, peak = 0, 0

    async def transcribe(job: Job) -> list[dict[str, Any]]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return FINALS

    runner = JobRunner(store, transcribe, cfg(concurrency=2))
    runner.start()
    for i in range(5):
        await runner.enqueue(f"f{i}", f"http://h/{i}")

    async def two_running() -> bool:
        return (await store.counts())["running"] == 2

    await until(two_running)
    assert len(runner.inflight) == 2
    release.set()

    async def all_done() -> bool:
        return (await store.counts())["done"] == 5

    await until(all_done)
    await runner.stop()
    assert peak == 2


async def test_runner_waits_for_capacity(store: TranscriptStore) -> None:
    capacity = False
    checks = 0

    async def available() -> bool:
        nonlocal checks
        checks += 1
        return capacity

    async def transcribe(job: Job) -> list[dict[str, Any]]:
        return FINALS

    runner = JobRunner(store, transcribe, cfg(), capacity_available=available)
    runner.start()
    await runner.enqueue("f1", "http://h/a")

    async def polled_thrice() -> bool:
        return checks >= 3

    await until(polled_thrice)  # re-checked every capacity_poll_s while busy
    job = await store.get("f1")
    assert job is not None and job.status == "pending" and job.attempts == 0
    capacity = True
    runner.wake()
    await until(status_is(store, "f1", "done"))
    await runner.stop()


@unit
async def test_restart_with_pending_job_completes_it(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "jobs.sqlite"
    first = await AsyncJobStore.open(path, clock)
    started = asyncio.Event()

    async def hang(job: Job) -> list[dict[str, Any]]:
        started.set()
        await asyncio.Event().wait()
        return []

    runner = JobRunner(first, hang, cfg())
    runner.start()
    await runner.enqueue("f1", "http://h/a", "en", "d")
    await asyncio.wait_for(started.wait(), seconds(5))
    # Simulate a crash: the loop dies without releasing; the row stays `running` on disk.
    assert runner._loop_task is not None
    runner._loop_task.cancel()
    for task in list(runner._inflight.values()):
        task.cancel()
    await asyncio.gather(runner._loop_task, *runner._inflight.values(), return_exceptions=True)
    await first.close()

    second = await AsyncJobStore.open(path, clock)
    assert second.store.recovered == 1

    async def ok(job: Job) -> list[dict[str, Any]]:
        return FINALS

    runner2 = JobRunner(second, ok, cfg())
    runner2.start()
    await until(status_is(second, "f1", "done"))
    await runner2.stop()
    job = await second.get("f1")
    assert job is not None and job.attempts == 2 and job.finals == FINALS
    await second.close()


@unit
async def test_crash_on_last_attempt_fails_without_running(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "jobs.sqlite"
    s = JobStore(path, now=T0)
    s.enqueue("f1", "http://h/a", "", "", T0)
    s.claim("f1", T0)  # attempt 1 of 1 was running when the process died
    s.close()
    store = await AsyncJobStore.open(path, clock)
    calls = 0

    async def transcribe(job: Job) -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        return FINALS

    runner = JobRunner(store, transcribe, cfg(max_attempts=1))
    runner.start()
    await until(status_is(store, "f1", "failed"))
    await runner.stop()
    job = await store.get("f1")
    assert calls == 0 and job is not None and job.last_error == "interrupted by a restart"
    await store.close()


async def test_stop_releases_inflight_without_counting(store: TranscriptStore) -> None:
    started = asyncio.Event()

    async def hang(job: Job) -> list[dict[str, Any]]:
        started.set()
        await asyncio.Event().wait()
        return []

    runner = JobRunner(store, hang, cfg())
    runner.start()
    await runner.enqueue("f1", "http://h/a")
    await asyncio.wait_for(started.wait(), seconds(5))
    await runner.stop()
    job = await store.get("f1")
    assert job is not None and job.status == "pending" and job.attempts == 0


async def test_bad_final_shape_is_a_failed_attempt(store: TranscriptStore) -> None:
    async def transcribe(job: Job) -> list[dict[str, Any]]:
        return [{"text": "x"}]  # no ts

    runner = JobRunner(store, transcribe, cfg(max_attempts=1))
    runner.start()
    await runner.enqueue("f1", "http://h/a")
    await until(status_is(store, "f1", "failed"))
    await runner.stop()
    job = await store.get("f1")
    assert job is not None and job.last_error.startswith("KeyError")


# views ----------------------------------------------------------------------------------------
@unit
def test_to_srt_numbers_and_formats_hours() -> None:
    finals = [
        {"text": "one", "ts": [0, 1.5], "lang": "en"},
        {"text": "", "ts": [2, 3], "lang": "en"},
        {"text": "two", "ts": [3725.004, 3726], "lang": "en"},
    ]
    assert to_srt(finals) == ("1\n00:00:00,000 --> 00:00:01,500\none\n\n2\n01:02:05,004 --> 01:02:06,000\ntwo\n")
    assert to_srt([]) == ""


@unit
def test_transcript_response_shapes() -> None:
    assert transcript_response("nope", None)[0] == 404
    assert transcript_response("nope", None)[1]["code"] == "transcript_not_found"
    assert transcript_response("../etc", None)[0] == 400
    job = Job("f1", "http://h/a", "en", "d", "pending", 1, T0 + 5, "ConnectionError: x", None, T0, T0)
    status, body = transcript_response("f1", job)
    assert status == 200
    assert body == {
        "flowId": "f1",
        "status": "pending",
        "attempts": 1,
        "finals": [],
        "srt": "",
        "error": "ConnectionError: x",
        "updated_at": "2027-01-15T08:00:00.000Z",
        "next_attempt_at": "2027-01-15T08:00:05.000Z",
    }


# tenants (docs/security.md) -------------------------------------------------------------------
async def test_jobs_of_two_tenants_with_one_flow_id_are_apart(store: TranscriptStore) -> None:
    a, created_a = await store.enqueue("f1", "http://h/a.flac", "en", "d", tenant="tenant-a")
    b, created_b = await store.enqueue("f1", "http://h/b.flac", "en", "d", tenant="tenant-b")
    assert created_a and created_b and (a.record_url, b.record_url) == ("http://h/a.flac", "http://h/b.flac")
    assert await store.get("f1") is None and await store.get("f1", "tenant-c") is None
    assert await store.claim("f1", "tenant-a") is not None
    assert await store.complete("f1", {"finals": FINALS, "srt": ""}, "tenant-a") is not None
    done, other = await store.get("f1", "tenant-a"), await store.get("f1", "tenant-b")
    assert done is not None and done.status == "done" and done.tenant == "tenant-a"
    assert other is not None and other.status == "pending" and other.finals == []


async def test_records_pending_then_stored_hand_the_url_to_a_waiting_job(
    store: TranscriptStore, clock: FakeClock
) -> None:
    await store.record_pending("f1", tenant="a")
    job, _ = await store.enqueue("f1", "", "en", "d", tenant="a")  # record-only and spooled: no URL yet
    assert job.record_url == "" and await store.get_record("f1", "a") == Record("f1", "a", "pending", "", T0, T0)
    await store.claim("f1", tenant="a")
    await store.wait("f1", "ArchiveUnreachable: in the spool", T0 + 60, tenant="a")  # waits for its record
    clock.t = T0 + 5
    await store.record_stored("f1", "http://h/r/f1.flac", tenant="a")
    job = await store.get("f1", "a")
    assert job is not None and job.record_url == "http://h/r/f1.flac"
    assert job.next_attempt_at == T0 + 5 and [j.flow_id for j in await store.due(10)] == ["f1"]  # due at once
    assert await store.get_record("f1", "b") is None  # another tenant's flow of the same id is not this one
    await store.record_stored("f2", "http://h/r/f2.flac", tenant="a")  # stored before its job was queued
    assert (await store.enqueue("f2", "", "en", "d", tenant="a"))[0].record_url == "http://h/r/f2.flac"


@unit
def test_a_store_from_before_tenants_is_migrated_in_place(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE jobs (flow_id TEXT PRIMARY KEY, record_url TEXT NOT NULL, lang TEXT NOT NULL DEFAULT '',"
        " domain TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
        " next_attempt_at REAL NOT NULL, last_error TEXT NOT NULL DEFAULT '', result TEXT,"
        " created_at REAL NOT NULL, updated_at REAL NOT NULL);"
        f"INSERT INTO jobs VALUES ('old', 'http://h/o.flac', 'en', 'd', 'pending', 1, {T0}, 'x', NULL, {T0}, {T0});"
    )
    db.commit()
    db.close()
    s = JobStore(path, now=T0)
    job = s.get("old")
    assert job is not None and (job.tenant, job.attempts, job.record_url) == ("", 1, "http://h/o.flac")
    _, created = s.enqueue("old", "http://h/t.flac", "en", "d", T0, tenant="tenant-a")
    assert created  # the new key is (tenant, flowId)
    s.close()


@unit
def test_a_store_from_before_waits_gets_the_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "tenanted.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE jobs (flow_id TEXT NOT NULL, record_url TEXT NOT NULL, lang TEXT NOT NULL DEFAULT '',"
        " domain TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
        " next_attempt_at REAL NOT NULL, last_error TEXT NOT NULL DEFAULT '', result TEXT,"
        " created_at REAL NOT NULL, updated_at REAL NOT NULL, tenant TEXT NOT NULL DEFAULT '',"
        " PRIMARY KEY (tenant, flow_id));"
        f"INSERT INTO jobs VALUES ('t', 'http://h/t.flac', 'en', 'd', 'pending', 2, {T0}, 'x', NULL, {T0}, {T0}, 'a');"
    )
    db.commit()
    db.close()
    s = JobStore(path, now=T0)
    job = s.get("t", "a")
    assert job is not None and (job.attempts, job.waits) == (2, 0)
    s.close()


# waits for capacity (busy, unavailable) ---------------------------------------------------------
@unit
def test_wait_schedule_doubles_from_the_poll_up_to_its_cap() -> None:
    plain = Backoff(cfg(capacity_poll_s=2, wait_cap_s=20))
    assert [plain.wait_s(n) for n in range(1, 7)] == [2, 4, 8, 16, 20, 20]
    assert plain.wait_s(10_000) == 20  # no overflow however long the outage
    with pytest.raises(ConfigError):
        JobsConfig(capacity_poll_s=5, wait_cap_s=1)


@unit
@pytest.mark.parametrize(
    ("error", "attempts", "action", "delay"),
    [
        (CapacityUnavailable("ASR error busy"), 1, "wait", 2),  # waits use no attempt...
        (CapacityUnavailable("ASR UNAVAILABLE"), 3, "wait", 2),  # ...even on the last one
        (ConnectionError("reset"), 1, "retry", 10),
        (ConnectionError("reset"), 3, "fail", 0),
        (PermanentJobError("not audio"), 1, "fail", 0),
    ],
)
def test_after_failure_tells_capacity_from_failures(error: Exception, attempts: int, action: str, delay: float) -> None:
    config = cfg(max_attempts=3, capacity_poll_s=2, wait_cap_s=20)
    job = Job("f", "u", "en", "", "running", attempts, T0, "", None, T0, T0)
    assert after_failure(job, error, config, Backoff(config)) == Verdict(action, delay)


async def test_busy_and_unavailable_wait_without_using_attempts(store: TranscriptStore, clock: FakeClock) -> None:
    """The measured fault: a busy ASR failed a job for good after one attempt, and a dead pool burned
    all five in minutes. Here 7 busy or unavailable answers (more than the 3 attempts) end `done`."""
    answers: list[Exception | None] = [
        *[CapacityUnavailable("ASR error busy: all decoders taken")] * 4,
        *[CapacityUnavailable("ASR UNAVAILABLE: connection refused")] * 3,
        ConnectionError("a real failure"),
        None,
    ]

    async def transcribe(job: Job) -> list[dict[str, Any]]:
        answer = answers.pop(0)
        if answer is not None:
            raise answer
        return FINALS

    runner = JobRunner(store, transcribe, cfg(max_attempts=3, capacity_poll_s=1, wait_cap_s=4))
    runner.start()
    await runner.enqueue("f1", "http://h/a", "en", "d")
    for waits, delay in ((1, 1), (2, 2), (3, 4), (4, 4), (5, 4), (6, 4), (7, 4)):
        await until(functools.partial(_waits_pending, store, "f1", waits), what=f"wait {waits}")
        job = await store.get("f1")
        assert job is not None and job.attempts == 0 and job.next_attempt_at == clock() + delay
        clock.t += delay
        runner.wake()
    await until(functools.partial(_attempts_pending, store, "f1", 1), what="the real failure counted")
    clock.t += 10
    runner.wake()
    await until(status_is(store, "f1", "done"), what="done")
    await runner.stop()
    job = await store.get("f1")
    assert job is not None and (job.attempts, job.waits) == (2, 7) and job.finals == FINALS


async def _waits_pending(store: TranscriptStore, flow_id: str, waits: int) -> bool:
    job = await store.get(flow_id)
    return job is not None and job.status == "pending" and job.waits == waits


async def test_job_age_attempts_and_waits_are_observed_when_it_ends(store: TranscriptStore, clock: FakeClock) -> None:
    from orchestrator.metrics import REGISTRY

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"outcome": "done"}) or 0.0

    before = {
        n: sample(n)
        for n in (
            "transcribe_job_age_seconds_sum",
            "transcribe_job_attempts_sum",
            "transcribe_job_waits_sum",
            "transcribe_job_age_seconds_count",
        )
    }
    answers: list[Exception | None] = [CapacityUnavailable("busy"), None]

    async def transcribe(job: Job) -> list[dict[str, Any]]:
        clock.t += 30  # the attempt takes 30 s of store time
        answer = answers.pop(0)
        if answer is not None:
            raise answer
        return FINALS

    runner = JobRunner(store, transcribe, cfg(capacity_poll_s=1))
    runner.start()
    await runner.enqueue("m1", "http://h/a")
    await until(functools.partial(_waits_pending, store, "m1", 1), what="one wait")
    clock.t += 1
    runner.wake()
    await until(status_is(store, "m1", "done"), what="done")
    await runner.stop()
    assert sample("transcribe_job_age_seconds_count") == before["transcribe_job_age_seconds_count"] + 1
    assert sample("transcribe_job_age_seconds_sum") == pytest.approx(before["transcribe_job_age_seconds_sum"] + 61)
    assert sample("transcribe_job_attempts_sum") == before["transcribe_job_attempts_sum"] + 1
    assert sample("transcribe_job_waits_sum") == before["transcribe_job_waits_sum"] + 1


# several gateways on one PostgreSQL store: leases (docs/transcripts.md#several-gateways) ----------
shared_store = pytest.mark.integration


@pytest.fixture
def pg_url(postgres_server: Any) -> str:
    return str(postgres_server.create_schema(f"t_{uuid.uuid4().hex[:12]}"))


async def open_two(url: str, clock: FakeClock) -> tuple[PostgresJobStore, PostgresJobStore]:
    """Two gateways' stores on one database."""
    a = await PostgresJobStore.open(url, lease_s=60, now_fn=clock, owner="gw-a")
    b = await PostgresJobStore.open(url, lease_s=60, now_fn=clock, owner="gw-b")
    return a, b


@shared_store
async def test_a_job_is_claimed_by_one_gateway_and_fenced_from_the_other(pg_url: str, clock: FakeClock) -> None:
    a, b = await open_two(pg_url, clock)
    await a.enqueue("f1", "http://h/a", "en", "d")
    got = await asyncio.gather(*(s.claim("f1") for s in (a, b, a, b)))
    assert sum(j is not None for j in got) == 1  # one winner however the claims interleave
    winner, loser = (a, b) if got[0] is not None or got[2] is not None else (b, a)
    assert await loser.complete("f1", {"finals": FINALS, "srt": ""}) is None  # not its job
    assert await loser.retry("f1", "x", T0) is None and await loser.wait("f1", "x", T0) is None
    assert await loser.release_running() == 0  # a graceful stop gives back only its own jobs
    assert await loser.renew([("", "f1")]) == {("", "f1")}
    assert await winner.renew([("", "f1")]) == set()
    assert await loser.due(10) == []  # the lease holds
    job = await winner.complete("f1", {"finals": FINALS, "srt": ""})
    assert job is not None and job.status == "done" and (await loser.get("f1")) == job  # readable from both
    await a.close()
    await b.close()


@shared_store
async def test_a_dead_gateways_job_is_taken_over_when_its_lease_runs_out(pg_url: str, clock: FakeClock) -> None:
    a, b = await open_two(pg_url, clock)
    await a.enqueue("f1", "http://h/a", "en", "d")
    assert await a.claim("f1") is not None  # then gateway a dies: no renewal, no release
    assert await b.next_due_at() == T0 + 60  # b will look when the lease runs out
    clock.t = T0 + 59.9
    assert await b.due(10) == [] and await b.claim("f1") is None
    clock.t = T0 + 60
    assert [j.status for j in await b.due(10)] == ["running"]
    taken = await b.claim("f1")
    assert taken is not None and taken.attempts == 2 and taken.last_error == "the lease of gw-a ran out"
    assert await a.renew([("", "f1")]) == {("", "f1")}  # a, back from a pause, has lost it
    assert await a.complete("f1", {"finals": [], "srt": ""}) is None
    done = await b.complete("f1", {"finals": FINALS, "srt": ""})
    assert done is not None and done.finals == FINALS
    await a.close()
    await b.close()


@shared_store
async def test_a_survivor_runner_finishes_the_dead_gateways_jobs(pg_url: str, clock: FakeClock) -> None:
    """Gateway a queues two jobs and dies running one; gateway b's runner (never woken by a) finds
    the pending one by polling and the running one once a's lease ran out."""
    a, b = await open_two(pg_url, clock)
    await a.enqueue("queued", "http://h/q", "en", "d")
    await a.enqueue("running", "http://h/r", "en", "d")
    assert await a.claim("running") is not None
    await a.close()  # the crash: the row stays running with a's lease
    seen: list[str] = []

    async def transcribe(job: Job) -> list[dict[str, Any]]:
        seen.append(job.flow_id)
        return FINALS

    runner = JobRunner(b, transcribe, cfg(poll_s=0.05))
    runner.start()
    await until(status_is(b, "queued", "done"), what="the pending job, found by polling")
    assert seen == ["queued"]
    clock.t = T0 + 61
    await until(status_is(b, "running", "done"), what="the taken-over job")
    await runner.stop()
    job = await b.get("running")
    assert job is not None and job.attempts == 2 and seen == ["queued", "running"]
    await b.close()


@shared_store
async def test_a_taken_over_job_on_its_last_attempt_fails_without_running(pg_url: str, clock: FakeClock) -> None:
    a, b = await open_two(pg_url, clock)
    await a.enqueue("f1", "http://h/a")
    await a.claim("f1")  # attempt 1 of 1, and gateway a dies
    clock.t = T0 + 61
    calls = 0

    async def transcribe(job: Job) -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        return FINALS

    runner = JobRunner(b, transcribe, cfg(max_attempts=1, poll_s=0.05))
    runner.start()
    await until(status_is(b, "f1", "failed"))
    await runner.stop()
    assert calls == 0
    await a.close()
    await b.close()


@shared_store
async def test_a_runner_that_lost_its_lease_cancels_the_attempt(pg_url: str, clock: FakeClock) -> None:
    a, b = await open_two(pg_url, clock)
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def hang(job: Job) -> list[dict[str, Any]]:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return []

    runner = JobRunner(a, hang, cfg(lease_s=60))  # its own renewal round would come after 20 s
    runner.start()
    await runner.enqueue("f1", "http://h/a")
    await asyncio.wait_for(started.wait(), seconds(5))
    await runner.renew_leases()
    assert not cancelled.is_set()  # a renewal of a held lease changes nothing
    clock.t = T0 + 61  # a's lease ran out unrenewed (a paused)...
    taken = await b.claim("f1")  # ...and gateway b took the job
    assert taken is not None
    await runner.renew_leases()  # a's next round finds it lost
    await asyncio.wait_for(cancelled.wait(), seconds(5))
    await until(lambda: not runner.inflight, what="the attempt gone")
    await runner.stop()
    job = await b.get("f1")
    assert job is not None and job.status == "running"  # a's stop did not give back b's job
    await a.close()
    await b.close()


@shared_store
async def test_a_query_the_server_holds_fails_after_the_stores_timeout(pg_url: str) -> None:
    """A lock another client holds makes `get` fail in the store's `timeout_s`, not wait for good; the
    URL's own options (here the test's schema) still apply."""
    import psycopg

    store = await PostgresJobStore.open(pg_url, timeout_s=0.5)
    await store.enqueue("f1", "http://h/a")
    async with await psycopg.AsyncConnection.connect(pg_url) as other:
        await other.execute("LOCK TABLE speechgw_jobs IN ACCESS EXCLUSIVE MODE")  # held until `other` ends
        with pytest.raises(psycopg.errors.QueryCanceled):
            await asyncio.wait_for(store.get("f1"), timeout=seconds(10))
    job = await store.get("f1")
    assert job is not None and job.record_url == "http://h/a"
    await store.close()
