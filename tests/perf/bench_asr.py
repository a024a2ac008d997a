"""ASR figures for docs/services/asr.md: `python -m tests.perf.bench_asr [--latency]`.

- RTF per engine on one thread over the English pytest-audioeval clips (median of repeats);
- Opus encode/decode time per 20 ms frame; bytes per audio second, Opus 16/20/24 kbps VBR vs PCM;
- WER (tests.wer: jiwer, lowercase, punctuation stripped; raw and with 0-20 spelled) per engine,
  audio through Opus vs PCM;
- with --latency: first-partial latency through the real service, real-time pacing, measured from
  sending the packet that holds the first speech sample to the partial arriving.
- with --window 0,10,5: each whisper figure per encoder window (ASR_WINDOW_S, 0 = Whisper's 30 s);
  with --multilingual: whisper base on the clips of every language (language given, and detected),
  WER, or CER for zh/ja (characters without spaces and punctuation).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import re
import statistics
import subprocess
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import jiwer
import numpy as np
import opuslib
import soundfile as sf

from common.models import ModelMissing
from services.asr.config import AsrConfig
from services.asr.engines import Engine, build_engine
from tests.wer import wer

AUDIO = Path(__import__("pytest_audioeval").__path__[0]) / "samples" / "audio"
CLIPS = AUDIO / "en"
CER_LANGS = ("zh", "ja")  # no spaces between words: character error rate
FRAME = 320  # 20 ms at 16 kHz
ENGINES = (("whisper", "tiny.en"), ("whisper", "base"), ("sphinx", "en-us"))


def machine() -> str:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"nproc={os.cpu_count()} cpu={cpu!r} python={platform.python_version()}"


def english_clips(folder: Path = CLIPS) -> list[tuple[str, np.ndarray, str]]:
    out = []
    for wav in sorted(folder.glob("*.wav")):
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


def window_stats(engine: Engine) -> str:
    decodes, fallbacks = getattr(engine, "windowed_decodes", 0), getattr(engine, "window_fallbacks", 0)
    return f"windowed decodes {decodes}, fell back to 30 s {fallbacks}"


# Counting clips: Whisper writes digits; the reference's own words for 1..10 spell them back.
COUNTING = ("counting", "conteo", "comptage", "ginti", "conteggio", "kazoeru", "liczenie", "contagem", "jishu")


def units(lang: str, text: str) -> list[str]:
    """Lowercase words without punctuation (Unicode categories P*/S*; Devanagari vowel signs are
    not \\w), or for zh/ja the characters."""
    kept = "".join(" " if unicodedata.category(c)[0] in "PSZ" else c for c in text.lower())
    return list(kept.replace(" ", "")) if lang in CER_LANGS else kept.split()


def spell_digits(lang: str, text: str, numbers: list[str]) -> str:
    """1..10 written as digits -> the counting reference's words (characters for zh/ja)."""
    sep = "" if lang in CER_LANGS else " "
    return re.sub(r"10|[1-9]", lambda m: sep + numbers[int(m.group()) - 1] + sep, text)


def errors(lang: str, refs: list[str], hyps: list[str], numbers: list[str]) -> tuple[int, int]:
    """(edit errors, reference words) for WER, or characters for zh/ja (CER)."""
    ref_units = [units(lang, r) for r in refs]
    hyp_units = [units(lang, spell_digits(lang, h, numbers)) or ["<empty>"] for h in hyps]
    out = jiwer.process_words([" ".join(r) for r in ref_units], [" ".join(h) for h in hyp_units])
    return out.substitutions + out.deletions + out.insertions, sum(len(r) for r in ref_units)


