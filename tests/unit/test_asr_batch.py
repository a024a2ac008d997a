"""Cross-session batched partials (ASR_BATCH_MAX): DecodeScheduler.batch and the session on a
batch-capable fake engine. Deterministic: the worker is held (a final slot or the fake's gate) while
the partials queue, so which decodes share a batch does not depend on timing."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence

import numpy as np
import pytest

from proto import asr_pb2
from services.asr.config import AsrConfig
from services.asr.scheduler import BatchOutcome, DecodeScheduler, run_batch
from services.asr.session import AsrSession, StreamParams
from tests.fakes import FakeBatchAsrEngine
from tests.poll import seconds, until

pytestmark = pytest.mark.unit
MS = 1_000_000


class Recorder:
    """A batched decode function: records each call's jobs (in order), answers "text of <job>";
    jobs in `bad` make any call containing them raise."""

    def __init__(self, bad: Sequence[str] = ()) -> None:
        self.calls: list[list[str]] = []
        self.bad = set(bad)
        self.lock = threading.Lock()

    def __call__(self, jobs: Sequence[str]) -> list[str]:
        with self.lock:
            self.calls.append(list(jobs))
        if self.bad & set(jobs):
            raise ValueError(f"bad job in {list(jobs)}")
        return [f"text of {job}" for job in jobs]


async def hold_worker(scheduler: DecodeScheduler) -> tuple[asyncio.Event, asyncio.Task[None]]:
    """Take the only worker as a final slot until the returned event is set."""
    release, held = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with scheduler.slot():
            held.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await asyncio.wait_for(held.wait(), seconds(5))
    return release, task


def member(
    scheduler: DecodeScheduler, job: str | None, decode: Callable[[Sequence[str]], Sequence[str]], order: float
) -> asyncio.Task[BatchOutcome[str] | None]:
    return asyncio.create_task(scheduler.batch("en", lambda: job, decode, partial_key=(1, order)))


async def queue_members(
    scheduler: DecodeScheduler, jobs: Sequence[str | None], decode: Callable[[Sequence[str]], Sequence[str]]
) -> list[asyncio.Task[BatchOutcome[str] | None]]:
    tasks = [member(scheduler, job, decode, i) for i, job in enumerate(jobs)]
    await until(lambda: scheduler.depth == len(jobs), what="the partials queued")
    return tasks


async def test_waiting_partials_run_as_batches_of_at_most_batch_max() -> None:
    scheduler, decode = DecodeScheduler(1, batch_max=3), Recorder()
    release, holder = await hold_worker(scheduler)
    tasks = await queue_members(scheduler, ["a", "b", "c", "d", "e"], decode)
    release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks), seconds(5))
    await holder
    assert decode.calls == [["a", "b", "c"], ["d", "e"]]  # in key order, up to batch_max
    assert [o.result if o else None for o in outcomes] == [f"text of {j}" for j in "abcde"]
    assert [o.size if o else 0 for o in outcomes] == [3, 3, 3, 2, 2]
    assert scheduler.idle


async def test_batch_max_1_decodes_one_at_a_time() -> None:
    scheduler, decode = DecodeScheduler(1, batch_max=1), Recorder()
    release, holder = await hold_worker(scheduler)
    tasks = await queue_members(scheduler, ["a", "b", "c"], decode)
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks, holder), seconds(5))
    assert decode.calls == [["a"], ["b"], ["c"]]


async def test_a_free_worker_decodes_a_lone_partial_at_once() -> None:
    scheduler, decode = DecodeScheduler(1, batch_max=4), Recorder()
    outcome = await asyncio.wait_for(scheduler.batch("en", lambda: "a", decode, partial_key=(0, 0.0)), seconds(5))
    assert outcome is not None and (outcome.result, outcome.size) == ("text of a", 1)
    assert decode.calls == [["a"]] and scheduler.idle


async def test_finals_go_before_a_waiting_batch() -> None:
    scheduler, decode = DecodeScheduler(1, batch_max=4), Recorder()
    release, holder = await hold_worker(scheduler)
    partials = await queue_members(scheduler, ["a", "b"], decode)
    final = asyncio.create_task(scheduler.run(lambda: decode(["final"])))
    await until(lambda: scheduler.finals_waiting, what="the final queued")
    release.set()
    await asyncio.wait_for(asyncio.gather(final, *partials, holder), seconds(5))
    assert decode.calls == [["final"], ["a", "b"]]


async def test_waiting_finals_batch_together_oldest_first_and_never_with_partials() -> None:
    scheduler, decode = DecodeScheduler(1, batch_max=2), Recorder()
    release, holder = await hold_worker(scheduler)
    partial = member(scheduler, "p", decode, 0)
    finals = [asyncio.create_task(scheduler.batch("en", functools.partial(str, job), decode)) for job in "xyz"]
    await until(lambda: scheduler.depth == 4, what="the decodes queued")
    release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(partial, *finals, holder), seconds(5))
    assert decode.calls == [["x", "y"], ["z"], ["p"]]  # finals first, oldest first, up to batch_max
    assert [o.result for o in outcomes[1:4] if o] == ["text of x", "text of y", "text of z"]


async def test_groups_are_not_mixed_in_a_batch() -> None:
    scheduler, decode = DecodeScheduler(1, batch_max=4), Recorder()
    release, holder = await hold_worker(scheduler)
    tasks = [
        asyncio.create_task(scheduler.batch(group, functools.partial(str, job), decode, partial_key=(1, float(i))))
        for i, (group, job) in enumerate([("en", "a"), ("de", "x"), ("en", "b"), ("de", "y")])
    ]
    await until(lambda: scheduler.depth == 4, what="the partials queued")
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks, holder), seconds(5))
    assert decode.calls == [["a", "b"], ["x", "y"]]


async def test_a_failing_batch_fails_only_the_job_that_fails_alone() -> None:
    scheduler, decode = DecodeScheduler(1, batch_max=4), Recorder(bad=["b"])
    release, holder = await hold_worker(scheduler)
    tasks = await queue_members(scheduler, ["a", "b", "c"], decode)
    release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), seconds(5))
    await holder
    assert decode.calls == [["a", "b", "c"], ["a"], ["b"], ["c"]]  # the batch, then each job alone
    a, b, c = outcomes
    assert isinstance(a, BatchOutcome) and a.result == "text of a"
    assert isinstance(b, ValueError)
    assert isinstance(c, BatchOutcome) and c.result == "text of c"
    assert scheduler.idle  # the worker came back


def test_run_batch_checks_the_result_count() -> None:
    outcomes = run_batch(lambda jobs: ["one"], ["a", "b"])  # a short answer is retried job by job
    assert outcomes == ["one", "one"]
    single = run_batch(lambda jobs: [], ["a"])
    assert len(single) == 1 and isinstance(single[0], RuntimeError)


async def test_a_member_with_nothing_to_decode_withdraws() -> None:
    scheduler, decode = DecodeScheduler(1, batch_max=4), Recorder()
    release, holder = await hold_worker(scheduler)
    tasks = await queue_members(scheduler, ["a", None, "c"], decode)
    release.set()
    a, withdrawn, c = await asyncio.wait_for(asyncio.gather(*tasks), seconds(5))
    await holder
    assert withdrawn is None and a is not None and c is not None
    assert decode.calls == [["a", "c"]]


async def test_when_every_member_withdraws_the_worker_goes_on() -> None:
    scheduler, decode = DecodeScheduler(1, batch_max=2), Recorder()
    release, holder = await hold_worker(scheduler)
    tasks = await queue_members(scheduler, [None, None, "c"], decode)
    release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, holder), seconds(5))
    assert outcomes[:2] == [None, None] and decode.calls == [["c"]]
    assert scheduler.idle


async def test_a_member_cancelled_while_the_batch_runs_costs_the_others_nothing() -> None:
    gate = threading.Event()

    def slow(jobs: Sequence[str]) -> list[str]:
        gate.wait(5)
        return [f"text of {job}" for job in jobs]

    scheduler = DecodeScheduler(1, batch_max=4)
    release, holder = await hold_worker(scheduler)
    tasks = await queue_members(scheduler, ["a", "b"], slow)
    release.set()
    await holder
    await until(lambda: scheduler.depth == 0, what="the batch granted")
    tasks[0].cancel()
    gate.set()
    b = await asyncio.wait_for(tasks[1], seconds(5))
    assert b is not None and b.result == "text of b"
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    await until(lambda: scheduler.idle, what="the worker released")


async def test_a_member_cancelled_before_its_grant_leaves_the_queue() -> None:
    scheduler, decode = DecodeScheduler(1, batch_max=4), Recorder()
    release, holder = await hold_worker(scheduler)
    tasks = await queue_members(scheduler, ["a", "b"], decode)
    tasks[0].cancel()
    await asyncio.gather(tasks[0], return_exceptions=True)
    release.set()
    b = await asyncio.wait_for(tasks[1], seconds(5))
    await holder
    assert b is not None and decode.calls == [["b"]]


# the session on a batch-capable engine -------------------------------------------------------


def level_frame(seq: int, level: int) -> asr_pb2.ClientFrame:
    pcm = np.full(320, level, "<i2").tobytes()
    return asr_pb2.ClientFrame(opus=asr_pb2.OpusPacket(data=pcm, seq=seq))


async def stream(level: int, frames: int, done: asyncio.Event) -> AsyncIterator[asr_pb2.ClientFrame]:
    kind = asr_pb2.Endpoint.SPEECH_START
    yield asr_pb2.ClientFrame(endpoint=asr_pb2.Endpoint(kind=kind, pts=0))
    for seq in range(frames):
        yield level_frame(seq, level)
    await done.wait()  # the utterance stays open until the test has its partials


async def test_sessions_share_a_batch_and_each_gets_its_own_text() -> None:
    engine = FakeBatchAsrEngine()
    engine.gate.clear()  # the first partial holds the worker until every session waits
    scheduler = DecodeScheduler(1, batch_max=4)
    config = AsrConfig(min_partial_audio_ms=100, speech_preroll_ms=0, speech_tail_ms=0)
    levels = (1000, 2000, 3000, 4000)
    done = asyncio.Event()
    events: dict[int, list[asr_pb2.AsrEvent]] = {level: [] for level in levels}

    async def one(level: int) -> None:
        start = asr_pb2.Start(flow_id=f"f{level}", codec="pcm", sr=16000, frame_ms=20, vad_endpoints=True)
        params = StreamParams.from_start(start, config)

        async def emit(event: asr_pb2.AsrEvent) -> None:
            events[level].append(event)

        await AsrSession(params, engine, scheduler, config).run(stream(level, 25, done), emit)

    sessions = [asyncio.create_task(one(level)) for level in levels]
    await until(lambda: engine.started.is_set() and scheduler.depth == len(levels) - 1, what="3 partials waiting")
    engine.gate.set()
    await until(lambda: all(any(e.type == "partial" for e in ev) for ev in events.values()), what="a partial each")
    done.set()
    await asyncio.wait_for(asyncio.gather(*sessions), seconds(5))
    assert engine.batches[:2] == [1, 3]  # the first alone (the worker was free), then the 3 waiting together
    assert sum(engine.final_batches) == len(levels)  # one final each, batched or not
    for level, session_events in events.items():
        texts = [e.text for e in session_events if e.type in ("partial", "final")]
        assert texts and all(t.startswith(f"level {level},") for t in texts), texts
        assert all(e.flow_id == f"f{level}" for e in session_events)


async def test_a_session_whose_decode_fails_alone_does_not_fail_the_others() -> None:
    """Failure semantics: the batch is retried job by job; only the session whose own audio fails
    gets the error (a partial failure ends that stream, as a partial failure always has)."""
    engine = FakeBatchAsrEngine(fail_levels=[2000])
    engine.gate.clear()
    scheduler = DecodeScheduler(1, batch_max=4)
    config = AsrConfig(min_partial_audio_ms=100, speech_preroll_ms=0, speech_tail_ms=0)
    done = asyncio.Event()
    events: dict[int, list[asr_pb2.AsrEvent]] = {1000: [], 2000: [], 3000: []}

    async def one(level: int) -> None:
        start = asr_pb2.Start(flow_id=f"f{level}", codec="pcm", sr=16000, frame_ms=20, vad_endpoints=True)

        async def emit(event: asr_pb2.AsrEvent) -> None:
            events[level].append(event)

        await AsrSession(StreamParams.from_start(start, config), engine, scheduler, config).run(
            stream(level, 25, done), emit
        )

    sessions = {level: asyncio.create_task(one(level)) for level in events}
    await until(lambda: engine.started.is_set() and scheduler.depth == 2, what="2 partials waiting")
    engine.gate.set()
    await until(lambda: sessions[2000].done(), what="the failing session ended")
    await until(lambda: all(any(e.type == "partial" for e in events[lv]) for lv in (1000, 3000)), what="partials")
    done.set()
    results = await asyncio.wait_for(asyncio.gather(*sessions.values(), return_exceptions=True), seconds(5))
    assert isinstance(results[1], RuntimeError) and "level 2000" in str(results[1])
    assert results[0] is None and results[2] is None
    assert not events[2000] or all(e.type != "partial" for e in events[2000])
    for level in (1000, 3000):
        assert all(e.text.startswith(f"level {level},") for e in events[level] if e.type in ("partial", "final"))


def test_batch_max_is_validated() -> None:
    from common.envconf import ConfigError, load_env

    assert load_env(AsrConfig, {"ASR_BATCH_MAX": "8"}).batch_max == 8
    assert load_env(AsrConfig, {}).batch_max == AsrConfig().batch_max
    with pytest.raises(ConfigError, match="ASR_BATCH_MAX"):
        load_env(AsrConfig, {"ASR_BATCH_MAX": "0"})


LEVELS = (1000, 2000, 3000)


async def close_together(engine: FakeBatchAsrEngine, frames: Callable[[int], int]) -> dict[int, list[asr_pb2.AsrEvent]]:
    """Three sessions (one per level of LEVELS, `frames(level)` frames each) whose utterances close
    while the only worker is busy, so their finals wait together; the events each session got."""
    scheduler = DecodeScheduler(1, batch_max=4)
    config = AsrConfig(min_partial_audio_ms=10_000, speech_preroll_ms=0, speech_tail_ms=0)  # no partials
    ends = {level: asyncio.Event() for level in LEVELS}
    events: dict[int, list[asr_pb2.AsrEvent]] = {level: [] for level in LEVELS}

    async def one(level: int) -> None:
        start = asr_pb2.Start(flow_id=f"f{level}", codec="pcm", sr=16000, frame_ms=20, vad_endpoints=True)

        async def emit(event: asr_pb2.AsrEvent) -> None:
            events[level].append(event)

        await AsrSession(StreamParams.from_start(start, config), engine, scheduler, config).run(
            stream(level, frames(level), ends[level]), emit
        )

    release, holder = await hold_worker(scheduler)  # the worker is busy while the utterances close
    sessions = [asyncio.create_task(one(level)) for level in LEVELS]
    for level in LEVELS:
        ends[level].set()
    await until(lambda: scheduler.depth == len(LEVELS), what="3 finals waiting")
    release.set()
    await asyncio.wait_for(asyncio.gather(*sessions, holder), seconds(5))  # no session fails
    return events


async def test_finals_of_sessions_closing_together_share_a_batch() -> None:
    engine = FakeBatchAsrEngine()
    events = await close_together(engine, lambda level: 10 + level // 100)
    assert engine.final_batches == [3] and engine.batches == []
    for level in LEVELS:
        finals = [e for e in events[level] if e.type == "final"]
        assert [e.text for e in finals] == [f"level {level}, {(10 + level // 100) * 20} ms"]


async def test_a_final_that_fails_alone_costs_only_its_utterance() -> None:
    """A failed batch of finals is retried final by final: the failing one becomes a
    `decode_failed` error event for that utterance, the others get their finals."""
    engine = FakeBatchAsrEngine(fail_levels=[2000])
    events = await close_together(engine, lambda level: 10)
    assert engine.final_batches == [3, 1, 1, 1]  # the batch of 3 raised, then each final alone
    assert [(e.type, e.code) for e in events[2000]] == [("error", "decode_failed"), ("end", "")]
    for level in (1000, 3000):
        assert [(e.type, e.text) for e in events[level]] == [("final", f"level {level}, 200 ms"), ("end", "")]


class Timed:
    """A batched decode that takes `seconds` of wall time and records when each call ran."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.runs: list[tuple[list[str], float, float]] = []

    def __call__(self, jobs: Sequence[str]) -> list[str]:
        t0 = time.monotonic()
        time.sleep(self.seconds)
        self.runs.append((list(jobs), t0, time.monotonic()))
        return [f"text of {job}" for job in jobs]


