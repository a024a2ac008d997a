"""`python -m tests.perf.bench_compress`: encode cost and size per audio second, ogg_opus vs flac, and the
in-process end-of-stream -> answer latency of a long flow (local store). Prints medians for
docs/services/compress.md.

Audio: every pytest-audioeval clip (9 languages) concatenated, 16 kHz mono PCM16.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from common.envconf import load_env
from proto import common_pb2
from services.compress.config import CompressConfig, S3Config
from services.compress.encoder import encode_pcm_file
from services.compress.service import ArchivePipeline
from services.compress.spool import PendingSpool
from services.compress.store import LocalStore, S3Store, Store
from services.compress.uploader import Uploader

SR = 16000


def speech_pcm() -> bytes:
    import pytest_audioeval

    root = Path(next(iter(pytest_audioeval.__path__))) / "samples" / "audio"
    parts = [sf.read(p, dtype="float32")[0] for p in sorted(root.glob("*/*.wav"))]
    pcm16 = np.clip(np.round(np.concatenate(parts) * 32767), -32768, 32767).astype("<i2")
    return pcm16.tobytes()


def bench_encode(pcm: bytes, fmt: str, level: float | None, runs: int, tmp: Path) -> tuple[float, float, float]:
    """Medians of (wall s, CPU s, bytes) per audio second; CPU time is robust to a busy machine."""
    src = tmp / "speech.pcm"
    src.write_bytes(pcm)
    audio_s = len(pcm) / 2 / SR
    walls, cpus, sizes = [], [], []
    for i in range(runs):
        t0, c0 = time.perf_counter(), time.thread_time()
        out = encode_pcm_file(src, tmp / f"out{i}", fmt, SR, level)
        walls.append((time.perf_counter() - t0) / audio_s)
        cpus.append((time.thread_time() - c0) / audio_s)
        sizes.append(out.bytes / audio_s)
    return statistics.median(walls), statistics.median(cpus), statistics.median(sizes)


async def bench_latency(pcm: bytes, fmt: str, flow_s: float, runs: int, tmp: Path, store: Store | None = None) -> float:
    reps = int(np.ceil(flow_s * SR * 2 / len(pcm)))
    flow_pcm = (pcm * reps)[: int(flow_s * SR) * 2]
    cfg = CompressConfig(format=fmt, store_dir=tmp / "store", spool_dir=tmp / "spool")
    store = store or LocalStore(cfg.store_dir, "http://bench")
    spool = PendingSpool(cfg.spool_dir)
    spool.prepare()
    store.ensure_ready()
    latencies = []
    with ThreadPoolExecutor(cfg.encode_workers) as pool:
        pipeline = ArchivePipeline(cfg, store, spool, Uploader(store, spool, pool, 0.5, 30), pool)

        async def frames() -> AsyncIterator[common_pb2.AudioFrame]:
            for i in range(0, len(flow_pcm), 2 * SR):
                yield common_pb2.AudioFrame(flow_id="bench", sr=SR, channels=1, pcm=flow_pcm[i : i + 2 * SR])
            marks.append(time.perf_counter())

        for _ in range(runs):
            marks: list[float] = []
            out = await pipeline.archive(frames())
            assert out.status == "stored", out
            latencies.append((time.perf_counter() - marks[0]) * 1000)
    return statistics.median(latencies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--flow-s", type=float, default=300.0)
    ap.add_argument("--s3", action="store_true", help="also time a local SeaweedFS (tests/integration/seaweed.py)")
    args = ap.parse_args()
    pcm = speech_pcm()
    print(f"speech: {len(pcm) / 2 / SR:.1f} s, runs={args.runs} (medians)")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, level in (("ogg_opus", None), ("ogg_opus", 0.9), ("ogg_opus", 1.0), ("flac", None)):
            wall, cpu, size = bench_encode(pcm, fmt, level, args.runs, Path(tmp))
            print(
                f"{fmt:9s} level={level!s:5s} encode wall {wall * 1000:6.2f} / CPU {cpu * 1000:6.2f} ms per "
                f"audio s, {size:8.0f} B per audio s ({size * 8 / 1000:.1f} kbit/s)"
            )
        for fmt in ("ogg_opus", "flac"):
            ms = asyncio.run(bench_latency(pcm, fmt, args.flow_s, args.runs, Path(tmp) / fmt))
            print(f"{fmt:9s} end of stream -> answer, {args.flow_s:.0f} s flow, local store: {ms:.0f} ms")
        if args.s3:
            from devtools.seaweed import running_seaweed

            with running_seaweed(Path(tmp) / "weed") as weed:
                env = weed.env("bench")
                s3 = S3Store(load_env(S3Config, env))
                for fmt in ("ogg_opus", "flac"):
                    for flow_s in (3.0, args.flow_s):
                        ms = asyncio.run(bench_latency(pcm, fmt, flow_s, args.runs, Path(tmp) / f"s3{fmt}", s3))
                        print(f"{fmt:9s} end of stream -> answer, {flow_s:.0f} s flow, SeaweedFS: {ms:.0f} ms")


if __name__ == "__main__":
    main()
