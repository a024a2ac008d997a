"""Live transcription as users meet it (make bench; issue 9): the default `make run` stack, N concurrent
real-time sessions of speech with 0-3 s lead-ins of silence or noise and pauses, from a separate client
process.

The stack is devtools.stack's default (VAD, LID, ASR pools `en` = Whisper tiny.en and `multi` = Whisper
base, archive, gateway; each its own process). The audio comes from tests/corpus.py (espeak-ng + sox, so
the first speech sample and the reference text are known). Each session is paced at real time: chunk k
of 20 ms leaves the client at t0 + k * 20 ms. Printed per N and language mode (`auto`: LID routing;
`hint`: `user_lang_pref` set to the spoken language):

- completed sessions (`end` received), degraded (`asr_unavailable` / record-only), sessions without a
  partial, sessions with text before their speech began (received before it, or `ts` ending before it);
- first partial P50/P95 from the first speech sample; final lag P50/P95 (the last `asr_final` after the
  last audio chunk); WER of English and of other sessions (degraded sessions left out);
- CPU seconds per session-second of audio and peak RSS of each stack process (psutil, children
  included), and the load average.

Then the non-speech false-text rate (any partial/final text, or a `lid` answer other than "und", counts),
held-out voices and sentences (one session at a time), and a long session (speech with pauses): minute 1
against the last minute.

    python -m tests.perf.bench_live [--sessions 1,4,8,16,24] [--runs 3] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import queue
import signal
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from devtools.devauth import default_token
from devtools.stack import DEFAULT_SERVICES, Stack
from speechgw_client import connect_kwargs
from tests import corpus
from tests.corpus import Case
from tests.wer import wer

CHUNK_MS = 20
SR = 16000
EARLY_MARGIN_S = 0.2  # a partial whose ts ends this much before the speech counts as text before speech
MODES = ("auto", "hint")


# ----- the client process -----


@dataclass(frozen=True)
class Job:
    name: str
    path: str
    hints: dict[str, str]
    start_delay_s: float


async def _session(url: str, job: Job, base: float) -> dict[str, Any]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    pcm = Case(job.name, Path(job.path), "", 0.0).pcm()
    chunk = SR * CHUNK_MS // 1000 * 2
    await asyncio.sleep(max(0.0, base + job.start_delay_s - time.monotonic()))
    events: list[tuple[float, dict[str, Any]]] = []
    rec: dict[str, Any] = {"name": job.name, "events": events, "late_max_s": 0.0}
    start = {
        "type": "start",
        "audio": {"codec": "pcm_s16le", "sr": SR, "channels": 1, "chunk_ms": CHUNK_MS},
        "return": ["lid", "asr", "record_url"],
        "hints": {"domain": "default", **job.hints},
    }
    try:
        auth = connect_kwargs(default_token())
        async with connect(url, max_size=2**22, compression=None, open_timeout=30, **auth) as ws:

            async def reader() -> None:
                try:
                    async for raw in ws:
                        events.append((time.monotonic(), json.loads(raw)))
                except ConnectionClosed:
                    pass

            read_task = asyncio.create_task(reader())
            try:
                await ws.send(json.dumps(start))
                t0 = rec["t0"] = time.monotonic()
                for i, off in enumerate(range(0, len(pcm), chunk)):
                    delay = t0 + i * CHUNK_MS / 1000 - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    else:
                        rec["late_max_s"] = max(rec["late_max_s"], -delay)
                    await ws.send(pcm[off : off + chunk])
                rec["t_audio_end"] = time.monotonic()
                await ws.send(json.dumps({"type": "flush"}))
            except ConnectionClosed:
                pass
            await read_task
    except Exception as exc:  # a refused or broken connection is a result too
        rec["client_error"] = repr(exc)
    return rec


def _client_main(url: str, jobs: list[Job], out: mp.Queue) -> None:  # type: ignore[type-arg]
    async def run() -> list[dict[str, Any]]:
        base = time.monotonic() + 0.3
        return list(await asyncio.gather(*[_session(url, j, base) for j in jobs]))

    try:
        import uvloop

        out.put(uvloop.run(run()))
    except ImportError:
        out.put(asyncio.run(run()))


# ----- the stack's processes -----


class ProcessWatch:
    """CPU seconds (user+system, children included) and RSS of each stack process, sampled on demand."""

    def __init__(self, stack: Stack) -> None:
        self.procs = {name: psutil.Process(svc.proc.pid) for name, svc in stack.running.items()}
        self.samples: list[tuple[float, dict[str, tuple[float, int]]]] = []
        self.asr_metrics = {
            name: f"http://{svc.host}:{svc.http_port}/metrics"
            for name, svc in stack.running.items()
            if name.startswith("asr") or name == "lid"
        }

    def asr_work(self) -> dict[str, dict[str, float]]:
        """Each ASR pool's counters: decode seconds by kind, events sent by type, partials skipped; LID's
        detections and their seconds."""
        out: dict[str, dict[str, float]] = {}
        for name, url in self.asr_metrics.items():
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
            figures: dict[str, float] = {}
            for fam in text_string_to_metric_families(text):
                for sample in fam.samples:
                    if sample.name == "asr_decode_seconds_total":
                        key = f"decode_s_{sample.labels['kind']}"
                    elif sample.name == "asr_events_total":
                        key = f"sent_{sample.labels['type']}"
                    elif sample.name in ("asr_partials_skipped_total", "asr_finals_reused_total"):
                        key = sample.name.removeprefix("asr_").removesuffix("_total")
                    elif sample.name == "asr_rtf_count":
                        key = f"decodes_{sample.labels['kind']}"
                    elif sample.name == "asr_guard_refused_total":
                        key = f"refused_{sample.labels['kind']}_{sample.labels['guard']}"
                    elif sample.name == "lid_inference_ms_count":
                        key = "detections"
                    elif sample.name == "lid_inference_ms_sum":
                        key, sample = "decode_s_lid", sample._replace(value=sample.value / 1000)
                    else:
                        continue
                    figures[key] = figures.get(key, 0.0) + sample.value
            out[name] = figures
        return out

    def sample(self) -> dict[str, tuple[float, int]]:
        now: dict[str, tuple[float, int]] = {}
        for name, proc in self.procs.items():
            cpu, rss = 0.0, 0
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    cpu += t.user + t.system
                    rss += p.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            now[name] = (cpu, rss)
        self.samples.append((time.monotonic(), now))
        return now

    def at(self, t: float) -> dict[str, tuple[float, int]]:
        """The sample nearest to monotonic time `t`."""
        return min(self.samples, key=lambda s: abs(s[0] - t))[1]


def run_sessions(url: str, jobs: list[Job], watch: ProcessWatch, timeout_s: float) -> list[dict[str, Any]]:
    """Run `jobs` from one spawned client process while sampling the stack every 0.5 s."""
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    client = ctx.Process(target=_client_main, args=(url, jobs, out))
    client.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            watch.sample()
            try:
                records: list[dict[str, Any]] = out.get(timeout=0.5)
                break
            except queue.Empty:
                if time.monotonic() > deadline or not client.is_alive():
                    raise RuntimeError("the client process did not finish") from None
        watch.sample()
        return records
    finally:
        client.join(10)
        if client.is_alive():
            client.kill()
            client.join()


def _gauge(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def settle(stack: Stack, watch: ProcessWatch, hold_s: float = 0.0, timeout_s: float = 120.0) -> float:
    """Wait until the gateway has no session open and no deferred transcription running and the stack
    has used under 0.2 cores for 3 s in a row (at least `hold_s` in all: after refusals, the breakers'
    open time), so one level does not pay for the previous one. Returns the seconds waited."""
    t_start = time.monotonic()
    quiet_since: float | None = None
    prev = watch.sample()
    while time.monotonic() - t_start < timeout_s:
        time.sleep(1.0)  # the sampling period of a deadline wait
        now = watch.sample()
        busy = sum(now[k][0] - prev[k][0] for k in now)
        prev = now
        with urllib.request.urlopen(stack.http_base + "/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        idle = (
            busy < 0.2
            and _gauge(metrics, "orchestrator_active_sessions") == 0
            and _gauge(metrics, "transcribe_jobs_inflight") == 0
        )
        quiet_since = (quiet_since or time.monotonic()) if idle else None
        waited = time.monotonic() - t_start
        if quiet_since is not None and time.monotonic() - quiet_since >= 3.0 and waited >= hold_s:
            return waited
    return time.monotonic() - t_start


# ----- figures -----


def _text_events(rec: dict[str, Any]) -> list[tuple[float, dict[str, Any]]]:
    return [(t, e) for t, e in rec["events"] if e.get("type") in ("asr_partial", "asr_final") and e["text"].strip()]


def analyse(case: Case, rec: dict[str, Any]) -> dict[str, Any]:
    """One speech session's figures; times in ms."""
    events = [e for _, e in rec["events"]]
    errors = [e for e in events if e.get("type") == "error"]
    degraded = any(e.get("code") == "asr_unavailable" or e.get("mode") == "record_only" for e in errors)
    out: dict[str, Any] = {
        "name": case.name,
        "lang": case.lang,
        "completed": bool(events) and events[-1].get("type") == "end",
        "degraded": degraded,
        "errors": sorted({e.get("code", "?") for e in errors}),
        "client_late_max_ms": rec["late_max_s"] * 1000,
        "first_partial_ms": None,
        "final_lag_ms": None,
        "early_text": False,
    }
    if "t0" not in rec:
        return out
    speech_at = rec["t0"] + case.speech_start_s
    texts = _text_events(rec)
    out["early_text"] = any(t < speech_at or e["ts"][1] < case.speech_start_s - EARLY_MARGIN_S for t, e in texts)
    partials = [t for t, e in texts if e["type"] == "asr_partial" and t >= speech_at]
    if partials:
        out["first_partial_ms"] = (partials[0] - speech_at) * 1000
    finals = [(t, e) for t, e in rec["events"] if e.get("type") == "asr_final"]
    if finals and "t_audio_end" in rec:
        out["final_lag_ms"] = (finals[-1][0] - rec["t_audio_end"]) * 1000
    out["hyp"] = " ".join(e["text"] for _, e in finals)
    out["ref"] = case.reference
    return out