async def test_the_duty_cap_rests_updates_but_never_finals_or_first_partials() -> None:
    scheduler, decode = DecodeScheduler(1, batch_max=4, update_duty=0.2), Timed(0.1)
    first = await scheduler.batch("en", lambda: "u1", decode, partial_key=(1, 0.0))
    assert first is not None
    update = asyncio.create_task(scheduler.batch("en", lambda: "u2", decode, partial_key=(1, 1.0)))
    await until(lambda: scheduler.depth == 1, what="the second update queued")
    assert not scheduler.idle and decode.runs[-1][0] == ["u1"]  # the worker is free, the update rests
    opening = asyncio.create_task(scheduler.batch("en", lambda: "p1", decode, partial_key=(0, 2.0)))
    final = asyncio.create_task(scheduler.batch("en", lambda: "f1", decode))
    await asyncio.wait_for(asyncio.gather(opening, final, update), seconds(5))
    assert [jobs for jobs, _, _ in decode.runs] == [["u1"], ["p1"], ["f1"], ["u2"]]
    u1_end, u2_start = decode.runs[0][2], decode.runs[3][1]
    assert u2_start - u1_end >= 0.4 * 0.9  # rest = 0.1 s x (1 / 0.2 - 1)
    assert scheduler.idle


def test_update_duty_is_validated() -> None:
    with pytest.raises(ValueError, match="update_duty"):
        DecodeScheduler(1, update_duty=0.0)
