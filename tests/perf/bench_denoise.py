"""Denoise benchmark (SPEC §4, issue 5): `python -m tests.perf.bench_denoise [--seeds N] [--no-wer]`.

Prints, per engine: the cost per 20 ms frame (median over streamed clips, one thread), the SNR gain on
the English pytest-audioeval clips mixed with white and babble-like noise at 0/5/10 dB (SNR against the
clean clip after aligning for the engine's delay), and the WER of faster-whisper tiny.en (int8,
cpu_threads=1) on the noisy clips with and without denoise. Figures go to docs/services/denoise.md."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from common.models import package_dir, whisper_tiny_en_dir
from services.denoise.core import DenoiseStream, FrameIn, float_to_pcm16, pcm16_to_float
from services.denoise.engines import ENGINES, Engine, make_engine
from services.denoise.prepare import ensure_gtcrn_onnx
from tests.wer import wer

SR = 16_000
FRAME = 320
LEVELS_DB = (0, 5, 10)
NOISES = ("white", "babble")
BABBLE_CLIPS = ("es/pangrama", "fr/pangrama", "it/pangrama", "pl/pangrama", "pt/pangrama", "hi/pangrama")


def clips_dir() -> Path:
    return package_dir("pytest_audioeval") / "samples" / "audio"


def load(path: Path) -> np.ndarray:
    audio, sr = sf.read(path, dtype="float32")
    assert sr == SR and audio.ndim == 1, path
    return audio


def babble(n: int, rng: np.random.Generator) -> np.ndarray:
    """Six voices of other languages, equal level, looped from random offsets, summed."""
    out = np.zeros(n)
    for name in BABBLE_CLIPS:
        voice = load(clips_dir() / f"{name}.wav").astype(np.float64)
        voice /= np.sqrt(np.mean(voice**2))
        start = int(rng.integers(0, voice.size))
        out += np.resize(np.roll(voice, -start), n)
    return out


def mix(clean: np.ndarray, kind: str, snr_db: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, clean.size) if kind == "white" else babble(clean.size, rng)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return np.clip(clean + noise, -1, 1).astype(np.float32)


def denoise(
    engine: Engine, audio: np.ndarray, costs: list[float] | None = None, lags: list[int] | None = None
) -> np.ndarray:
    """Stream `audio` in 20 ms frames through the service core; optionally record the cost per frame
    and the input held back after each frame (the algorithmic delay, in samples)."""
    stream = DenoiseStream(engine, FRAME)
    pcm = float_to_pcm16(audio)
    out: list[bytes] = []
    for pos in range(0, len(pcm), 2 * FRAME):
        frame = FrameIn("bench", 0, SR, 1, 0, pcm[pos : pos + 2 * FRAME])
        t0 = time.perf_counter()
        got = stream.push(frame)
        if costs is not None:
            costs.append((time.perf_counter() - t0) * 1000.0)
        if lags is not None and pos >= 8 * FRAME and len(frame.pcm) == 2 * FRAME:  # steady state
            lags.append(stream.samples_in - stream.samples_out)
        out += [o.pcm for o in got]
    out += [o.pcm for o in stream.finish()]
    return pcm16_to_float(b"".join(out))


def best_lag(out: np.ndarray, clean: np.ndarray, max_lag: int = 800) -> int:
    corr = np.correlate(out, np.pad(clean, max_lag), mode="valid")  # lags -max_lag..+max_lag
    return int(np.argmax(corr)) - max_lag


def snr_db(estimate: np.ndarray, clean: np.ndarray) -> float:
    lag = best_lag(estimate, clean)
    est = np.roll(estimate.astype(np.float64), -lag)
    return float(10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum((est - clean) ** 2)))


def whisper() -> Callable[[np.ndarray], str]:
    import ctranslate2
    from faster_whisper import WhisperModel

    # Default temperature fallback (as an ASR service runs it); its sampler is seeded once, so a
    # run of the benchmark repeats exactly (the same calls in the same order).
    ctranslate2.set_random_seed(0)
    model = WhisperModel(str(whisper_tiny_en_dir()), device="cpu", compute_type="int8", cpu_threads=1)

    def transcribe(audio: np.ndarray) -> str:
        segments, _ = model.transcribe(audio, language="en", condition_on_previous_text=False)
        return " ".join(s.text for s in segments)

    return transcribe


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3, help="noise draws per clip and level")
    parser.add_argument("--no-wer", action="store_true", help="skip the Whisper runs")
    args = parser.parse_args()
    en = sorted((clips_dir() / "en").glob("*.wav"))
    clean = {p.stem: load(p) for p in en}
    refs = {p.stem: p.with_suffix(".txt").read_text().strip() for p in en}
    engines = {name: make_engine(name, ensure_gtcrn_onnx() if name == "gtcrn" else None) for name in ENGINES}

    print("## cost per 20 ms frame (DenoiseStream.push, 1 thread, median / p95 over all frames)")
    print("## delay: input held back after each 20 ms frame (20 ms output framing included)")
    for name, engine in engines.items():
        costs: list[float] = []
        lags: list[int] = []
        for audio in clean.values():
            for _ in range(3):
                denoise(engine, audio, costs, lags)
        p95 = float(np.percentile(costs, 95))
        print(
            f"{name:8s} median {median(costs):.3f} ms  p95 {p95:.3f} ms  ({len(costs)} frames); "
            f"delay median {median(lags) / 16:.1f} ms, max {max(lags) / 16:.1f} ms"
        )

    conditions = ["off", *engines]
    outputs: dict[tuple[str, int, str, str, int], np.ndarray] = {}
    gains: dict[tuple[str, int, str], list[float]] = {}
    for kind in NOISES:
        for level in LEVELS_DB:
            for stem, audio in clean.items():
                for seed in range(args.seeds):
                    noisy = mix(audio, kind, level, seed)
                    outputs[(kind, level, stem, "off", seed)] = noisy
                    snr_in = snr_db(noisy, audio)
                    for name, engine in engines.items():
                        out = denoise(engine, noisy)
                        assert out.size == noisy.size
                        outputs[(kind, level, stem, name, seed)] = out
                        gains.setdefault((kind, level, name), []).append(snr_db(out, audio) - snr_in)
    print("\n## SNR gain (dB, median over clips x seeds; SNR vs the clean clip after delay alignment)")
    print("noise   level  " + "  ".join(f"{n:>8s}" for n in engines))
    for kind in NOISES:
        for level in LEVELS_DB:
            row = "  ".join(f"{median(gains[(kind, level, n)]):8.2f}" for n in engines)
            print(f"{kind:7s} {level:3d} dB  {row}")

    if args.no_wer:
        return
    transcribe = whisper()
    print("\n## WER (faster-whisper tiny.en int8, cpu_threads=1; corpus WER over clips x seeds)")
    clean_wer = wer([refs[s] for s in clean], [transcribe(a) for a in clean.values()])
    print(f"clean clips: WER {clean_wer:.3f}")
    print("noise   level  " + "  ".join(f"{c:>8s}" for c in conditions))
    totals: dict[str, tuple[list[str], list[str]]] = {c: ([], []) for c in conditions}
    for kind in NOISES:
        for level in LEVELS_DB:
            cells = []
            for cond in conditions:
                ref, hyp = [], []
                for stem in clean:
                    for seed in range(args.seeds):
                        ref.append(refs[stem])
                        hyp.append(transcribe(outputs[(kind, level, stem, cond, seed)]))
                totals[cond][0].extend(ref)
                totals[cond][1].extend(hyp)
                cells.append(f"{wer(ref, hyp):8.3f}")
            print(f"{kind:7s} {level:3d} dB  " + "  ".join(cells))
    overall = "  ".join(f"{wer(*totals[c]):8.3f}" for c in conditions)
    print(f"all            {overall}")


if __name__ == "__main__":
    main()