def bench_multilingual(engine: Engine, repeat: int) -> None:
    """Every language's clips: RTF, error rate with the language given, and language detection.
    WER per language (CER for zh/ja); pooled over all non-English clips."""
    rtfs, detected_ok, total = [], 0, 0
    pooled = {"WER": [0, 0, 0], "CER": [0, 0, 0]}  # errors given, errors detected, reference units
    for folder in sorted(p for p in AUDIO.iterdir() if p.is_dir()):
        lang, refs, hyps, auto_hyps, numbers = folder.name, [], [], [], []
        for name, audio, ref in english_clips(folder):
            engine.transcribe(audio, lang)  # warm
            seconds = timed(functools.partial(engine.transcribe, audio, lang), repeat)
            rtfs.append(seconds / (audio.size / 16000))
            hyps.append(engine.transcribe(audio, lang).text)
            auto = engine.transcribe(audio, "auto")
            auto_hyps.append(auto.text)
            refs.append(ref)
            if name in COUNTING:
                numbers = units(lang, ref)
            detected_ok += auto.lang == lang
            total += 1
            print(f"  {lang}/{name}: RTF {rtfs[-1]:.3f} given={hyps[-1]!r} detected={auto.lang} {auto.text!r}")
        kind = "CER" if lang in CER_LANGS else "WER"
        (given, n), (detected, _) = errors(lang, refs, hyps, numbers), errors(lang, refs, auto_hyps, numbers)
        if lang != "en":
            pooled[kind] = [pooled[kind][0] + given, pooled[kind][1] + detected, pooled[kind][2] + n]
        print(f"  {lang}: {kind} language given {given / n:.3f}, detected {detected / n:.3f} ({n} units)")
    for kind, (given, detected, n) in pooled.items():
        print(f"  pooled non-English {kind}: language given {given / n:.3f}, detected {detected / n:.3f} ({n} units)")
    print(
        f"{engine.model} multilingual: RTF median {statistics.median(rtfs):.3f} over {total} clips; "
        f"language detected right {detected_ok}/{total}; {window_stats(engine)}"
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
        f"pcm {wer(refs, hyp_pcm):.3f}, opus {wer(refs, hyp_opus):.3f}; {window_stats(engine)}"
    )


def bench_engines(
    repeat: int, windows: list[float], multilingual: bool, opus: bool, engines: tuple[tuple[str, str], ...]
) -> None:
    clips = english_clips()
    print(f"# bench_asr  {machine()}")
    if opus:
        bench_opus(clips)
    print("\n## Engines (English clips, one decode thread)")
    for engine_name, model in engines:
        for window_s in windows if engine_name == "whisper" else [0.0]:
            config = AsrConfig(
                engine=engine_name, model=model, cpu_threads=1, partial_window_s=window_s, final_window_s=window_s
            )
            try:
                engine = build_engine(config)
            except ModelMissing as exc:
                print(f"{engine_name} {model}: skipped ({exc})")
                break
            print(f"{engine.model}, window {window_s:g} s (0 = 30 s):")
            bench_engine(engine, clips, repeat)
            if multilingual and model == "base":
                bench_multilingual(engine, repeat)


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
    engine: str, model: str, clips: list[tuple[str, np.ndarray, str]], runs: int, window_s: float = 0.0
) -> list[float]:
    from devtools.launcher import launch

    env = {"ASR_ENGINE": engine, "ASR_MODEL": model, "ASR_WINDOW_S": str(window_s), "LOG_LEVEL": "WARNING"}
    service = await asyncio.to_thread(launch, "asr", env=env)
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
        service.stop()  # also closes its stdout pipe


def bench_latency(runs: int, windows: list[float]) -> None:
    """First partial through the real service, per engine (SPEC §6)."""
    runs_of = [("whisper", "tiny.en", w) for w in windows] + [("sphinx", "en-us", 0.0)]
    for engine_name, model, window_s in runs_of:
        values = asyncio.run(first_partial_latencies(engine_name, model, english_clips(), runs, window_s))
        values.sort()
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        print(
            f"{engine_name} {model} window {window_s:g} s: first partial P50 {statistics.median(values):.0f} ms, "
            f"P95 {p95:.0f} ms (n={len(values)}, from the first speech packet sent)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency", action="store_true", help="also measure first-partial latency")
    parser.add_argument("--runs", type=int, default=3, help="latency runs per clip")
    parser.add_argument("--window", default="0", help="whisper encoder windows in s, e.g. 0,10,5 (0 = 30 s)")
    parser.add_argument("--multilingual", action="store_true", help="whisper base on every language's clips")
    parser.add_argument("--no-opus", action="store_true", help="skip the Opus link figures")
    parser.add_argument("--engines", default="", help="e.g. whisper:tiny.en,whisper:base (default: all)")
    args = parser.parse_args()
    windows = [float(w) for w in args.window.split(",")]
    engines: tuple[tuple[str, str], ...] = ENGINES
    if args.engines:
        pairs = [e.partition(":") for e in args.engines.split(",")]
        engines = tuple((name, model) for name, _, model in pairs)
    bench_engines(args.repeat, windows, args.multilingual, not args.no_opus, engines)
    if args.latency:
        print("\n## First partial through the service (real-time pacing, loopback)")
        bench_latency(args.runs, windows)
    print(f"\nload average after run: {subprocess.run(['uptime'], capture_output=True, text=True).stdout}")


if __name__ == "__main__":
    main()
