"""The gateway's SRE metrics: zero from the start, the SLO latencies (orchestrator/speech_latency.py),
session outcomes and modes, breaker states, the deferred-job backlog. docs/metrics.md lists them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from common.audio import BYTES_PER_S
from orchestrator import metrics
from orchestrator.core.events import SpeechBoundary, StageName, Transcript
from orchestrator.core.protocol import ErrorCode
from orchestrator.core.session import Session, SessionConfig
from orchestrator.gateway import count_outcome
from orchestrator.routing.breaker import BreakerConfig
from orchestrator.routing.pool import AsrPool
from orchestrator.routing.table import PoolSpec
from orchestrator.speech_latency import SpeechLatencyProbe
from orchestrator.stages.base import AudioSource, StageContext
from orchestrator.transcripts.runner import JobRunner
from orchestrator.transcripts.store import AsyncJobStore, Job, JobsConfig
from tests.clock import FakeClock
from tests.fakes import SECOND, FakeConnection, FakeStage
from tests.poll import until
from tests.unit.test_driver import BrokenAsr, drive

pytestmark = pytest.mark.unit
CHUNK = BYTES_PER_S // 50  # 20 ms
FRESH_SCRAPE = (
    "import orchestrator.gateway, prometheus_client, orchestrator.metrics as m;"
    "print(prometheus_client.generate_latest(m.REGISTRY).decode())"
)


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def real_time(probe: SpeechLatencyProbe, seconds: float, t0: float = 100.0) -> float:
    """Feed `seconds` of audio in 20 ms messages at real-time pace from `t0`; returns the end time."""
    n = round(seconds * 50)
    for i in range(1, n + 1):
        probe.on_audio(CHUNK, t0 + i * 0.02)
    return t0 + n * 0.02


def test_every_label_set_known_at_start_is_exported_at_zero() -> None:
    # A fresh interpreter: what a just-started gateway serves (this one's counters have moved).
    text = subprocess.run(
        [sys.executable, "-c", FRESH_SCRAPE], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    for line in (
        'egress_events_total{type="asr_final"} 0.0',
        'egress_events_total{type="ack"} 0.0',
        'orchestrator_stage_failures_total{stage="denoise"} 0.0',
        'orchestrator_session_outcomes_total{code="none",reason="idle"} 0.0',
        'orchestrator_session_outcomes_total{code="too_many_sessions",reason="refused"} 0.0',
        'orchestrator_session_modes_total{mode="record_only"} 0.0',
        'asr_link_bytes_total{codec="pcm"} 0.0',
        'transcribe_jobs_total{outcome="failed"} 0.0',
        "transcribe_jobs_oldest_age_seconds 0.0",
    ):
        assert line in text, line
    for code in ErrorCode:
        assert f'orchestrator_errors_total{{code="{code.value}"}} 0.0' in text, code


def test_first_partial_is_timed_from_the_arrival_of_the_first_speech_sample() -> None:
    probe = SpeechLatencyProbe()
    end = real_time(probe, 2.0)  # audio second s arrived at 100 + s
    before = value("orchestrator_first_partial_latency_ms_count", pool="fp")
    probe.on_boundary(SpeechBoundary("start", 1_000_000_000))  # speech from 1.0 s: arrived at 101.0
    probe.on_transcript(Transcript(False, "he", 1.0, 1.3, pool="fp"), 101.35)
    probe.on_transcript(Transcript(False, "hello", 1.0, 1.6, pool="fp"), end)  # once per session
    probe.on_boundary(SpeechBoundary("start", 1_900_000_000))
    assert value("orchestrator_first_partial_latency_ms_count", pool="fp") == before + 1
    assert value("orchestrator_first_partial_latency_ms_sum", pool="fp") == pytest.approx(350, abs=0.5)
    assert value("orchestrator_first_partial_latency_ms_bucket", pool="fp", le="300.0") == 0
    assert value("orchestrator_first_partial_latency_ms_bucket", pool="fp", le="350.0") == before + 1


def test_a_partial_before_the_speech_start_is_observed_when_the_start_comes() -> None:
    probe = SpeechLatencyProbe()
    real_time(probe, 1.0)
    probe.on_transcript(Transcript(False, "x", 0.5, 0.8, pool="early"), 100.9)
    assert value("orchestrator_first_partial_latency_ms_count", pool="early") == 0
    probe.on_boundary(SpeechBoundary("start", 500_000_000))  # arrived at 100.5
    assert value("orchestrator_first_partial_latency_ms_sum", pool="early") == pytest.approx(400, abs=0.5)


def test_final_lag_pairs_each_final_with_its_speech_end_and_skips_ends_without_a_final() -> None:
    probe = SpeechLatencyProbe()
    real_time(probe, 6.0)
    probe.on_boundary(SpeechBoundary("start", 500_000_000))
    probe.on_boundary(SpeechBoundary("end", 1_500_000_000))  # an utterance with no final (noise)
    probe.on_boundary(SpeechBoundary("start", 2_000_000_000))
    probe.on_boundary(SpeechBoundary("end", 3_000_000_000))  # arrived at 103.0
    probe.on_transcript(Transcript(True, "one", 2.0, 3.0, pool="lag"), 103.8)
    probe.on_transcript(Transcript(True, "cut", 3.0, 4.0, pool="lag"), 104.1)  # no end left: not timed
    assert value("orchestrator_final_lag_ms_count", pool="lag") == 1
    assert value("orchestrator_final_lag_ms_sum", pool="lag") == pytest.approx(800, abs=0.5)


def test_arrival_of_audio_in_marked_and_unmarked_messages() -> None:
    probe = SpeechLatencyProbe()
    probe.on_audio(BYTES_PER_S, 10.0)  # one second at once: every sample in it came at 10.0
    probe.on_audio(1000, 10.01)  # too small to carry a mark
    probe.on_audio(BYTES_PER_S, 10.02)  # a faster-than-real-time second
    probe.on_audio(640, 12.0)
    assert probe.arrival_of(BYTES_PER_S // 2) == 10.0
    # In the unmarked message: dated back from the next mark, never before the previous one.
    assert probe.arrival_of(BYTES_PER_S + 500) == 10.0
    assert probe.arrival_of(BYTES_PER_S + 1000 + 10) == 10.02
    # After the last mark: dated back from the latest message (within that message's 20 ms).
    assert probe.arrival_of(2 * BYTES_PER_S + 1000 + 5) == pytest.approx(12.0, abs=0.021)
    assert probe.arrival_of(10 * BYTES_PER_S) == 12.0  # past the audio: the latest


def test_real_time_audio_is_dated_within_one_message() -> None:
    probe = SpeechLatencyProbe()
    real_time(probe, 3.0)
    for s in (0.5, 1.01, 2.33):
        assert probe.arrival_of(int(s * BYTES_PER_S)) == pytest.approx(100 + s, abs=0.021)


async def test_the_driver_feeds_the_probe_from_real_boundaries_and_transcripts() -> None:
    conn = FakeConnection()
    vad = FakeStage(StageName.VAD, AudioSource.RAW)
    asr = FakeStage(StageName.ASR)

    async def boundary(ctx: StageContext) -> None:
        if vad.audio_bytes == len(SECOND):
            ctx.report(SpeechBoundary("start", 100_000_000))

    async def transcripts(ctx: StageContext) -> None:
        if asr.audio_bytes == len(SECOND):
            ctx.report(Transcript(False, "hi", 0.1, 0.5, pool="drv"))

    vad.answer = boundary  # type: ignore[method-assign]
    asr.answer = transcripts  # type: ignore[method-assign]
    conn.incoming.put_nowait('{"type":"start","flowId":"f1","return":["asr"],"hints":{"user_lang_pref":"en"}}')
    conn.incoming.put_nowait(SECOND)
    conn.incoming.put_nowait('{"type":"flush"}')
    await drive(conn, [vad, asr])
    assert "asr_partial" in conn.kinds()
    assert value("orchestrator_first_partial_latency_ms_count", pool="drv") == 1


async def test_outcomes_and_modes_of_closed_sessions() -> None:
    def delta_outcome(reason: str, code: str) -> float:
        return value("orchestrator_session_outcomes_total", reason=reason, code=code)

    flushed_before, lost_before = (
        delta_outcome("flush", "none"),
        value("orchestrator_session_modes_total", mode="asr_lost"),
    )
    conn = FakeConnection()
    conn.send_start(pref="en")
    conn.incoming.put_nowait(SECOND)
    conn.incoming.put_nowait('{"type":"flush"}')
    driver = await drive(conn, [BrokenAsr()])
    count_outcome(driver.session)
    assert delta_outcome("flush", "none") == flushed_before + 1
    assert value("orchestrator_session_modes_total", mode="asr_lost") == lost_before + 1

    refused_before = delta_outcome("refused", "too_many_sessions")
    no_asr_before = value("orchestrator_session_modes_total", mode="no_asr")
    session = Session(SessionConfig(stages=(StageName.VAD,)), 0.0, "gen")
    session.refuse(ErrorCode.TOO_MANY_SESSIONS, "full")
    count_outcome(session)
    assert delta_outcome("refused", "too_many_sessions") == refused_before + 1
    assert value("orchestrator_session_modes_total", mode="no_asr") == no_asr_before  # never streamed


def test_breaker_state_per_member_is_read_at_scrape() -> None:
    pool = AsrPool(PoolSpec("brk", ("127.0.0.1:1", "127.0.0.1:2")), BreakerConfig(failure_threshold=1, open_s=5))
    metrics.init_pools({"brk": pool})
    assert value("orchestrator_asr_member_breaker_state", pool="brk", addr="127.0.0.1:1") == 0
    assert value("orchestrator_asr_pool_picks_total", pool="brk", result="breaker_open") == 0
    pool.members[0].record_failure(100.0, "UNAVAILABLE")
    metrics.refresh_breakers(pool.members, 101.0)
    assert value("orchestrator_asr_member_breaker_state", pool="brk", addr="127.0.0.1:1") == 2
    assert value("orchestrator_asr_member_breaker_state", pool="brk", addr="127.0.0.1:2") == 0
    metrics.refresh_breakers(pool.members, 106.0)  # the open period is over: a trial is allowed
    assert value("orchestrator_asr_member_breaker_state", pool="brk", addr="127.0.0.1:1") == 1


async def test_job_backlog_and_the_age_of_its_oldest_job(tmp_path: Path) -> None:
    clock = FakeClock()
    store = await AsyncJobStore.open(tmp_path / "jobs.sqlite", clock)
    release = asyncio.Event()

    async def transcribe(job: Job) -> list[dict[str, object]]:
        await release.wait()
        return []

    runner = JobRunner(store, transcribe, JobsConfig(concurrency=1, capacity_poll_s=0.01))
    runner.start()
    try:
        await runner.enqueue("a", "http://h/a.ogg")
        clock.advance(30)
        await runner.enqueue("b", "http://h/b.ogg")
        await until(lambda: value("transcribe_jobs_backlog") == 2, what="two jobs in the backlog")
        clock.advance(15)
        assert value("transcribe_jobs_oldest_age_seconds") == pytest.approx(45)
        release.set()
        await until(lambda: value("transcribe_jobs_backlog") == 0, what="backlog drained")
        assert value("transcribe_jobs_oldest_age_seconds") == 0
    finally:
        await runner.stop()
        await store.close()
