"""N concurrent real-time streams against one real ASR process (issue 9 item 3), for docs/services/asr.md.

    python -m tests.perf.bench_asr_load --sessions 1,8,16 [--env ASR_DECODE_WORKERS=2 ...] [--no-vad]

Each session streams PCM at real-time pace (one 20 ms packet per 20 ms): a silent lead-in (0.5 to
2.5 s, varied per session), two English clips (pytest-audioeval) 1 s apart, then 1 s of silence.
With VAD (default) it sends SPEECH_START / SPEECH_END from the clips' energy, each 300 ms after its
pts (a VAD's decision delay), and sets Start.vad_endpoints. Printed per N: refused sessions, first
partial latency from sending the packet that holds the first speech sample (P50/P95), last final lag
after the packet holding the last speech sample (P50/P95; the VAD's SPEECH_END comes 300 ms
later), WER over all finals, partials per session, and from the service's
/metrics: skipped partials, reused finals, decode seconds per audio second, mean decodes per
batched decode (ASR_BATCH_MAX).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import soundfile as sf

from devtools.launcher import launch
from proto import asr_pb2, asr_pb2_grpc
from tests.wer import wer

CLIPS = Path(__import__("pytest_audioeval").__path__[0]) / "samples" / "audio" / "en"
NAMES = ("quick_brown_fox", "hello_world", "counting")
MS = 1_000_000


def load(name: str) -> tuple[np.ndarray, str]:
    audio, sr = sf.read(CLIPS / f"{name}.wav", dtype="float32")
    assert sr == 16000
    return audio, (CLIPS / f"{name}.txt").read_text().strip()


def session_audio(i: int) -> tuple[np.ndarray, list[tuple[int, int]], str]:
    """Audio, speech (start_ms, end_ms) spans found by energy, reference text."""
    lead_ms = 500 + (i * 700) % 2100
    parts = [np.zeros(lead_ms * 16, np.float32)]
    spans, refs, at_ms = [], [], lead_ms
    for k in range(2):
        audio, ref = load(NAMES[(i + k) % len(NAMES)])
        loud = np.flatnonzero(np.abs(audio) > 0.02)
        spans.append((at_ms + int(loud[0] / 16), at_ms + int(loud[-1] / 16) + 100))
        refs.append(ref)
        parts += [audio, np.zeros(16000, np.float32)]
        at_ms += audio.size // 16 + 1000
    return np.concatenate(parts), spans, " ".join(refs)


async def run_session(addr: str, i: int, vad: bool) -> dict[str, object]:
    audio, spans, ref = session_audio(i)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    pcm = np.concatenate([pcm, np.zeros(-pcm.size % 320, "<i2")])
    packets = [pcm[j : j + 320].tobytes() for j in range(0, pcm.size, 320)]
    first_speech_seq = spans[0][0] // 20
    sent_at: dict[int, float] = {}
    endpoints = sorted(
        [(asr_pb2.Endpoint.SPEECH_START, b) for b, _ in spans] + [(asr_pb2.Endpoint.SPEECH_END, e) for _, e in spans],
        key=lambda p: p[1],
    )

    async def frames():  # type: ignore[no-untyped-def]
        start = asr_pb2.Start(
            flow_id=f"load-{i}", codec="pcm", sr=16000, channels=1, frame_ms=20, lang_hint="en", vad_endpoints=vad
        )
        yield asr_pb2.ClientFrame(start=start)
        pending = list(endpoints) if vad else []
        t0 = time.monotonic()
        for seq, data in enumerate(packets):
            delay = t0 + seq * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[seq] = time.monotonic()
            yield asr_pb2.ClientFrame(opus=asr_pb2.OpusPacket(data=data, seq=seq))
            while pending and (seq + 1) * 20 >= pending[0][1] + 300:
                kind, ms = pending.pop(0)
                yield asr_pb2.ClientFrame(endpoint=asr_pb2.Endpoint(kind=kind, pts=ms * MS))

    events: list[tuple[float, asr_pb2.AsrEvent]] = []
    async with grpc.aio.insecure_channel(addr) as channel:
        try:
            async for event in asr_pb2_grpc.RecognizeStub(channel).Stream(frames()):
                events.append((time.monotonic(), event))
        except grpc.aio.AioRpcError as err:
            return {"refused": True, "why": err.code().name}
    partials = [(t, e) for t, e in events if e.type == "partial"]
    finals = [(t, e) for t, e in events if e.type == "final"]
    speech_at = sent_at.get(first_speech_seq)
    first = next((t for t, e in partials if e.ts[1] * 1000 > spans[0][0]), None)
    speech_end_sent = sent_at[min(spans[-1][1] // 20, len(packets) - 1)]
    return {
        "refused": any(e.type == "error" and e.code == "busy" for _, e in events),
        "first_partial_s": None if first is None or speech_at is None else first - speech_at,
        "final_lag_s": (finals[-1][0] - speech_end_sent) if finals else None,
        "hyp": " ".join(e.text for _, e in finals),
        "ref": ref,
        "partials": len(partials),
        "pre_speech_text": [e.text for _, e in partials + finals if e.ts[1] * 1000 <= spans[0][0] - 300],
    }


def metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def scrape(http: str) -> str:
    with urllib.request.urlopen(f"{http}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


async def bench(addr: str, http: str, n: int, vad: bool, lone: bool = False) -> None:
    """`n` sessions at once, or with `lone` the same `n` sessions one after the other."""
    before = await asyncio.to_thread(scrape, http)
    if lone:
        results = [await run_session(addr, i, vad) for i in range(n)]
    else:
        results = await asyncio.gather(*(run_session(addr, i, vad) for i in range(n)))
    after = await asyncio.to_thread(scrape, http)

    def delta(name: str) -> float:
        return metric(after, name) - metric(before, name)

    ok = [r for r in results if not r["refused"]]
    if os.environ.get("BENCH_SHOW_ERRORS"):
        for r in ok:
            if wer([str(r["ref"])], [str(r["hyp"])]) > 0:
                print(f"  ref {r['ref']!r}\n  hyp {r['hyp']!r}")
    firsts = [float(r["first_partial_s"]) for r in ok if r["first_partial_s"] is not None]  # type: ignore[arg-type]
    lags = [float(r["final_lag_s"]) for r in ok if r["final_lag_s"] is not None]  # type: ignore[arg-type]
    w = wer([str(r["ref"]) for r in ok], [str(r["hyp"]) for r in ok]) if ok else float("nan")
    pre = sum(len(r["pre_speech_text"]) for r in ok)  # type: ignore[arg-type]
    audio_s = delta("asr_audio_seconds_total")
    batched = delta("asr_batch_size_count")
    print(
        f"N={n:2d}{' lone' if lone else ''} vad={int(vad)} refused={n - len(ok)} no_partial={len(ok) - len(firsts)} "
        f"first_partial P50/P95 {pct(firsts, 0.5) * 1000:.0f}/{pct(firsts, 0.95) * 1000:.0f} ms  "
        f"final_lag P50/P95 {pct(lags, 0.5) * 1000:.0f}/{pct(lags, 0.95) * 1000:.0f} ms  WER {w:.3f}  "
        f"partials/session {statistics.mean(int(r['partials']) for r in ok) if ok else 0:.1f}  "  # type: ignore[call-overload]
        f"skipped {delta('asr_partials_skipped_total'):.0f}  reused_finals {delta('asr_finals_reused_total'):.0f}  "
        f"decode_s/audio_s {delta('asr_decode_seconds_total') / audio_s if audio_s else float('nan'):.3f}  "
        f"batch mean {delta('asr_batch_size_sum') / batched if batched else float('nan'):.2f}  "
        f"text_before_speech {pre}  load1 {os.getloadavg()[0]:.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", default="1,8,16")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the ASR process")
    parser.add_argument("--no-vad", action="store_true")
    parser.add_argument("--lone", type=int, default=0, help="first run this many sessions one at a time")
    args = parser.parse_args()
    env = {"ASR_ENGINE": "whisper", "ASR_MODEL": "tiny.en", "ASR_MAX_SESSIONS": "32", "ASR_QUEUE": "8"}
    env.update(kv.split("=", 1) for kv in args.env)
    print("env:", " ".join(f"{k}={v}" for k, v in sorted(env.items())), flush=True)
    service = launch("asr", env=env, timeout_s=120)
    try:
        if args.lone:
            asyncio.run(bench(service.grpc_addr, service.http_base, args.lone, not args.no_vad, lone=True))
        for n in (int(x) for x in args.sessions.split(",")):
            asyncio.run(bench(service.grpc_addr, service.http_base, n, not args.no_vad))
    finally:
        service.stop()  # also closes its stdout pipe


if __name__ == "__main__":
    main()
