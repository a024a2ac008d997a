"""Soak (issue 11): the default `make run` stack under a steady mix of traffic for `--minutes`, sampled
every minute, and a verdict on whether memory, descriptors, tasks and latency stay flat.

The stack is devtools.stack's default (VAD, LID, ASR pools `en` and `multi`, archive, gateway; each its
own process). One client process (spawned, so its CPU does not count against the stack's) runs:

- `--sessions` live loops: each streams a corpus case (tests/corpus.py main set: two sentences with
  0-3 s lead-ins of silence or noise and a pause, English and es/de/fr) at real time through the client
  library (`speechgw_client`), sends `flush`, reads to `end`, and starts the next case;
- `--reconnects` reconnect loops: a session whose TCP connection is cut (transport aborted, no close
  frame) at 30-70 % of its audio, then, 0.5 s later, resumed on a new connection (same flowId,
  `resume` with the last `seq` read; docs/protocol.md#resume): the rest of the audio from the ack's
  `resume_from_bytes`, read to `end`; logged as `resumed` with whether it resumed and `seq` ran on;
- one bad client every `--bad-every-s` seconds, in turn: malformed JSON after `start`, an oversize
  binary frame, a bad token, a client that streams without ever reading its socket (and holds the
  connection 15 s after `flush`), a client that sends only zero-length binary frames for 10 s.

Every `--sample-s` (60) the main process samples each stack process (psutil, children included): RSS now
and its peak since the last sample (the kernel's VmHWM, reset after each read by writing 5 to
/proc/PID/clear_refs; RSS now where that is refused), open fds, threads; from the gateway's /metrics: open
sessions, send-queue depth, event-loop tasks and the per-minute P50/P95 of the SLO histograms
(orchestrator_first_partial_latency_ms, orchestrator_final_lag_ms; from bucket deltas, all pools
together); from each service's /metrics its open streams (VAD streams and flows, LID sessions, ASR
sessions, archives waiting) and its RSS after its last give-back of free heap (the floor); from the
client: the medians of first partial (from the first speech sample) and final lag (from the last audio
chunk) of the sessions that ended in that minute, and the error codes seen. Plus the load average.

Verdict ("flat"), printed and stored in the JSON:
- RSS: the least-squares slope over the last 2/3 of the run is below `--rss-slope-mb-h` (10) MB/hour,
  of each service's floor: the RSS it publishes right after its minute give-back of free heap
  (`process_resident_memory_after_trim_bytes`, common/service.py), which a leak or a fragmented heap
  raises. A reading at any other moment swings with the work in flight: once a minute it lands at a
  phase of the give-back cycle that drifts, and each interval's peak is the floor plus the largest
  batch the process had in flight (an ASR encoder call takes 54 MB per stream on tiny.en), which
  follows the load. The peaks' slopes are printed and stored beside the checks; a process without a
  floor (the gateway, which does not give heap back; runs recorded before the floor) is judged on
  its per-interval peak;
- fds, threads (per process) and gateway tasks per open session: the median of the last third is at
  most max(3, 10 %) above the median of the first third;
- idle after the load (every client gone, then past one heap give-back) against idle before it:
  gateway tasks at most 2 more; fds and threads at most 2 above the first third's peak (pools that
  grow on demand stay grown); the services' open streams no more than before;
- latency: the gateway's P95 first partial and final lag over the last third are within
  `--latency-tol` (25 %) of the first third's (or within one bucket, 100 ms, of it); so is the P95 of
  the client's own first partial of each live session (no buckets), which the JSON also breaks down by
  third and language with the count of sessions past `SLOW_FIRST_PARTIAL_MS` (which sessions make the
  tail). The client's per-session records are kept beside the JSON (`*.clients.jsonl`).

    python -m tests.perf.soak --minutes 10 [--sessions 4] [--json var/soak.json] [--plot docs/img/soak.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from common.process import TRIM_EVERY_S
from devtools.stack import DEFAULT_SERVICES, Stack
from tests import corpus
from tests.corpus import Case
from tests.perf.bench_live import analyse, pct
from tests.perf.plot_soak import rss_peak_mb

CHUNK_MS = 20
SR = 16000
CHUNK_BYTES = SR * CHUNK_MS // 1000 * 2
HISTOGRAMS = {"first_partial": "orchestrator_first_partial_latency_ms", "final_lag": "orchestrator_final_lag_ms"}
BAD_KINDS = ("bad_json", "oversize_frame", "bad_token", "no_read", "zero_length")
# LID's first_n_s (3 s): a first partial later than this came after LID's last word, not its first
SLOW_FIRST_PARTIAL_MS = 3000.0
START = {
    "type": "start",
    "audio": {"codec": "pcm_s16le", "sr": SR, "channels": 1, "chunk_ms": CHUNK_MS},
    "return": ["lid", "asr", "record_url"],
    "hints": {"domain": "default"},
}


# ----- the client process -----


class Log:
    """One JSON line per finished client, flushed at once: the main process reads it every minute."""

    def __init__(self, path: Path) -> None:
        self.fh = path.open("a", encoding="utf-8")

    def write(self, rec: dict[str, Any]) -> None:
        self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()


def session_summary(kind: str, case: Case, rec: dict[str, Any], t_start: float) -> dict[str, Any]:
    out = analyse(case, rec)
    out.pop("hyp", None)
    out.pop("ref", None)
    out |= {"kind": kind, "t_start": t_start, "t_end": time.monotonic()}
    out["error_codes"] = [e.get("code", "?") for _, e in rec["events"] if e.get("type") == "error"]
    lid = [(t, e) for t, e in rec["events"] if e.get("type") == "lid"]
    if lid and "t0" in rec:  # when the language came, from the first speech sample (a slow first partial waits for it)
        t, e = lid[0]
        out |= {"lid_ms": (t - rec["t0"] - case.speech_start_s) * 1000, "lid": [e.get("lang"), e.get("score")]}
    if "client_error" in rec:
        out["client_error"] = rec["client_error"]
    return out


async def _session(url: str, token: str | None, pcm: bytes, drop: dict[str, Any] | None = None) -> dict[str, Any]:
    """One session through the client library, paced at real time, read to the end. With `drop`
    (`_dropped`'s record), the resume of that session (docs/protocol.md#resume): same flowId, `resume`
    with the last `seq` read and the audio sent; the rest of the audio from the ack's
    `resume_from_bytes`, on the first connection's clock. A resume also records whether it resumed and
    whether `seq` ran without gaps over both connections."""
    from speechgw_client import Ack, ConnectError, SessionClosed, connect, send_paced

    rec: dict[str, Any] = {"events": [], "late_max_s": 0.0}
    start = START
    if drop is not None:
        request = {"last_seq": drop["last_seq"], "audio_s": drop["cut_at_s"]}
        start = {**START, "flowId": drop["flow_id"], "resume": request}
        rec["resumed"] = False
    try:
        async with connect(url, token=token, start=start, open_timeout_s=30) as s:
            offset: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            if drop is None:
                offset.set_result(0)

            async def collect() -> None:
                async for ev in s.events():
                    rec["events"].append((ev.received_at or time.monotonic(), ev.raw))
                    if isinstance(ev, Ack) and ev.resume is not None and not offset.done():
                        offset.set_result(ev.resume.resume_from_bytes)
                if not offset.done():
                    offset.set_result(-1)  # closed without resuming: the error event says why

            reader = asyncio.create_task(collect())
            try:
                start_at = await asyncio.wait_for(offset, 30)
                if start_at >= 0:
                    if drop is None:
                        rec["t0"] = await send_paced(s, pcm, chunk_ms=CHUNK_MS)
                    else:
                        rec["resumed"] = True
                        await send_paced(s, pcm, chunk_ms=CHUNK_MS, offset=start_at, t0=drop.get("t0"))
                    rec["t_audio_end"] = time.monotonic()
                    await s.flush()
            except SessionClosed:
                pass
            await asyncio.wait_for(reader, 120)
    except (ConnectError, SessionClosed, TimeoutError, OSError) as exc:
        rec["client_error"] = type(exc).__name__
    if drop is not None:
        seqs = [e["seq"] for _, e in rec["events"] if e.get("seq")]
        rec["seq_ok"] = seqs == list(range(drop["last_seq"] + 1, drop["last_seq"] + 1 + len(seqs)))
    return rec


async def _dropped(url: str, token: str | None, pcm: bytes, cut_at: float, flow_id: str) -> dict[str, Any]:
    """Stream at real time, reading the events, then abort the TCP connection (no close frame) at
    `cut_at` of the audio. Records what a resume needs: the last `seq` read and the audio sent."""
    from websockets.asyncio.client import connect

    from speechgw_client import connect_kwargs

    rec: dict[str, Any] = {"events": [], "cut_at_s": 0.0, "last_seq": 0, "flow_id": flow_id}
    n = int(len(pcm) // CHUNK_BYTES * cut_at)
    try:
        async with connect(url, compression=None, open_timeout=30, **connect_kwargs(token)) as ws:

            async def read() -> None:
                async for raw in ws:
                    rec["last_seq"] = max(rec["last_seq"], json.loads(raw).get("seq") or 0)

            reader = asyncio.create_task(read())
            await ws.send(json.dumps({**START, "flowId": flow_id}))
            rec["t0"] = t0 = time.monotonic()
            for i in range(n):
                delay = t0 + i * CHUNK_MS / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(pcm[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES])
            rec["cut_at_s"] = n * CHUNK_MS / 1000
            ws.transport.abort()
            reader.cancel()
    except Exception as exc:  # the abort itself surfaces as a closed connection
        rec["client_error"] = type(exc).__name__
    return rec


async def _bad(url: str, token: str | None, kind: str, pcm: bytes) -> dict[str, Any]:
    """One misbehaving client; returns the error codes and the close code it got."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from speechgw_client import connect_kwargs

    codes: list[str] = []
    rec: dict[str, Any] = {"kind": kind, "error_codes": codes, "t_start": time.monotonic()}
    auth = connect_kwargs("not.a.token" if kind == "bad_token" else token)
    try:
        async with connect(url, compression=None, open_timeout=30, max_size=2**22, **auth) as ws:
            await ws.send(json.dumps(START))

            async def read() -> None:
                try:
                    async for raw in ws:
                        msg = json.loads(raw)
                        if msg.get("type") == "error":
                            codes.append(msg.get("code", "?"))
                        elif msg.get("type") == "end":
                            rec["end_reason"] = msg.get("reason")
                except ConnectionClosed:
                    pass

            if kind == "no_read":
                # Real-time audio and a flush, never reading; then hold the socket 15 s.
                t0 = time.monotonic()
                for i, off in enumerate(range(0, len(pcm), CHUNK_BYTES)):
                    await asyncio.sleep(max(0.0, t0 + i * CHUNK_MS / 1000 - time.monotonic()))
                    await ws.send(pcm[off : off + CHUNK_BYTES])
                await ws.send(json.dumps({"type": "flush"}))
                await asyncio.sleep(15)
                await asyncio.wait_for(read(), 30)
            else:
                reader = asyncio.create_task(read())
                if kind == "bad_json":
                    await ws.send(pcm[: 10 * CHUNK_BYTES])
                    await ws.send('{"type": "flush",')
                elif kind == "oversize_frame":
                    await ws.send(pcm[: 10 * CHUNK_BYTES])
                    await ws.send(b"\x00" * (70 * 1024))
                elif kind == "zero_length":
                    for _ in range(500):  # 10 s of empty frames at the audio's pace
                        await ws.send(b"")
                        await asyncio.sleep(CHUNK_MS / 1000)
                    await ws.send(json.dumps({"type": "flush"}))
                await asyncio.wait_for(reader, 60)
            rec["close_code"] = ws.close_code
            rec["close_reason"] = ws.close_reason
    except ConnectionClosed as exc:
        rec["close_code"] = exc.rcvd.code if exc.rcvd else None
        rec["close_reason"] = exc.rcvd.reason if exc.rcvd else None
    except Exception as exc:
        rec["client_error"] = type(exc).__name__
    rec["t_end"] = time.monotonic()
    return rec


async def _load(url: str, token: str | None, cases: list[Case], args: dict[str, Any], log: Log) -> None:
    deadline = time.monotonic() + args["minutes"] * 60
    pcms = [c.pcm() for c in cases]
    rng = random.Random(11)

    async def live_loop(k: int) -> None:
        i = k * 3  # the loops start on different cases
        await asyncio.sleep(k * 1.5)
        while time.monotonic() < deadline:
            case, pcm = cases[i % len(cases)], pcms[i % len(cases)]
            t = time.monotonic()
            log.write(session_summary("live", case, await _session(url, token, pcm), t))
            i += 1
            await asyncio.sleep(0.5)

    async def reconnect_loop(k: int) -> None:
        i = 7 + k * 5
        await asyncio.sleep(5 + k * 2.0)
        while time.monotonic() < deadline:
            case, pcm = cases[i % len(cases)], pcms[i % len(cases)]
            t = time.monotonic()
            drop = await _dropped(url, token, pcm, rng.uniform(0.3, 0.7), f"soak-{k}-{i}")
            log.write({"kind": "dropped", "t_start": t, "t_end": time.monotonic(), **drop, "events": []})
            await asyncio.sleep(0.5)  # the outage
            t = time.monotonic()
            resumed = await _session(url, token, pcm, drop)
            summary = session_summary("resumed", case, resumed, t)
            log.write(summary | {"resumed": resumed["resumed"], "seq_ok": resumed["seq_ok"]})
            i += 1
            await asyncio.sleep(2.0)

    async def bad_loop() -> None:
        i = 0
        await asyncio.sleep(10)
        while time.monotonic() < deadline:
            kind = BAD_KINDS[i % len(BAD_KINDS)]
            bad = asyncio.create_task(_bad(url, token, kind, pcms[i % len(pcms)]))
            bad.add_done_callback(lambda f: log.write(f.result()))
            i += 1
            await asyncio.sleep(args["bad_every_s"])
            await asyncio.wait({bad})  # at most one bad client at a time

    async with asyncio.TaskGroup() as tg:
        for k in range(args["sessions"]):
            tg.create_task(live_loop(k))
        for k in range(args["reconnects"]):
            tg.create_task(reconnect_loop(k))
        if args["bad_every_s"] > 0:
            tg.create_task(bad_loop())


def _client_main(url: str, token: str | None, args: dict[str, Any], log: str) -> None:
    cases = [corpus.build(s) for s in corpus.main_specs(2)]  # from the corpus cache
    asyncio.run(_load(url, token, cases, args, Log(Path(log))))


# ----- sampling the stack -----


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def peak_rss(proc: psutil.Process) -> int:
    """The process's peak RSS (bytes) since the last call, which starts the next interval (Linux:
    VmHWM, reset through clear_refs); its RSS now where that is not possible."""
    status = Path(f"/proc/{proc.pid}/status")
    try:
        hwm = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
    except (OSError, StopIteration):
        return int(proc.memory_info().rss)
    return int(hwm.split()[1]) * 1024


def sample_processes(procs: dict[str, psutil.Process]) -> dict[str, dict[str, float]]:
    """RSS now and its peak since the last sample (MB), open fds and threads of each stack process,
    its children included."""
    out: dict[str, dict[str, float]] = {}
    for name, proc in procs.items():
        rss = peak = fds = threads = 0
        cpu = 0.0
        for p in _tree(proc):
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    peak += peak_rss(p)
                    fds += p.num_fds()
                    threads += p.num_threads()
                    t = p.cpu_times()
                    cpu += t.user + t.system
            except psutil.NoSuchProcess:
                continue
        out[name] = {"rss_mb": rss / 2**20, "rss_peak_mb": peak / 2**20, "fds": fds, "threads": threads, "cpu_s": cpu}
    return out


def scrape(base: str) -> dict[str, Any]:
    """The gauges and the SLO histograms' cumulative buckets (all pools summed) from /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    gauges: dict[str, float] = {}
    hist: dict[str, dict[str, float]] = {k: {} for k in HISTOGRAMS}
    errors: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in (
                "orchestrator_active_sessions",
                "orchestrator_send_queue_events",
                "orchestrator_send_queue_events_max",
                "orchestrator_send_buffer_bytes",
                "orchestrator_event_loop_tasks",
                "transcribe_jobs_backlog",
                "orchestrator_archive_spool_recordings",
            ):
                gauges[s.name] = s.value
            elif s.name == "orchestrator_errors_total" and s.value:
                errors[s.labels["code"]] = s.value
            for key, name in HISTOGRAMS.items():
                if s.name == name + "_bucket":
                    le = s.labels["le"]
                    hist[key][le] = hist[key].get(le, 0.0) + s.value
    return {"gauges": gauges, "hist": hist, "errors": errors}


# What each service holds open (docs/metrics.md): a stream the gateway forgot to close stays here.
STREAM_GAUGES = (
    "vad_active_streams",
    "vad_active_flows",
    "lid_active_sessions",
    "asr_inflight_sessions",
    "compress_pending_archives",
)


# RSS right after the service's last minute give-back of free heap (docs/metrics.md): its floor
FLOOR_GAUGE = "process_resident_memory_after_trim_bytes"


def scrape_services(stack: Stack) -> tuple[dict[str, float], dict[str, float]]:
    """From every service's /metrics: the open-stream gauges, `<process>:<metric>` (labels summed),
    and the RSS floor in MB by process (absent before the first give-back, or from a service that
    does not publish it)."""
    streams: dict[str, float] = {}
    floors: dict[str, float] = {}
    for name, svc in stack.running.items():
        if name == "gateway":
            continue
        try:
            with urllib.request.urlopen(svc.http_base + "/metrics", timeout=10) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name in STREAM_GAUGES:
                    key = f"{name}:{s.name}"
                    streams[key] = streams.get(key, 0.0) + s.value
                elif s.name == FLOOR_GAUGE and s.value > 0:
                    floors[name] = s.value / 2**20
    return streams, floors


def quantile(q: float, buckets: dict[str, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative `buckets` {le: count} (linear within a bucket)."""
    pts = sorted((math.inf if le == "+Inf" else float(le), c) for le, c in buckets.items())
    if not pts or pts[-1][1] <= 0:
        return None
    rank = q * pts[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in pts:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0.0)
        prev_le, prev_c = le, c
    return prev_le


def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {le: b[le] - a.get(le, 0.0) for le in b}


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _median(vals: Sequence[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return float(statistics.median(v)) if v else None


def client_window(recs: list[dict[str, Any]], t_from: float, t_to: float) -> dict[str, Any]:
    """The client's figures for the clients that ended in [t_from, t_to)."""
    inside = [r for r in recs if t_from <= r["t_end"] < t_to]
    full = [r for r in inside if r["kind"] == "live"]
    codes: Counter[str] = Counter()
    for r in inside:
        codes.update(r.get("error_codes", []))
        if "client_error" in r and r["kind"] in ("live", "resumed"):
            codes["client:" + r["client_error"]] += 1
    return {
        "sessions": len(full),
        "completed": sum(bool(r.get("completed")) for r in full),
        "dropped": sum(r["kind"] == "dropped" for r in inside),
        "bad": sum(r["kind"] in BAD_KINDS for r in inside),
        "first_partial_ms_p50": _median([r.get("first_partial_ms") for r in full]),
        "final_lag_ms_p50": _median([r.get("final_lag_ms") for r in full]),
        "errors": dict(codes),
    }


def client_latency(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The client's first partial (from the case's first speech sample) of the live sessions that ended
    in each third of the load, all together and by language: P50, P95, the sessions past
    `SLOW_FIRST_PARTIAL_MS` and when their `lid` came (median, from the first speech sample)."""
    live = [r for r in recs if r["kind"] == "live" and r.get("first_partial_ms") is not None]
    if not live:
        return []
    t0, t1 = min(r["t_start"] for r in recs), max(r["t_end"] for r in recs)

    def figures(rs: list[dict[str, Any]]) -> dict[str, Any]:
        ms = [r["first_partial_ms"] for r in rs]
        slow = [r for r in rs if r["first_partial_ms"] > SLOW_FIRST_PARTIAL_MS]
        return {
            "sessions": len(ms),
            "p50": pct(ms, 50),
            "p95": pct(ms, 95),
            "slow": len(slow),
            "slow_lid_ms_p50": pct([r.get("lid_ms") for r in slow], 50),  # when their language came
        }

    thirds = []
    for k in range(3):
        lo, hi = t0 + k * (t1 - t0) / 3, t0 + (k + 1) * (t1 - t0) / 3
        inside = [r for r in live if lo <= r["t_end"] < hi or (k == 2 and r["t_end"] == t1)]
        langs = sorted({r["lang"] for r in inside})
        thirds.append(figures(inside) | {"by_lang": {g: figures([r for r in inside if r["lang"] == g]) for g in langs}})
    return thirds


# ----- verdict -----


def slope_per_hour(ts: Sequence[float], ys: Sequence[float]) -> float:
    return slope_and_error(ts, ys)[0]


def slope_and_error(ts: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """The least-squares slope of `ys` per hour of `ts` (seconds) and its standard error."""
    if len(ts) < 3:
        return 0.0, 0.0
    x, y = np.asarray(ts) / 3600.0, np.asarray(ys, dtype=float)
    slope, icpt = np.polyfit(x, y, 1)
    resid = y - (slope * x + icpt)
    sxx = float(np.sum((x - x.mean()) ** 2))
    se = math.sqrt(float(np.sum(resid**2)) / (len(x) - 2) / sxx) if sxx > 0 else 0.0
    return float(slope), se


def verdict(
    samples: list[dict[str, Any]],
    rss_slope_mb_h: float,
    latency_tol: float,
    client_thirds: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The flatness rules of the module docstring, each with its figures (`client_thirds`:
    `client_latency`'s, when the client's records are at hand)."""

    def within(p_first: float | None, p_last: float | None) -> bool:
        return (
            p_first is not None
            and p_last is not None
            and (p_last <= p_first * (1 + latency_tol) or p_last <= p_first + 100)
        )

    idle_before, idle_after = samples[0], samples[-1]
    loaded = [s for s in samples if not s.get("idle")]
    t_end = loaded[-1]["t"]
    last23 = [s for s in loaded if s["t"] >= t_end / 3]
    first3 = [s for s in loaded if s["t"] <= t_end / 3]
    last3 = [s for s in loaded if s["t"] >= 2 * t_end / 3]
    checks: list[dict[str, Any]] = []

    # What the stack holds once every client has gone, against before the first one came: a leaked
    # task stays behind. Threads and descriptors may stay from the first minutes' peak (pools that grow
    # on demand), not above it.
    def idle_check(label: str, get: Any, allowance: float) -> None:
        a, b = get(idle_before), get(idle_after)
        checks.append(
            {"check": f"idle {label}", "value": [a, b], "unit": "before/after the load", "ok": b <= allowance}
        )

    tasks = lambda s: s["gauges"].get("orchestrator_event_loop_tasks", 0)  # noqa: E731
    idle_check("tasks gateway", tasks, tasks(idle_before) + 2)
    for key in idle_after.get("streams", {}):
        held = lambda s, k=key: s.get("streams", {}).get(k, 0.0)  # noqa: E731
        idle_check(key, held, held(idle_before))
    for name in samples[0]["procs"]:
        for key in ("fds", "threads"):
            get = lambda s, n=name, k=key: s["procs"][n][k]  # noqa: E731
            idle_check(f"{key} {name}", get, max([get(idle_before), *(get(s) for s in first3)]) + 2)
    # RSS: a service's floor (after its minute give-back) where it publishes one, else the peak. The
    # peak of an ASR pool is its floor plus the minute's largest batch in flight (tens of MB per
    # stream), so it follows the load; the peaks' slopes are kept beside the checks.
    peak_slopes: dict[str, list[float]] = {}
    ts = [s["t"] for s in last23]
    for name in samples[0]["procs"]:
        slope, se = slope_and_error(ts, [rss_peak_mb(s["procs"][name]) for s in last23])
        peak_slopes[name] = [round(slope, 2), round(se, 2)]
        floors = [(s["t"], s["floors"][name]) for s in last23 if name in s.get("floors", {})]
        if len(floors) >= max(3, len(last23) // 2):
            slope, se = slope_and_error([t for t, _ in floors], [f for _, f in floors])
            label, unit = f"rss floor {name}", "MB/h, slope of the RSS after each give-back and its standard error"
        else:
            label, unit = f"rss {name}", "MB/h, slope of the per-interval peak and its standard error"
        checks.append(
            {"check": label, "value": [round(slope, 2), round(se, 2)], "unit": unit, "ok": slope < rss_slope_mb_h}
        )

    def not_growing(label: str, first: list[float], last: list[float]) -> None:
        a, b = statistics.median(first), statistics.median(last)
        checks.append(
            {"check": label, "value": [a, b], "unit": "median first/last third", "ok": b <= a + max(3, 0.1 * a)}
        )

    if first3 and last3:
        for name in samples[0]["procs"]:
            for key in ("fds", "threads"):
                not_growing(
                    f"{key} {name}", [s["procs"][name][key] for s in first3], [s["procs"][name][key] for s in last3]
                )
        # tasks per open session: the count at one instant follows how many sessions are open then
        not_growing(
            "tasks/session gateway",
            [
                s["gauges"].get("orchestrator_event_loop_tasks", 0)
                / max(1, s["gauges"].get("orchestrator_active_sessions", 0))
                for s in first3
            ],
            [
                s["gauges"].get("orchestrator_event_loop_tasks", 0)
                / max(1, s["gauges"].get("orchestrator_active_sessions", 0))
                for s in last3
            ],
        )
        for key in HISTOGRAMS:
            # the third's buckets: cumulative at its last sample minus at the sample before it began
            i0, i1 = samples.index(first3[0]), samples.index(first3[-1])
            j0, j1 = samples.index(last3[0]), samples.index(last3[-1])
            p_first = quantile(0.95, delta(samples[max(0, i0 - 1)]["hist"][key], samples[i1]["hist"][key]))
            p_last = quantile(0.95, delta(samples[max(0, j0 - 1)]["hist"][key], samples[j1]["hist"][key]))
            load = [statistics.median(x["load"][0] for x in first3), statistics.median(x["load"][0] for x in last3)]
            checks.append(
                {
                    "check": f"p95 {key}",
                    "value": [p_first, p_last],
                    "unit": f"ms first/last third (load {load})",
                    "ok": within(p_first, p_last),
                }
            )
    if client_thirds:
        a, b = client_thirds[0]["p95"], client_thirds[-1]["p95"]
        slow = [t["slow"] for t in client_thirds]
        checks.append(
            {
                "check": "p95 client first partial",
                "value": [a, b],
                "unit": f"ms first/last third, per session (past {SLOW_FIRST_PARTIAL_MS:g} ms by third: {slow})",
                "ok": within(a, b),
            }
        )
    return {
        "flat": all(c["ok"] for c in checks),
        "rules": {
            "rss_slope_mb_per_h_below": rss_slope_mb_h,
            "rss_window": "last 2/3 of the run, least squares; a service's floor (RSS after its minute give-back) "
            "where it publishes one, else the per-interval peak",
            "fds_threads_tasks": "median of the last third <= median of the first third + max(3, 10 %); "
            "idle after the load <= idle before + 2 (tasks), <= the first third's peak + 2 (fds, threads), "
            "<= idle before (the services' open streams)",
            "latency": f"P95 of the last third <= first third's * {1 + latency_tol:g} (or + 100 ms): the "
            "gateway's histograms and the client's per-session first partial",
        },
        "checks": checks,
        "peak_rss_slopes_mb_h": peak_slopes,
    }


# ----- main -----


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="soak the default stack (issue 11)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--sessions", type=int, default=4, help="live real-time session loops")
    p.add_argument("--reconnects", type=int, default=1, help="loops of a dropped session and its resume")
    p.add_argument("--bad-every-s", type=float, default=20.0, help="one bad client this often (0: none)")
    p.add_argument("--sample-s", type=float, default=60.0)
    p.add_argument("--rss-slope-mb-h", type=float, default=10.0)
    p.add_argument("--latency-tol", type=float, default=0.25)
    p.add_argument("--json", type=Path, default=Path("var/soak.json"))
    p.add_argument("--plot", type=Path, default=None, help="write the plot here (tests/perf/plot_soak.py)")
    p.add_argument("--rejudge", action="store_true", help="no run: apply the verdict's rules to --json again")
    args = p.parse_args(argv)
    if args.rejudge:
        return _rejudge(args.json, args.plot, args.rss_slope_mb_h, args.latency_tol)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    cases = [corpus.build(s) for s in corpus.main_specs(2)]
    print(
        f"# soak {time.strftime('%Y-%m-%d %H:%M')} {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.2f}; "
        f"{args.minutes:g} min, {args.sessions} live loops, {args.reconnects} reconnect loops, a bad client "
        f"every {args.bad_every_s:g} s; {len(cases)} corpus cases; stack {','.join(DEFAULT_SERVICES)}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    log = work / "clients.jsonl"
    samples: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cores": os.cpu_count(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "command": "python -m tests.perf.soak " + " ".join(argv if argv is not None else sys.argv[1:]),
        "samples": samples,
    }
    with Stack(DEFAULT_SERVICES, env={"LOG_LEVEL": "ERROR"}, workdir=work) as stack:
        procs = {name: psutil.Process(svc.proc.pid) for name, svc in stack.running.items()}
        ctx = mp.get_context("spawn")
        # The token outlives the run: the development token's default hour ended the first 70-minute run's load at 60.
        client = ctx.Process(
            target=_client_main,
            args=(
                stack.url,
                stack.token(ttl_s=args.minutes * 60 + 3600),
                vars(args) | {"json": None, "plot": None},
                str(log),
            ),
        )
        t0 = time.monotonic()

        def take() -> dict[str, Any]:
            now = time.monotonic()
            m = scrape(stack.http_base)
            streams, floors = scrape_services(stack)
            s = {
                "t": now - t0,
                "load": list(os.getloadavg()),
                "procs": sample_processes(procs),
                "gauges": m["gauges"],
                "hist": m["hist"],
                "gateway_errors": m["errors"],
                "streams": streams,
                "floors": floors,
                "client_process": sample_processes({"client": client_proc})["client"] if client_proc else None,
            }
            prev = samples[-1] if samples else None
            recs = read_log(log)
            s["client"] = client_window(recs, t0 + (prev["t"] if prev else -1e9), now)
            for key in HISTOGRAMS:
                d = delta(prev["hist"][key], s["hist"][key]) if prev else s["hist"][key]
                s[key + "_p50"] = quantile(0.5, d)
                s[key + "_p95"] = quantile(0.95, d)
            samples.append(s)
            return s

        client_proc: psutil.Process | None = None
        take()["idle"] = True
        client.start()
        client_proc = psutil.Process(client.pid)
        try:
            next_at = t0 + args.sample_s
            while client.is_alive():
                client.join(max(0.0, next_at - time.monotonic()))
                if time.monotonic() >= next_at:
                    s = take()
                    next_at += args.sample_s
                    _print_sample(s)
                if time.monotonic() - t0 > args.minutes * 60 + 300:
                    print("# the client did not finish; stopping it", flush=True)
                    client.kill()
            # Let the last sessions close and the stack go quiet, then the idle sample that is compared
            # with the one taken before any load: after every service has given its free heap back
            # once, so that its RSS reading is the floor, not a phase of the give-back cycle.
            quiet_by = time.monotonic() + 120
            while time.monotonic() < quiet_by and scrape(stack.http_base)["gauges"].get("orchestrator_active_sessions"):
                time.sleep(1.0)
            time.sleep(TRIM_EVERY_S + 5.0)
            take()["idle"] = True
            _print_sample(samples[-1])
        finally:
            if client.is_alive():
                client.kill()
            client.join()
        result["restarts"] = dict(stack.restarts)
        result["exits"] = list(stack.exits)

    recs = read_log(log)
    result["clients"] = _client_totals(recs)
    result["client_latency"] = client_latency(recs)
    result["verdict"] = verdict(samples, args.rss_slope_mb_h, args.latency_tol, result["client_latency"])
    loads = [s["load"][0] for s in samples]
    result["load_avg_1m"] = {"min": min(loads), "median": statistics.median(loads), "max": max(loads)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    shutil.copyfile(log, clients_path(args.json))
    _print_result(result)
    print(f"# samples: {args.json}", flush=True)
    if args.plot is not None:
        from tests.perf.plot_soak import plot

        plot(result, args.plot)
        print(f"# plot: {args.plot}")
    return 0


def clients_path(json_path: Path) -> Path:
    """Where the run's per-client records are kept: beside its JSON."""
    return json_path.with_suffix(".clients.jsonl")


def _rejudge(path: Path, plot_to: Path | None, rss_slope_mb_h: float, latency_tol: float) -> int:
    result = json.loads(path.read_text())
    if clients_path(path).exists():
        result["client_latency"] = client_latency(read_log(clients_path(path)))
    result["verdict"] = verdict(result["samples"], rss_slope_mb_h, latency_tol, result.get("client_latency"))
    path.write_text(json.dumps(result, indent=1))
    _print_result(result)
    if plot_to is not None:
        from tests.perf.plot_soak import plot

        plot(result, plot_to)
    return 0


def _client_totals(recs: list[dict[str, Any]]) -> dict[str, Any]:
    full = [r for r in recs if r["kind"] == "live"]
    bad: dict[str, Counter[str]] = {}
    for r in recs:
        if r["kind"] in BAD_KINDS:
            outcome = ",".join(r["error_codes"]) or "no error event"
            outcome += f" end={r['end_reason']}" if r.get("end_reason") else ""
            outcome += (
                f" close={r.get('close_code')}"
                + (f" ({r['close_reason']})" if r.get("close_reason") else "")
                + (f" {r['client_error']}" if "client_error" in r else "")
            )
            bad.setdefault(r["kind"], Counter())[outcome] += 1
    codes: Counter[str] = Counter()
    for r in full:
        codes.update(r.get("error_codes", []))
    return {
        "sessions": len(full),
        "completed": sum(bool(r.get("completed")) for r in full),
        "degraded": sum(bool(r.get("degraded")) for r in full),
        "no_partial": sum(r.get("first_partial_ms") is None for r in full),
        "client_errors": dict(Counter(r["client_error"] for r in full if "client_error" in r)),
        "dropped": sum(r["kind"] == "dropped" for r in recs),
        "resumes": {
            "tried": sum(r["kind"] == "resumed" for r in recs),
            "resumed": sum(bool(r.get("resumed")) for r in recs if r["kind"] == "resumed"),
            "seq_without_gaps": sum(bool(r.get("seq_ok")) for r in recs if r["kind"] == "resumed"),
            "ended": sum(bool(r.get("completed")) for r in recs if r["kind"] == "resumed"),
            "error_codes": dict(Counter(c for r in recs if r["kind"] == "resumed" for c in r.get("error_codes", []))),
        },
        "session_error_codes": dict(codes),
        "bad_clients": {k: dict(v) for k, v in bad.items()},
    }


def _fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def _print_sample(s: dict[str, Any]) -> None:
    rss = " ".join(f"{n}={p['rss_mb']:.0f}/{rss_peak_mb(p):.0f}" for n, p in s["procs"].items())
    floors = " ".join(f"{n}={mb:.0f}" for n, mb in s.get("floors", {}).items()) or "-"
    fds = " ".join(f"{n}={p['fds']:.0f}" for n, p in s["procs"].items())
    c = s["client"]
    g = s["gauges"]
    print(
        f"t={s['t'] / 60:5.1f}min load={s['load'][0]:.1f} | RSS now/peak MB {rss} | floor MB {floors} | fds {fds} | "
        f"tasks={_fmt(g.get('orchestrator_event_loop_tasks'))} open={_fmt(g.get('orchestrator_active_sessions'))} "
        f"sendq={_fmt(g.get('orchestrator_send_queue_events'))} | gw first partial p50/p95 "
        f"{_fmt(s['first_partial_p50'])}/{_fmt(s['first_partial_p95'])} final lag "
        f"{_fmt(s['final_lag_p50'])}/{_fmt(s['final_lag_p95'])} ms | client {c['completed']}/{c['sessions']} "
        f"ended, fp50 {_fmt(c['first_partial_ms_p50'])} lag50 {_fmt(c['final_lag_ms_p50'])} ms, "
        f"{c['dropped']} dropped, {c['bad']} bad, errors {c['errors'] or '{}'}",
        flush=True,
    )


def _print_result(result: dict[str, Any]) -> None:
    v = result["verdict"]
    print(f"\n# clients: {json.dumps(result['clients'])}")
    print(f"# stack restarts: {result['restarts']} exits: {result['exits']}")
    la = result["load_avg_1m"]
    print(f"# load average (1 min) during the run: min {la['min']:.1f} median {la['median']:.1f} max {la['max']:.1f}")
    for k, t in enumerate(result.get("client_latency", [])):
        langs = " ".join(f"{g} {_fmt(f['p95'])} ({f['slow']}/{f['sessions']})" for g, f in t["by_lang"].items())
        print(
            f"# client first partial, third {k + 1}: P50/P95 {_fmt(t['p50'])}/{_fmt(t['p95'])} ms, "
            f"{t['slow']}/{t['sessions']} past {SLOW_FIRST_PARTIAL_MS:g} ms (their lid at "
            f"{_fmt(t['slow_lid_ms_p50'])} ms); P95 (past/sessions) by language: {langs}"
        )
    for c in v["checks"]:
        print(f"  {'ok  ' if c['ok'] else 'GROWS'} {c['check']:24s} {c['value']} {c['unit']}")
    if "peak_rss_slopes_mb_h" in v:
        print(f"# peak RSS slopes, MB/h (judged only where a process has no floor): {v['peak_rss_slopes_mb_h']}")
    print(f"# verdict: {'FLAT' if v['flat'] else 'NOT FLAT'} ({json.dumps(v['rules'])})", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
