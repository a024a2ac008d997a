"""Capacity benchmark (make bench): N concurrent real-time sessions through the real gateway.

The downstream services are the load-test fakes of tests/fakes.py (named as such), each its own
process, so the figures are the gateway's own cost. Load comes from separate client processes
sending 20 ms PCM chunks at real-time pace. Printed per N: the gateway's CPU seconds per
session-second of audio, its RSS, the achieved send rate, and event lag (flush -> end, and
ack after start). Quote medians; the machine is shared.

    python -m tests.perf.bench_capacity [--sessions 100,200,500] [--seconds 20] [--tls] [--traces]

`--tls` runs the same load over wss:// with mTLS on the gateway's gRPC links (certificates from a
throwaway CA, devtools/certs.py): the difference is the cost of TLS. `--traces` turns OpenTelemetry
tracing on in the gateway and the fakes, exporting every session's spans over OTLP/HTTP to a receiver
in this process (tests/otlp_sink.py): the difference is the cost of the traces.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from devtools.devauth import dev_env
from devtools.launcher import launch
from devtools.stack import LOOPBACK_LIMITS

CHUNK = 640  # 20 ms of PCM16 at 16 kHz


async def _one_session(
    url: str, seconds: float, start_at: float, out: list[dict[str, Any]], ca_file: str | None = None
) -> None:
    from websockets.asyncio.client import connect

    pcm = b"\x10\x00\xf0\xff" * (CHUNK // 4)
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    from devtools.devauth import default_token
    from speechgw_client import connect_kwargs

    tls = ssl.create_default_context(cafile=ca_file) if ca_file else None
    auth = connect_kwargs(default_token())
    async with connect(url, compression=None, open_timeout=60, max_size=2**22, ssl=tls, **auth) as ws:
        t_start = time.monotonic()
        await ws.send(json.dumps({"type": "start", "return": ["record_url", "metrics", "vad"]}))
        ack = json.loads(await ws.recv())
        ack_ms = (time.monotonic() - t_start) * 1000
        if ack.get("type") != "ack":
            out.append({"error": 1.0})
            return
        t0 = time.monotonic()
        n = int(seconds * 50)
        late = 0.0
        for i in range(n):
            delay = t0 + i * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                late = max(late, -delay)
            await ws.send(pcm)
        t_flush = time.monotonic()
        await ws.send('{"type":"flush"}')
        end_ms = float("nan")
        errors: list[str] = []
        async for raw in ws:
            event = json.loads(raw)
            if event.get("type") == "error":
                errors.append(str(event.get("code")))
            elif event.get("type") == "end":
                end_ms = (time.monotonic() - t_flush) * 1000
        out.append({"ack_ms": ack_ms, "end_ms": end_ms, "late_ms": late * 1000, "errors": errors})


def _client_proc(url: str, n: int, seconds: float, ramp_s: float, q: mp.Queue, ca_file: str | None) -> None:  # type: ignore[type-arg]
    async def run() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        t = time.monotonic() + 0.5
        await asyncio.gather(
            *[_one_session(url, seconds, t + ramp_s * i / max(1, n), out, ca_file) for i in range(n)],
            return_exceptions=True,
        )
        return out

    try:
        import uvloop

        q.put(uvloop.run(run()))
    except ImportError:
        q.put(asyncio.run(run()))


def run_level(
    url: str, gw_pid: int, sessions: int, seconds: float, procs: int, ca_file: str | None = None
) -> dict[str, Any]:
    gw = psutil.Process(gw_pid)
    ramp_s = min(5.0, seconds / 4)
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    per = [sessions // procs + (1 if i < sessions % procs else 0) for i in range(procs)]
    workers = [mp.Process(target=_client_proc, args=(url, n, seconds, ramp_s, q, ca_file)) for n in per if n]
    cpu0 = gw.cpu_times()
    t0 = time.monotonic()
    peak_rss = 0
    for w in workers:
        w.start()
    results: list[dict[str, Any]] = []
    pending = len(workers)
    while pending:
        peak_rss = max(peak_rss, gw.memory_info().rss)
        try:
            results += q.get(timeout=0.5)
            pending -= 1
        except Exception:
            continue
    for w in workers:
        w.join()
    wall = time.monotonic() - t0
    cpu1 = gw.cpu_times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    ok = [r for r in results if "end_ms" in r]
    codes = Counter(code for r in ok for code in r["errors"])
    audio_s = len(ok) * seconds
    return {
        "sessions": sessions,
        "completed": len(ok),
        "with_errors": sum(1 for r in ok if r["errors"]),
        "error_codes": dict(codes),
        "gateway_cpu_s_per_session_s": cpu / audio_s if audio_s else float("nan"),
        "gateway_cores_busy": cpu / wall,
        "gateway_peak_rss_mb": peak_rss / 2**20,
        "ack_ms_p50": statistics.median(r["ack_ms"] for r in ok) if ok else float("nan"),
        "end_lag_ms_p50": statistics.median(r["end_ms"] for r in ok) if ok else float("nan"),
        "end_lag_ms_p95": statistics.quantiles([r["end_ms"] for r in ok], n=20)[-1] if len(ok) > 1 else float("nan"),
        "client_late_ms_max_p50": statistics.median(r["late_ms"] for r in ok) if ok else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sessions", default="100,200,500")
    p.add_argument("--seconds", type=float, default=20.0, help="audio seconds per session")
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra gateway setting, e.g. VAD_BATCH_MS=20 to send every chunk as its own message",
    )
    p.add_argument(
        "--auth", action="store_true", help="JWT on (the development secret): every session's token is verified"
    )
    p.add_argument("--tls", action="store_true", help="wss:// at the gateway and mTLS to the fakes")
    p.add_argument(
        "--traces", action="store_true", help="tracing on everywhere, every session sampled, to a local OTLP receiver"
    )
    args = p.parse_args(argv)
    sink = None
    otel: dict[str, str] = {}
    if args.traces:
        from tests.otlp_sink import OtlpSink

        sink = OtlpSink().start()
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_TRACES_SAMPLER": "always_on"}
    auth_env = {k: v for k, v in dev_env().items() if k.startswith("AUTH_")} if args.auth else {}
    tls: dict[str, dict[str, str]] = {"vad": {}, "compress": {}, "gateway": {}}
    ca_file = None
    if args.tls:
        from devtools.certs import DevCA

        ca = DevCA.create(Path(tempfile.mkdtemp(prefix="bench-certs-")))
        ca_file = str(ca.cert_file)
        for name in tls:
            ident = ca.issue(name)
            tls[name] = {
                "GRPC_TLS_CERT_FILE": str(ident.cert),
                "GRPC_TLS_KEY_FILE": str(ident.key),
                "TLS_CA_FILE": ca_file,
            }
        edge = ca.issue("edge")
        tls["gateway"] |= {"TLS_CERT_FILE": str(edge.cert), "TLS_KEY_FILE": str(edge.key)}
    fakes = [
        launch(f"fake-{k}", [sys.executable, "-m", "tests.fakes", k], env={"LOG_LEVEL": "WARNING", **tls[k], **otel})
        for k in ("vad", "compress")
    ]
    gw = launch(
        "gateway",
        [sys.executable, "-m", "orchestrator"],
        env={
            "VAD_ADDR": fakes[0].grpc_addr,
            "COMPRESS_ADDR": fakes[1].grpc_addr,
            "GATEWAY_PORT": "0",
            "LOG_LEVEL": "WARNING",
            "MAX_SESSIONS": "2000",
            **auth_env,
            **LOOPBACK_LIMITS,  # every simulated client is 127.0.0.1
            **tls["gateway"],
            **otel,
            **dict(kv.split("=", 1) for kv in args.gateway_env),
        },
    )
    url = f"{'wss' if args.tls else 'ws'}://127.0.0.1:{gw.http_port}/ws/stream"
    print(
        f"# capacity: gateway + fake VAD/compress, {args.seconds:g} s real-time audio per session, "
        f"{os.cpu_count()} cores, settings {args.gateway_env or 'default'}, TLS {'on' if args.tls else 'off'}, "
        f"auth {'jwt' if args.auth else 'off'}, traces {'on' if args.traces else 'off'}",
        flush=True,
    )
    try:
        for n in (int(x) for x in args.sessions.split(",")):
            row = run_level(url, gw.proc.pid, n, args.seconds, args.client_procs, ca_file)
            print(
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                flush=True,
            )
    finally:
        gw.stop()
        for f in fakes:
            f.stop()
        if sink is not None:
            spans = sink.snapshot()
            traces = len({s.trace_id for s in spans if s.name == "session"})
            print(json.dumps({"spans_received": len(spans), "session_traces": traces}), flush=True)
            sink.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
