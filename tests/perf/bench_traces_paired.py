"""Tracing's cost at the gateway, paired (docs/performance.md#tracing-issue-12): two copies of the capacity
benchmark's setup (gateway + fake VAD and archive, tests/perf/bench_capacity.py), one untraced and one
tracing every session to an OTLP/HTTP receiver in this process, driven at the same time by the same
load. Both gateways share the machine's state at every moment, so a shared machine's changing load falls
on both alike instead of on whichever run it happened to meet. Each round swaps nothing but time; the
ratio of their CPU per session-second is the figure.

    python -m tests.perf.bench_traces_paired [--sessions 100] [--seconds 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from devtools.launcher import RunningService, launch
from devtools.stack import LOOPBACK_LIMITS
from tests.otlp_sink import OtlpSink
from tests.perf.bench_capacity import run_level


def start_copy(otel: dict[str, str]) -> list[RunningService]:
    """Fake VAD, fake archive and a gateway on them; the gateway last."""
    fakes = [
        launch(f"fake-{k}", [sys.executable, "-m", "tests.fakes", k], env={"LOG_LEVEL": "WARNING", **otel})
        for k in ("vad", "compress")
    ]
    env = {
        "VAD_ADDR": fakes[0].grpc_addr,
        "COMPRESS_ADDR": fakes[1].grpc_addr,
        "GATEWAY_PORT": "0",
        "LOG_LEVEL": "WARNING",
        "MAX_SESSIONS": "2000",
        **LOOPBACK_LIMITS,
        **otel,
    }
    return [*fakes, launch("gateway", [sys.executable, "-m", "orchestrator"], env=env)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sessions", type=int, default=100, help="sessions on each gateway")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    with OtlpSink() as sink:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_TRACES_SAMPLER": "always_on"}
        copies = {"off": start_copy({}), "on": start_copy(otel)}
        print(
            f"# paired: 2 gateways (traces off / on), {args.sessions} sessions each at once, "
            f"{args.seconds:g} s per session, {os.cpu_count()} cores",
            flush=True,
        )
        ratios = []
        try:
            for _ in range(args.rounds):
                load = os.getloadavg()[0]
                with ThreadPoolExecutor(2) as pool:
                    futures = {
                        mode: pool.submit(
                            run_level,
                            f"ws://127.0.0.1:{procs[-1].http_port}/ws/stream",
                            procs[-1].proc.pid,
                            args.sessions,
                            args.seconds,
                            1,
                        )
                        for mode, procs in copies.items()
                    }
                    rows: dict[str, dict[str, Any]] = {mode: f.result() for mode, f in futures.items()}
                cpu = {mode: row["gateway_cpu_s_per_session_s"] for mode, row in rows.items()}
                ratios.append(cpu["on"] / cpu["off"])
                out = {
                    "load_1m_at_start": round(load, 2),
                    **{
                        f"{m}_{k}": round(v, 5) if isinstance(v, float) else v
                        for m, r in rows.items()
                        for k, v in r.items()
                        if k in ("completed", "gateway_cpu_s_per_session_s", "gateway_peak_rss_mb", "end_lag_ms_p50")
                    },
                    "on_over_off": round(ratios[-1], 3),
                }
                print(json.dumps(out), flush=True)
        finally:
            for procs in copies.values():
                for proc in reversed(procs):
                    proc.stop()
        traces = len({s.trace_id for s in sink.snapshot() if s.name == "session"})
    print(json.dumps({"on_over_off_median": round(statistics.median(ratios), 3), "session_traces": traces}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