def pct(values: Sequence[float | None], q: float) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.percentile(vals, q)) if vals else None


def summarise(sessions: list[dict[str, Any]], cpu: dict[str, float], rss: dict[str, int], audio_s: float) -> dict:
    live = [s for s in sessions if not s["degraded"] and "hyp" in s]
    en = [s for s in live if s["lang"] == "en"]
    other = [s for s in live if s["lang"] != "en"]
    return {
        "sessions": len(sessions),
        "completed": sum(s["completed"] for s in sessions),
        "degraded": sum(s["degraded"] for s in sessions),
        "with_errors": sum(bool(s["errors"]) for s in sessions),
        "no_partial": sum(s["first_partial_ms"] is None for s in sessions),
        "early_text": sum(s["early_text"] for s in sessions),
        "first_partial_ms_p50": pct([s["first_partial_ms"] for s in sessions], 50),
        "first_partial_ms_p95": pct([s["first_partial_ms"] for s in sessions], 95),
        "final_lag_ms_p50": pct([s["final_lag_ms"] for s in sessions], 50),
        "final_lag_ms_p95": pct([s["final_lag_ms"] for s in sessions], 95),
        "wer_en": wer([s["ref"] for s in en], [s["hyp"] for s in en]) if en else None,
        "wer_other": wer([s["ref"] for s in other], [s["hyp"] for s in other]) if other else None,
        "client_late_max_ms": max((s["client_late_max_ms"] for s in sessions), default=0.0),
        "cpu_s_per_session_s": {k: v / audio_s for k, v in cpu.items()},
        "cpu_s_per_session_s_total": sum(cpu.values()) / audio_s,
        "peak_rss_mb": {k: v / 2**20 for k, v in rss.items()},
    }


