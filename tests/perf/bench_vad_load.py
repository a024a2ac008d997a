"""The VAD service under live load: N concurrent gRPC streams at real-time pace, CPU per session-second.

    python -m tests.perf.bench_vad_load [--sessions 16] [--batch-ms 40,100] [--runs 3] [KEY=VALUE ...]

Starts the real VAD service (its own process, extra settings as KEY=VALUE) and streams each session
the main corpus's speech (tests/corpus.py: lead-ins of silence or noise, two utterances, pauses) in
messages of `--batch-ms`, the way the gateway's VAD stage does (VAD_BATCH_MS). Prints per batch size
the service's CPU seconds per session-second (medians of the runs), the boundaries it sent and the
load average. `tests/perf/bench_vad.py` measures the detector alone; the difference is the cost of
the service around it (gRPC messages, the executor hop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

import grpc
import psutil

from common.audio import BYTES_PER_SAMPLE, SAMPLE_RATE
from devtools.launcher import launch
from proto import common_pb2, vad_pb2_grpc
from tests import corpus


async def _stream(stub: vad_pb2_grpc.VadStub, flow: str, pcm: bytes, batch_ms: int, t0: float) -> int:
    step = SAMPLE_RATE * BYTES_PER_SAMPLE * batch_ms // 1000

    async def frames():  # type: ignore[no-untyped-def]
        for seq, at in enumerate(range(0, len(pcm), step)):
            delay = t0 + seq * batch_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            last = at + step >= len(pcm)
            pts = seq * batch_ms * 1_000_000
            yield common_pb2.AudioFrame(
                flow_id=flow, seq=seq, pts=pts, sr=SAMPLE_RATE, channels=1, pcm=pcm[at : at + step], last=last
            )

    return sum([1 async for reply in stub.Stream(frames()) if reply.activity])


async def _level(addr: str, proc: psutil.Process, pcms: list[bytes], batch_ms: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = vad_pb2_grpc.VadStub(channel)
        before = proc.cpu_times()
        t0 = time.monotonic() + 0.2
        boundaries = await asyncio.gather(*[_stream(stub, f"f{i}", p, batch_ms, t0) for i, p in enumerate(pcms)])
        after = proc.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    audio_s = sum(len(p) for p in pcms) / (SAMPLE_RATE * BYTES_PER_SAMPLE)
    return {"cpu_s_per_session_s": cpu / audio_s, "boundaries": sum(boundaries), "load": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--batch-ms", default="40,100")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args(argv)
    cases = [corpus.build(s) for s in corpus.main_specs()]
    pcms = [cases[i % len(cases)].pcm() for i in range(args.sessions)]
    env = {"LOG_LEVEL": "WARNING", **dict(kv.split("=", 1) for kv in args.settings)}
    svc = launch("vad", [sys.executable, "-m", "services.vad"], env=env)
    try:
        proc = psutil.Process(svc.proc.pid)
        rows: dict[int, list[dict[str, float]]] = {}
        for _ in range(args.runs):  # batch sizes alternate within each run
            for batch_ms in (int(b) for b in args.batch_ms.split(",")):
                rows.setdefault(batch_ms, []).append(asyncio.run(_level(svc.grpc_addr, proc, pcms, batch_ms)))
    finally:
        svc.stop()
    for batch_ms, runs in rows.items():
        out = {
            "sessions": args.sessions,
            "batch_ms": batch_ms,
            "cpu_s_per_session_s": round(statistics.median(r["cpu_s_per_session_s"] for r in runs), 4),
            "runs": [round(r["cpu_s_per_session_s"], 4) for r in runs],
            "boundaries": statistics.median(r["boundaries"] for r in runs),
            "load": [round(r["load"], 2) for r in runs],
        }
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
