"""ASR figures for docs/services/asr.md: `python -m tests.perf.bench_asr [--latency]`.

- RTF per engine on one thread over the English pytest-audioeval clips (median of repeats);
- Opus encode/decode time per 20 ms frame; bytes per audio second, Opus 16/20/24 kbps VBR vs PCM;
- WER (tests.wer: jiwer, lowercase, punctuation stripped; raw and with 0-20 spelled) per engine,
  audio through Opus vs PCM;
- with --latency: first-partial latency through the real service, real-time pacing, measured from
  sending the packet that holds the first speech sample to the partial arriving.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import opuslib
import soundfile as sf

from services.asr.config import AsrConfig
from services.asr.engines import Engine, build_engine
from services.common.models import ModelMissing
from tests.wer import wer

CLIPS = Path(__import__("pytest_audioeval").__path__[0]) / "samples" / "audio" / "en"
FRAME = 320  # 20 ms at 16 kHz
ENGINES = (("whisper", "tiny.en"), ("whisper", "base"), ("sphinx", "en-us"))


def machine() -> str:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"nproc={os.cpu_count()} cpu={cpu!r} python={platform.python_version()}"


def english_clips() -> list[tuple[str, np.ndarray, str]]:
    out = []
    for wav in sorted(CLIPS.glob("*.wav")):
        audio, sr = sf.read(wav, dtype="float32")
        assert sr == 16000
        out.append((wav.stem, audio, wav.with_suffix(".txt").read_text().strip()))
    return out


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    return np.concatenate([pcm, np.zeros(-pcm.size % FRAME, "<i2")])


def encoder(bitrate: int, complexity: int = 5) -> opuslib.Encoder:
    enc = opuslib.Encoder(16000, 1, opuslib.APPLICATION_VOIP)
    enc.bitrate, enc.vbr, enc.complexity = bitrate, 1, complexity
    return enc


def frames(pcm: np.ndarray) -> Iterator[bytes]:
    for i in range(0, pcm.size, FRAME):
        yield pcm[i : i + FRAME].tobytes()


def opus_roundtrip(audio: np.ndarray, bitrate: int = 20000) -> np.ndarray:
    """The audio as the ASR service sees it over the Opus link."""
    enc, dec = encoder(bitrate), opuslib.Decoder(16000, 1)
    out = [np.frombuffer(dec.decode(enc.encode(f, FRAME), FRAME), "<i2") for f in frames(to_pcm16(audio))]
    return (np.concatenate(out).astype(np.float32) / 32768.0)[: audio.size]


def timed(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_opus(clips: list[tuple[str, np.ndarray, str]]) -> None:
    pcm = to_pcm16(np.concatenate([a for _, a, _ in clips]))
    seconds = pcm.size / 16000
    print(f"\n## Opus link ({seconds:.1f} s of English speech, 20 ms frames, VBR)")
    print(f"PCM16: {32000:.0f} B/s")
    for bitrate in (16000, 20000, 24000):
        for complexity in (5, 10):
            enc, dec = encoder(bitrate, complexity), opuslib.Decoder(16000, 1)
            enc_us, dec_us, size = [], [], 0
            for f in frames(pcm):
                t0 = time.perf_counter()
                packet = enc.encode(f, FRAME)
                t1 = time.perf_counter()
                dec.decode(packet, FRAME)
                dec_us.append((time.perf_counter() - t1) * 1e6)
                enc_us.append((t1 - t0) * 1e6)
                size += len(packet)
            print(
                f"opus {bitrate // 1000} kbps complexity {complexity}: {size / seconds:.0f} B/s "
                f"({32000 * seconds / size:.1f}x smaller than PCM), encode median "
                f"{statistics.median(enc_us):.0f} us, decode median {statistics.median(dec_us):.0f} us "
                "per 20 ms frame"
            )


def bench_engine(engine: Engine, clips: list[tuple[str, np.ndarray, str]], repeat: int) -> None:
    rtfs, refs, hyp_pcm, hyp_opus = [], [], [], []
    for name, audio, ref in clips:
        engine.transcribe(audio)  # warm
        seconds = timed(functools.partial(engine.transcribe, audio), repeat)
        rtfs.append(seconds / (audio.size / 16000))
        pcm_text = engine.transcribe(audio).text
        opus_text = engine.transcribe(opus_roundtrip(audio)).text
        refs.append(ref)
        hyp_pcm.append(pcm_text)
        hyp_opus.append(opus_text)
        print(f"  {name}: RTF {rtfs[-1]:.3f} ({seconds * 1000:.0f} ms) pcm={pcm_text!r} opus={opus_text!r}")
    wer_pcm, wer_opus = wer(refs, hyp_pcm, spell_numbers=False), wer(refs, hyp_opus, spell_numbers=False)
    print(
        f"{engine.model}: RTF median {statistics.median(rtfs):.3f} (1 thread); WER pcm {wer_pcm:.3f}, "
        f"opus 20 kbps {wer_opus:.3f} (delta {100 * (wer_opus - wer_pcm):+.1f} points); digits spelled: "
        f"pcm {wer(refs, hyp_pcm):.3f}, opus {wer(refs, hyp_opus):.3f}"
    )


def bench_engines(repeat: int) -> None:
    clips = english_clips()
    print(f"# bench_asr  {machine()}")
    bench_opus(clips)
    print("\n## Engines (English clips, one decode thread)")
    for engine_name, model in ENGINES:
        try:
            engine = build_engine(AsrConfig(engine=engine_name, model=model, cpu_threads=1))
        except ModelMissing as exc:
            print(f"{engine_name} {model}: skipped ({exc})")
            continue
        bench_engine(engine, clips, repeat)


async def stream_for_first_partial(addr: str, audio: np.ndarray, onset: int) -> float | None:
    """Stream one clip in real time; ms from sending the packet holding sample `onset` to the first
    partial (None if no partial came)."""
    import grpc

    from proto import asr_pb2, asr_pb2_grpc

    onset_seq = onset // FRAME
    sent_at: dict[int, float] = {}

    async def requests() -> AsyncIterator[asr_pb2.ClientFrame]:
        yield asr_pb2.ClientFrame(
            start=asr_pb2.Start(
                flow_id="bench", codec="opus", sr=16000, channels=1, frame_ms=20, bitrate=20000, vbr=True
            )
        )
        enc, t0 = encoder(20000), time.monotonic()
        for seq, frame in enumerate(frames(to_pcm16(audio))):
            await asyncio.sleep(max(0.0, t0 + seq * 0.02 - time.monotonic()))
            if seq == onset_seq:
                yield asr_pb2.ClientFrame(
                    endpoint=asr_pb2.Endpoint(kind=asr_pb2.Endpoint.SPEECH_START, pts=onset_seq * 20_000_000)
                )
            sent_at[seq] = time.monotonic()
            yield asr_pb2.ClientFrame(opus=asr_pb2.OpusPacket(data=enc.encode(frame, FRAME), seq=seq))

    first: float | None = None
    async with grpc.aio.insecure_channel(addr) as channel:
        async for event in asr_pb2_grpc.RecognizeStub(channel).Stream(requests()):
            if event.type == "partial" and first is None:
                first = (time.monotonic() - sent_at[onset_seq]) * 1000
    return first


async def first_partial_latencies(
    engine: str, model: str, clips: list[tuple[str, np.ndarray, str]], runs: int
) -> list[float]:
    from services.common.launcher import launch

    service = await asyncio.to_thread(launch, "asr", env={"ASR_ENGINE": engine, "ASR_MODEL": model})
    try:
        out = []
        for _ in range(runs):
            for _, audio, _ in clips:
                onset = int(np.flatnonzero(np.abs(audio) > 0.02)[0])
                latency = await stream_for_first_partial(service.grpc_addr, audio, onset)
                if latency is not None:
                    out.append(latency)
        return out
    finally:
        service.stop()
        if service.proc.stdout is not None:
            service.proc.stdout.close()


def bench_latency(runs: int) -> None:
    """First partial through the real service, per engine (SPEC §6)."""
    for engine_name, model in (("whisper", "tiny.en"), ("sphinx", "en-us")):
        values = asyncio.run(first_partial_latencies(engine_name, model, english_clips(), runs))
        values.sort()
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        print(
            f"{engine_name} {model}: first partial P50 {statistics.median(values):.0f} ms, "
            f"P95 {p95:.0f} ms (n={len(values)}, from the first speech packet sent)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency", action="store_true", help="also measure first-partial latency")
    parser.add_argument("--runs", type=int, default=3, help="latency runs per clip")
    args = parser.parse_args()
    bench_engines(args.repeat)
    if args.latency:
        print("\n## First partial through the service (real-time pacing, loopback)")
        bench_latency(args.runs)
    print(f"\nload average after run: {subprocess.run(['uptime'], capture_output=True, text=True).stdout}")


if __name__ == "__main__":
    main()