def hints_for(case: Case, mode: str) -> dict[str, str]:
    return {"user_lang_pref": "auto" if mode == "auto" else case.lang}


def run_level(url: str, watch: ProcessWatch, cases: list[Case], n: int, mode: str, ramp_s: float) -> dict:
    chosen = [cases[i % len(cases)] for i in range(n)]
    jobs = [Job(c.name, str(c.path), hints_for(c, mode), ramp_s * i / n) for i, c in enumerate(chosen)]
    load0 = os.getloadavg()[0]
    before = watch.sample()
    work0 = watch.asr_work()
    first = len(watch.samples) - 1
    records = run_sessions(url, jobs, watch, timeout_s=max(c.duration_s for c in chosen) + ramp_s + 120)
    after = watch.samples[-1][1]
    work1 = watch.asr_work()
    cpu = {k: after[k][0] - before[k][0] for k in before}
    rss = {k: max(s[k][1] for _, s in watch.samples[first:]) for k in before}
    sessions = [analyse(c, r) for c, r in zip(chosen, records, strict=True)]
    out = summarise(sessions, cpu, rss, sum(c.duration_s for c in chosen))
    out.update(n=n, mode=mode, load_avg_1m=(load0 + os.getloadavg()[0]) / 2, per_session=sessions)
    out["asr_work"] = {
        pool: {k: v - work0[pool].get(k, 0.0) for k, v in figures.items()} for pool, figures in work1.items()
    }
    return out


