"""The soak's arithmetic: quantiles from histogram bucket deltas, the flatness verdict, and the plot of
the JSON as tests/perf/soak.py writes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.corpus import Case, Segment
from tests.perf.plot_soak import main, plot, table
from tests.perf.soak import (
    client_latency,
    delta,
    peak_rss,
    quantile,
    session_summary,
    slope_and_error,
    slope_per_hour,
    verdict,
)

pytestmark = pytest.mark.unit


def test_quantile_interpolates_within_a_bucket_like_histogram_quantile() -> None:
    buckets = {"100.0": 10.0, "200.0": 30.0, "+Inf": 40.0}
    assert quantile(0.25, buckets) == pytest.approx(100.0)  # rank 10: the top of the first bucket
    assert quantile(0.5, buckets) == pytest.approx(150.0)  # rank 20: halfway through (100, 200]
    assert quantile(0.95, buckets) == pytest.approx(200.0)  # in +Inf: the highest finite bound
    assert quantile(0.5, {"100.0": 0.0, "+Inf": 0.0}) is None


def test_a_minute_is_the_difference_of_two_cumulative_scrapes() -> None:
    before = {"100.0": 10.0, "200.0": 30.0, "+Inf": 40.0}
    after = {"100.0": 10.0, "200.0": 50.0, "+Inf": 60.0}
    minute = delta(before, after)
    assert minute == {"100.0": 0.0, "200.0": 20.0, "+Inf": 20.0}
    assert quantile(0.5, minute) == pytest.approx(150.0)


def test_slope_is_per_hour() -> None:
    ts = [0.0, 60.0, 120.0, 180.0]
    assert slope_per_hour(ts, [100.0, 101.0, 102.0, 103.0]) == pytest.approx(60.0)
    assert slope_and_error(ts, [100.0, 101.0, 102.0, 103.0])[1] == pytest.approx(0.0, abs=1e-9)
    assert slope_and_error(ts, [100.0, 103.0, 100.0, 103.0])[1] > 0  # noise widens it


def sample(
    t: float, rss: float, tasks: float, lag_count: float, *, slow: bool = False, idle: bool = False
) -> dict[str, Any]:
    # cumulative buckets: `lag_count` finals so far, under 500 ms unless `slow`
    under = 0.0 if slow else lag_count
    hist = {"500.0": under, "5000.0": lag_count, "+Inf": lag_count}
    return {
        "t": t,
        "idle": idle,
        "load": [1.0, 1.0, 1.0],
        "procs": {"gateway": {"rss_mb": rss, "fds": 30, "threads": 16, "cpu_s": 0.0}},
        "gauges": {"orchestrator_event_loop_tasks": tasks, "orchestrator_active_sessions": 0 if idle else 4},
        "hist": {"first_partial": hist, "final_lag": hist},
    }


def run(rss_per_min: float, *, tasks_after: float = 6.0, slow_end: bool = False) -> list[dict[str, Any]]:
    out = [sample(0.0, 100.0, 6.0, 0.0, idle=True)]
    total = 0.0
    for k in range(1, 31):
        prev = out[-1]["hist"]["final_lag"]
        total += 10.0
        s = sample(60.0 * k, 100.0 + rss_per_min * k, 60.0, total)
        if slow_end and k > 20:  # the last third's finals all land above 500 ms
            s["hist"]["final_lag"] = {"500.0": prev["500.0"], "5000.0": total, "+Inf": total}
        out.append(s)
    out.append(sample(60.0 * 31, 100.0 + rss_per_min * 30, tasks_after, total, idle=True))
    return out


def failed(samples: list[dict[str, Any]]) -> set[str]:
    return {c["check"] for c in verdict(samples, rss_slope_mb_h=10.0, latency_tol=0.25)["checks"] if not c["ok"]}


def test_a_steady_stack_is_flat() -> None:
    v = verdict(run(0.0), rss_slope_mb_h=10.0, latency_tol=0.25)
    assert v["flat"] and failed(run(0.0)) == set()


def test_memory_growth_tasks_left_behind_and_slower_finals_each_fail_their_check() -> None:
    assert failed(run(0.5)) == {"rss gateway"}  # 30 MB/h
    assert failed(run(0.0, tasks_after=20.0)) == {"idle tasks gateway"}
    assert failed(run(0.0, slow_end=True)) == {"p95 final_lag"}
    stuck = run(0.0)
    stuck[0]["streams"] = {"asr.en:asr_inflight_sessions": 0.0}
    stuck[-1]["streams"] = {"asr.en:asr_inflight_sessions": 1.0}  # a stream no session holds any more
    assert failed(stuck) == {"idle asr.en:asr_inflight_sessions"}


def test_the_rss_rule_reads_each_intervals_peak_not_the_reading_at_the_sample() -> None:
    # RSS read at the sample stays put while the peak between samples climbs 30 MB/h: it grows.
    climbing = run(0.0)
    for k, s in enumerate(climbing):
        s["procs"]["gateway"]["rss_peak_mb"] = 150.0 + 0.5 * k
    assert failed(climbing) == {"rss gateway"}
    # A reading that swings with when the heap was last given back, under a steady peak: flat.
    swinging = run(0.0)
    for k, s in enumerate(swinging):
        s["procs"]["gateway"] |= {"rss_mb": 100.0 + (50.0 if k > 15 else 0.0), "rss_peak_mb": 150.0}
    assert failed(swinging) == set()


def test_a_service_is_judged_on_its_floor_after_the_give_back_not_on_the_peaks_of_its_batches() -> None:
    # Peaks climbing 30 MB/h (bigger batches in flight) over a flat floor: flat.
    batches = run(0.0)
    for k, s in enumerate(batches):
        s["procs"]["gateway"]["rss_peak_mb"] = 150.0 + 0.5 * k
        s["floors"] = {"gateway": 100.0}
    v = verdict(batches, rss_slope_mb_h=10.0, latency_tol=0.25)
    assert failed(batches) == set() and "rss floor gateway" in {c["check"] for c in v["checks"]}
    assert v["peak_rss_slopes_mb_h"]["gateway"][0] == pytest.approx(30.0)
    # The floor itself climbing 30 MB/h (memory kept after the give-back): grows.
    kept = run(0.0)
    for k, s in enumerate(kept):
        s["floors"] = {"gateway": 100.0 + 0.5 * k}
    assert failed(kept) == {"rss floor gateway"}
    # A floor in too few samples (published from the last minutes on only): the peak decides.
    late = run(0.0)
    for k, s in enumerate(late):
        s["procs"]["gateway"]["rss_peak_mb"] = 150.0 + 0.5 * k
        if k > 28:
            s["floors"] = {"gateway": 100.0}
    assert failed(late) == {"rss gateway"}


def live(t_end: float, lang: str, first_partial_ms: float | None) -> dict[str, Any]:
    return {"kind": "live", "lang": lang, "t_start": t_end - 10.0, "t_end": t_end, "first_partial_ms": first_partial_ms}


def test_the_clients_first_partials_by_third_and_language_name_the_sessions_that_make_the_tail() -> None:
    recs = [live(10.0 + k, "en", 700.0) for k in range(90)]  # thirds of t 0-99: [0, 33), [33, 66), [66, 99]
    recs += [live(80.0 + k, "es", 6000.0) for k in range(10)]  # ten slow es sessions at the end
    recs += [live(50.0, "en", None), {"kind": "dropped", "t_start": 0.0, "t_end": 1.0}]  # neither counts
    first, _, last = client_latency(recs)
    assert (first["sessions"], first["slow"], first["p95"]) == (23, 0, pytest.approx(700.0))
    assert (last["sessions"], last["slow"], last["by_lang"]["es"]["slow"]) == (44, 10, 10)
    assert last["by_lang"]["en"]["p95"] == pytest.approx(700.0) and last["p95"] == pytest.approx(6000.0)
    steady = run(0.0)
    assert failed(steady) == set()
    slower = verdict(steady, rss_slope_mb_h=10.0, latency_tol=0.25, client_thirds=[first, _, last])
    assert [c["check"] for c in slower["checks"] if not c["ok"]] == ["p95 client first partial"]
    same = verdict(steady, rss_slope_mb_h=10.0, latency_tol=0.25, client_thirds=[first, _, first])
    assert same["flat"]
    assert client_latency([{"kind": "dropped", "t_start": 0.0, "t_end": 1.0}]) == []


def test_a_sessions_summary_says_when_its_language_came_after_the_first_speech_sample() -> None:
    case = Case("es-lead", Path("es.wav"), "es", 6.0, (Segment(1.5, 4.0, "hola", "es"),))
    events = [
        (100.1, {"type": "ack"}),
        (104.5, {"type": "lid", "lang": "es", "score": 0.74, "source": "lid"}),
        (106.0, {"type": "asr_partial", "text": "hola", "ts": [1.5, 2.0]}),
        (107.0, {"type": "end"}),
    ]
    out = session_summary("live", case, {"events": events, "late_max_s": 0.0, "t0": 100.0}, 99.0)
    assert out["lid_ms"] == pytest.approx(3000.0) and out["lid"] == ["es", 0.74]
    assert out["first_partial_ms"] == pytest.approx(4500.0)
    assert "lid_ms" not in session_summary("live", case, {"events": events[:1], "late_max_s": 0.0, "t0": 100.0}, 99.0)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's VmHWM")
def test_peak_rss_is_the_peak_since_the_last_call() -> None:
    me = psutil.Process()
    peak_rss(me)
    block = bytearray(64 * 2**20)  # one mmap: freed to the kernel at once when dropped
    block[::4096] = b"x" * (len(block) // 4096)
    del block
    held = peak_rss(me)
    assert held - me.memory_info().rss > 48 * 2**20  # the 64 MB, gone now, in this interval's peak
    assert peak_rss(me) - me.memory_info().rss < 8 * 2**20  # the next interval starts without it


def test_plot_writes_a_png(tmp_path: Path) -> None:
    samples = run(0.1)
    for s in samples:
        s |= {"client": {"first_partial_ms_p50": 400.0, "final_lag_ms_p50": None}}
        s |= {k: 300.0 for k in ("first_partial_p50", "first_partial_p95", "final_lag_p50", "final_lag_p95")}
        s["procs"]["vad"] = {"rss_mb": 80.0, "rss_peak_mb": 95.0, "fds": 20, "threads": 12, "cpu_s": 0.0}
        s["floors"] = {} if s["t"] < 60 else {"vad": 82.0}  # a service's floor from its first give-back on
    result = {
        "date": "2026-12-01T18:00:00",
        "cores": 2,
        "args": {"minutes": 30, "sessions": 4, "reconnects": 1, "bad_every_s": 20},
        "load_avg_1m": {"median": 3.0},
        "verdict": {"flat": True},
        "samples": samples,
    }
    out = tmp_path / "img" / "soak.png"
    plot(result, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # From the command line without --out: beside the JSON, never over the published plot.
    (tmp_path / "run.json").write_text(json.dumps(result))
    assert main([str(tmp_path / "run.json")]) == 0
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = table(result, 10).splitlines()[2:]  # the idle samples and minutes 10, 20, 30
    assert [r.split(" | ")[0] for r in rows] == ["| 0 (idle)", "| 10", "| 20", "| 30", "| 31 (idle)"]
    assert [r.split(" | ")[2] for r in rows] == ["95 / -", "95 / 82", "95 / 82", "95 / 82", "95 / 82"]  # vad
