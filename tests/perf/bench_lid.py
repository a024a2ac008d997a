"""LID benchmark (make bench): latency and accuracy of language identification on the 27
pytest-audioeval clips (9 languages, 3 each), SPEC §4, §6.

Part 1, engine: one detection per clip on its first 1 s, 2 s, 3 s and on the whole clip, for the
service's encoder window (10 s) and faster-whisper's own (30 s): accuracy over all Whisper
languages and over the 9 clip languages only (LID_LANGS), median inference time per call.
Part 2, service: the real `python -m services.lid` process with its defaults; each clip is streamed
in 100 ms messages, at real-time pace and as fast as possible: accuracy of the early answer, median
audio it used and median time from the first frame sent to the answer. Quote medians; the machine
is shared.

    python -m tests.perf.bench_lid [--cpu-threads 1] [--no-service]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
import soundfile as sf

from common.models import package_dir, whisper_base_dir
from devtools.launcher import launch
from proto import common_pb2, lid_pb2_grpc
from services.lid.engine import WhisperLid, restrict

CLIPS = package_dir("pytest_audioeval") / "samples" / "audio"
DURATIONS: tuple[float | None, ...] = (1.0, 2.0, 3.0, None)  # None: the whole clip


def load_clips() -> list[tuple[str, str, bytes]]:
    """(language, name, PCM16 LE) for every clip; the WAVs are float, scaled here."""
    out = []
    for wav in sorted(CLIPS.glob("*/*.wav")):
        audio, sr = sf.read(wav, dtype="float32")
        assert sr == 16000 and audio.ndim == 1, wav
        pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2").tobytes()
        out.append((wav.parent.name, wav.stem, pcm))
    return out


def bench_engine(clips: list[tuple[str, str, bytes]], window_s: float, cpu_threads: int) -> None:
    engine = WhisperLid(whisper_base_dir(), cpu_threads=cpu_threads, window_s=window_s)
    candidates = {"all": (), "clip-langs": tuple(sorted({lang for lang, _, _ in clips}))}
    engine.probabilities(clips[0][2])  # warm-up
    for seconds in DURATIONS:
        ms: list[float] = []
        hits = dict.fromkeys(candidates, 0)
        misses: list[str] = []
        for lang, name, pcm in clips:
            cut = pcm if seconds is None else pcm[: int(seconds * 16000) * 2]
            t0 = time.perf_counter()
            probs = engine.probabilities(cut)
            ms.append((time.perf_counter() - t0) * 1000)
            for key, langs in candidates.items():
                got = restrict(probs, langs)[0][0]
                hits[key] += got == lang
                if key == "all" and got != lang:
                    misses.append(f"{lang}/{name}->{got}")
        row = {
            "part": "engine",
            "window_s": window_s,
            "audio_s": seconds or "full",
            "clips": len(clips),
            "acc_all_langs": f"{hits['all']}/{len(clips)}",
            "acc_clip_langs": f"{hits['clip-langs']}/{len(clips)}",
            "median_infer_ms": round(statistics.median(ms), 1),
            "misses_all_langs": misses,
        }
        print(json.dumps(row), flush=True)


def frames(pcm: bytes, flow_id: str) -> list[common_pb2.AudioFrame]:
    step = 3200  # 100 ms
    return [
        common_pb2.AudioFrame(
            flow_id=flow_id,
            seq=i // 640,
            sr=16000,
            channels=1,
            ns=len(pcm[i : i + step]) // 2 * 62_500,
            pts=i // 2 * 62_500,
            pcm=pcm[i : i + step],
        )
        for i in range(0, len(pcm), step)
    ]


async def one_call(
    stub: lid_pb2_grpc.LidStub, msgs: list[common_pb2.AudioFrame], real_time: bool
) -> tuple[str, int, float]:
    t0 = time.monotonic()

    async def paced() -> AsyncIterator[common_pb2.AudioFrame]:
        for i, msg in enumerate(msgs):
            if real_time:
                await asyncio.sleep(max(0.0, t0 + i * 0.1 - time.monotonic()))
            yield msg

    result = await stub.Detect(paced(), timeout=60)
    return result.lang, result.audio_ms, (time.monotonic() - t0) * 1000


async def bench_service(clips: list[tuple[str, str, bytes]], cpu_threads: int) -> None:
    svc = launch("lid", env={"LID_CPU_THREADS": str(cpu_threads), "LOG_LEVEL": "WARNING"})
    try:
        async with grpc.aio.insecure_channel(svc.grpc_addr) as channel:
            stub = lid_pb2_grpc.LidStub(channel)
            for real_time in (True, False):
                got = [await one_call(stub, frames(pcm, f"{lang}-{name}"), real_time) for lang, name, pcm in clips]
                pairs = list(zip(got, clips, strict=True))
                row = {
                    "part": "service",
                    "pace": "real-time" if real_time else "as-fast-as-possible",
                    "clips": len(clips),
                    "accuracy": f"{sum(g[0] == c[0] for g, c in pairs)}/{len(clips)}",
                    "median_audio_ms": statistics.median(g[1] for g in got),
                    "median_answer_ms": round(statistics.median(g[2] for g in got), 1),
                    "misses": [f"{c[0]}/{c[1]}->{g[0]}" for g, c in zip(got, clips, strict=True) if g[0] != c[0]],
                }
                print(json.dumps(row), flush=True)
    finally:
        svc.stop()  # also closes its stdout pipe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cpu-threads", type=int, default=1)
    p.add_argument("--windows", default="10,30", help="encoder windows (s) for the engine part")
    p.add_argument("--no-service", action="store_true", help="skip the service part")
    args = p.parse_args(argv)
    clips = load_clips()
    print(
        f"# lid: Whisper base int8, cpu_threads={args.cpu_threads}, {len(clips)} clips from {CLIPS}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    for window in (float(x) for x in args.windows.split(",")):
        bench_engine(clips, window, args.cpu_threads)
    if not args.no_service:
        asyncio.run(bench_service(clips, args.cpu_threads))
    print(f"# load average at the end {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