def run_nonspeech(url: str, watch: ProcessWatch, cases: list[Case], parallel: int) -> list[dict[str, Any]]:
    rows = []
    pairs = [(c, m) for c in cases for m in MODES]
    for i in range(0, len(pairs), parallel):
        batch = pairs[i : i + parallel]
        jobs = [
            Job(c.name, str(c.path), {"user_lang_pref": "auto" if m == "auto" else "en"}, 0.1 * k)
            for k, (c, m) in enumerate(batch)
        ]
        for (case, mode), rec in zip(batch, run_sessions(url, jobs, watch, timeout_s=120), strict=True):
            texts = [e["text"] for _, e in _text_events(rec)]
            lids = [e for _, e in rec["events"] if e.get("type") == "lid" and e.get("source") == "lid"]
            bad_lid = [f"{e['lang']}:{e['score']}" for e in lids if e.get("lang") != "und"]
            rows.append(
                {
                    "name": case.name,
                    "mode": mode,
                    "false": bool(texts or bad_lid),
                    "texts": texts[-3:],
                    "lid": bad_lid,
                    "completed": bool(rec["events"]) and rec["events"][-1][1].get("type") == "end",
                }
            )
    return rows


def run_long(url: str, watch: ProcessWatch, case: Case, mode: str) -> dict[str, Any]:
    (rec,) = run_sessions(
        url, [Job(case.name, str(case.path), hints_for(case, mode), 0.0)], watch, case.duration_s + 120
    )
    t0 = rec["t0"]
    texts = _text_events(rec)
    finals = [(t, e) for t, e in rec["events"] if e.get("type") == "asr_final"]
    segs = case.segments
    per_utt: list[dict[str, Any]] = []
    for i, s in enumerate(segs):
        nxt = t0 + (segs[i + 1].start_s if i + 1 < len(segs) else case.duration_s + 60)
        firsts = [t for t, e in texts if e["type"] == "asr_partial" and t0 + s.start_s <= t < nxt]
        mine = [t for t, e in finals if e["ts"][0] < s.end_s and e["ts"][1] > s.start_s]
        per_utt.append(
            {
                "start_s": s.start_s,
                "first_partial_ms": (firsts[0] - t0 - s.start_s) * 1000 if firsts else None,
                "final_lag_ms": (max(mine) - t0 - s.end_s) * 1000 if mine else None,
            }
        )
    minutes = max(1, int(case.duration_s // 60))

    def window(m: int) -> dict[str, Any]:
        lo, hi = m * 60.0, min((m + 1) * 60.0, case.duration_s)
        utts = [u for u in per_utt if lo <= u["start_s"] < hi]
        a, b = watch.at(t0 + lo), watch.at(t0 + hi)
        return {
            "minute": m + 1,
            "utterances": len(utts),
            "no_partial": sum(u["first_partial_ms"] is None for u in utts),
            "first_partial_ms_p50": pct([u["first_partial_ms"] for u in utts], 50),
            "first_partial_ms_p95": pct([u["first_partial_ms"] for u in utts], 95),
            "final_lag_ms_p50": pct([u["final_lag_ms"] for u in utts], 50),
            "final_lag_ms_p95": pct([u["final_lag_ms"] for u in utts], 95),
            "cpu_s_per_audio_s": {k: (b[k][0] - a[k][0]) / (hi - lo) for k in a},
            "rss_mb": {k: b[k][1] / 2**20 for k in b},
        }

    hyp = " ".join(e["text"] for _, e in finals)
    return {
        "name": case.name,
        "mode": mode,
        "duration_s": case.duration_s,
        "completed": bool(rec["events"]) and rec["events"][-1][1].get("type") == "end",
        "errors": sorted({e.get("code", "?") for _, e in rec["events"] if e.get("type") == "error"}),
        "wer": wer([case.reference], [hyp]),
        "first": window(0),
        "last": window(minutes - 1),
    }


# ----- printing -----


def median_of_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of every figure (nested per-process figures too)."""
    out: dict[str, Any] = {}
    for key, val in runs[0].items():
        if key == "per_session":
            continue
        if isinstance(val, dict):
            out[key] = median_of_runs([r[key] for r in runs])
        elif (isinstance(val, (int, float)) and not isinstance(val, bool)) or val is None:
            vals = [r[key] for r in runs if r[key] is not None]
            out[key] = statistics.median(vals) if vals else None
        else:
            out[key] = val
    return out


def _f(v: float | None, fmt: str = ".0f") -> str:
    return "-" if v is None else format(v, fmt)


def print_levels(rows: list[dict[str, Any]], names: list[str]) -> None:
    print(
        "\n| N or case | mode | completed | degraded | no partial | text before speech | first partial P50 / P95 ms "
        "| final lag P50 / P95 ms | WER en | WER other | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.get('case', r['n'])} | {r['mode']} | {r['completed']:g}/{r['sessions']:g} | {r['degraded']:g} "
            f"| {r['no_partial']:g} "
            f"| {r['early_text']:g} | {_f(r['first_partial_ms_p50'])} / {_f(r['first_partial_ms_p95'])} "
            f"| {_f(r['final_lag_ms_p50'])} / {_f(r['final_lag_ms_p95'])} | {_f(r['wer_en'], '.3f')} "
            f"| {_f(r['wer_other'], '.3f')} | {r['load_avg_1m']:.2f} |"
        )
    print(
        "\n| N or case | mode | CPU s per session-second: "
        + " | ".join(names)
        + " | total | peak RSS MB: "
        + " | ".join(names)
        + " |"
    )
    print("|---|---|" + "---|" * (2 * len(names) + 1))
    for r in rows:
        cpu = " | ".join(_f(r["cpu_s_per_session_s"][k], ".4f") for k in names)
        rss = " | ".join(_f(r["peak_rss_mb"][k]) for k in names)
        print(f"| {r.get('case', r['n'])} | {r['mode']} | {cpu} | {r['cpu_s_per_session_s_total']:.4f} | {rss} |")
    print(
        "\n| N or case | mode | ASR pool | decode s: partial / final | partials sent | partials skipped "
        "| finals sent / reused |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        lid = r.get("asr_work", {}).get("lid", {})
        if lid.get("detections"):
            print(
                f"| {r.get('case', r['n'])} | {r['mode']} | lid | {lid.get('decode_s_lid', 0):.1f} s in "
                f"{lid['detections']:.0f} detections | | | |"
            )
        for pool, w in sorted(r.get("asr_work", {}).items()):
            if pool == "lid":
                continue
            print(
                f"| {r.get('case', r['n'])} | {r['mode']} | {pool} | {w.get('decode_s_partial', 0):.1f} / "
                f"{w.get('decode_s_final', 0):.1f} | {w.get('sent_partial', 0):.0f} "
                f"| {w.get('partials_skipped', 0):.0f} "
                f"| {w.get('sent_final', 0):.0f} / {w.get('finals_reused', 0):.0f} |"
            )


def print_long(row: dict[str, Any], names: list[str]) -> None:
    print(
        f"\n# long session {row['name']} ({row['duration_s']:.0f} s, {row['mode']}): completed={row['completed']} "
        f"errors={row['errors']} WER={row['wer']:.3f}"
    )
    print(
        "| minute | utterances | no partial | first partial P50 / P95 ms | final lag P50 / P95 ms "
        "| CPU s per audio s (total) | " + " | ".join(f"RSS {k}" for k in names) + " |"
    )
    print("|---|---|---|---|---|---|" + "---|" * len(names))
    for w in (row["first"], row["last"]):
        total = sum(w["cpu_s_per_audio_s"].values())
        rss = " | ".join(_f(w["rss_mb"][k]) for k in names)
        print(
            f"| {w['minute']} | {w['utterances']} | {w['no_partial']} | {_f(w['first_partial_ms_p50'])} / "
            f"{_f(w['first_partial_ms_p95'])} | {_f(w['final_lag_ms_p50'])} / {_f(w['final_lag_ms_p95'])} "
            f"| {total:.3f} | {rss} |"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="live sessions through the default stack (issue 9)")
    p.add_argument("--sessions", default="1,4,8,16,24", help="comma list of concurrent session counts")
    p.add_argument("--runs", type=int, default=3, help="runs per level; medians are printed")
    p.add_argument("--modes", default="auto,hint")
    p.add_argument("--quick", action="store_true", help="one utterance per session, a 1-minute long session")
    p.add_argument("--long-minutes", type=float, default=None, help="long-session length (10; 1 with --quick)")
    p.add_argument("--no-long", action="store_true")
    p.add_argument("--no-nonspeech", action="store_true")
    p.add_argument("--ramp-s", type=float, default=2.0, help="session starts spread over this many seconds")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM stops the stack like Ctrl-C
    levels = [int(n) for n in args.sessions.split(",") if n]
    modes = [m for m in args.modes.split(",") if m]
    upc = 1 if args.quick else 2
    long_min = args.long_minutes or (1.0 if args.quick else 10.0)

    main_cases = [corpus.build(s) for s in corpus.main_specs(upc)]
    held = [corpus.build(s) for s in corpus.held_out_specs(upc)]
    nonspeech = [corpus.build(s) for s in corpus.nonspeech_specs()]
    long_case = None if args.no_long else corpus.build(corpus.long_spec(long_min))
    print(
        f"# bench_live {time.strftime('%Y-%m-%d %H:%M')} {os.cpu_count()} cores, load avg "
        f"{os.getloadavg()[0]:.2f}; stack {','.join(DEFAULT_SERVICES)}; {len(main_cases)} main cases "
        f"({upc} utterance(s) each), runs={args.runs}",
        flush=True,
    )

    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(args) | {"json": str(args.json)}}
    work = Path(tempfile.mkdtemp(prefix="bench-live-"))
    with Stack(DEFAULT_SERVICES, env={"LOG_LEVEL": "ERROR"}, workdir=work) as stack:
        watch = ProcessWatch(stack)
        names = list(watch.procs)
        # Non-speech, held-out and the long session first, on a quiet stack; then the levels, each after
        # the stack has settled (refused sessions leave deferred transcriptions and open breakers behind).
        settle(stack, watch)
        if not args.no_nonspeech:
            ns = run_nonspeech(stack.url, watch, nonspeech, parallel=4)
            bad = [r for r in ns if r["false"]]
            print(
                f"\n# non-speech: {len(bad)}/{len(ns)} sessions gave text or a confident lid "
                f"(false-text rate {len(bad) / len(ns):.2f})"
            )
            for r in bad:
                print(f"  {r['name']:12s} {r['mode']:5s} texts={r['texts']} lid={r['lid']}")
            result["nonspeech"] = {"false_rate": len(bad) / len(ns), "cases": ns}

        held_rows = []
        for m in modes:
            for c in held:
                settle(stack, watch)
                held_rows.append(run_level(stack.url, watch, [c], 1, m, 0.0) | {"case": c.name})
        print("\n# held-out voices and sentences, one session at a time")
        print_levels(held_rows, names)
        result["held_out"] = held_rows

        if long_case is not None:
            settle(stack, watch)
            long_row = run_long(stack.url, watch, long_case, "auto")
            print_long(long_row, names)
            result["long"] = long_row

        raw: dict[tuple[int, str], list[dict[str, Any]]] = {}
        degraded = 0
        for run in range(args.runs):
            for n in levels:
                for mode in modes:
                    waited = settle(stack, watch, hold_s=12.0 if degraded else 0.0)
                    row = run_level(stack.url, watch, main_cases, n, mode, args.ramp_s) | {"settle_s": waited}
                    degraded = row["degraded"]
                    raw.setdefault((n, mode), []).append(row)
                    print(
                        f"# run {run + 1} N={n} {mode}: first partial P95 {_f(row['first_partial_ms_p95'])} ms, "
                        f"degraded {row['degraded']}, load {row['load_avg_1m']:.2f}, settled {waited:.0f} s",
                        flush=True,
                    )
        rows = [median_of_runs(raw[(n, m)]) for n in levels for m in modes]
        print_levels(rows, names)
        result["levels"] = rows
        result["runs"] = {f"{n}-{m}": v for (n, m), v in raw.items()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
