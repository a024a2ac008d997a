"""Measures the VAD core: `python -m tests.perf.bench_vad [CLIPS_DIR]` prints JSON figures.

- cost: wall time of `VadSession.process` per 20 ms message (median, p95), one thread.
- accuracy: each clip gets 0.5 s of leading and 1.0 s of trailing white noise at -60 dBFS; the
  reference speech span is where the clip's 10 ms RMS is within 40 dB of its loudest 10 ms frame.
  Reported: SPEECH_START / SPEECH_END pts minus the reference (medians), the delay from the
  reference start (end) to the end of the message on which SPEECH_START (END) was emitted, and
  segment counts; once more with the noise at -35 dBFS.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from common.envconf import load_env
from proto import common_pb2
from services.vad.config import SAMPLE_RATE, VadConfig
from services.vad.core import VadSession
from services.vad.detector import make_detector

FRAME = SAMPLE_RATE // 50  # 20 ms
LEAD_S, TAIL_S, NOISE_DBFS = 0.5, 1.0, -60.0


def default_clips_dir() -> Path:
    import pytest_audioeval

    return Path(next(iter(pytest_audioeval.__path__))) / "samples" / "audio"


def speech_span(x: np.ndarray) -> tuple[float, float]:
    """Reference speech start/end in seconds: 10 ms RMS within 40 dB of the loudest frame."""
    hop = SAMPLE_RATE // 100
    frames = x[: x.size // hop * hop].reshape(-1, hop)
    db = 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) + 1e-9)
    on = np.flatnonzero(db > db.max() - 40)
    return on[0] * 0.01, (on[-1] + 1) * 0.01


def to_pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes()


def run(config: VadConfig, pcm: bytes, frame_samples: int = FRAME) -> tuple[list[common_pb2.AudioFrame], list[float]]:
    """Stream `pcm` in messages of `frame_samples`; return output frames and per-message seconds."""
    session = VadSession(config, lambda: make_detector(config))
    out: list[common_pb2.AudioFrame] = []
    costs: list[float] = []
    step = frame_samples * 2
    for seq, i in enumerate(range(0, len(pcm), step)):
        chunk = pcm[i : i + step]
        msg = common_pb2.AudioFrame(
            flow_id="bench",
            seq=seq,
            sr=SAMPLE_RATE,
            channels=1,
            pts=i // 2 * 62_500,
            ns=len(chunk) // 2 * 62_500,
            pcm=chunk,
            last=i + step >= len(pcm),
        )
        t0 = time.perf_counter()
        out.extend(session.process(msg))
        costs.append(time.perf_counter() - t0)
    return out, costs


def accuracy(config: VadConfig, clips: Path, noise_dbfs: float = NOISE_DBFS) -> dict[str, object]:
    rng = np.random.default_rng(0)
    noise_amp = 10 ** (noise_dbfs / 20) * np.sqrt(3)  # uniform noise with that RMS
    start_err, end_err, delay, end_delay, counts = [], [], [], [], []
    for wav in sorted(clips.glob("*/*.wav")):
        x, sr = sf.read(wav, dtype="float32")
        assert sr == SAMPLE_RATE
        ref0, ref1 = speech_span(x)
        padded = np.concatenate([np.zeros(int(LEAD_S * sr)), x, np.zeros(int(TAIL_S * sr))])
        padded = padded + rng.uniform(-noise_amp, noise_amp, padded.size)
        out, _ = run(config, to_pcm16(padded))
        bounds = [f for f in out if f.activity]
        counts.append(sum(1 for f in bounds if f.activity == common_pb2.SPEECH_START))
        if not bounds:
            continue
        first = bounds[0].pts / 1e9 - LEAD_S
        last = bounds[-1].pts / 1e9 - LEAD_S
        start_err.append(first - ref0)
        end_err.append(last - ref1)
        delay.append((bounds[0].seq + 1) * FRAME / sr - LEAD_S - ref0)
        end_delay.append((bounds[-1].seq + 1) * FRAME / sr - LEAD_S - ref1)
    return {
        "clips": len(counts),
        "clips_with_one_segment": sum(1 for c in counts if c == 1),
        "segments_median": statistics.median(counts),
        "start_error_ms_median": round(1000 * statistics.median(start_err), 1),
        "start_abs_error_ms_median": round(1000 * statistics.median(map(abs, start_err)), 1),
        "end_error_ms_median": round(1000 * statistics.median(end_err), 1),
        "end_abs_error_ms_median": round(1000 * statistics.median(map(abs, end_err)), 1),
        "start_emit_delay_ms_median": round(1000 * statistics.median(delay), 1),
        "end_emit_delay_ms_median": round(1000 * statistics.median(end_delay), 1),
    }


def cost(config: VadConfig, clips: Path) -> dict[str, object]:
    audio = np.concatenate([sf.read(w, dtype="float32")[0] for w in sorted(clips.glob("*/*.wav"))])
    _, costs = run(config, to_pcm16(audio))
    costs_us = sorted(c * 1e6 for c in costs[1:])  # the first message builds the detector
    return {
        "messages": len(costs_us),
        "per_20ms_frame_us_median": round(statistics.median(costs_us), 1),
        "per_20ms_frame_us_p95": round(costs_us[int(0.95 * len(costs_us))], 1),
    }


def detector_footprint(config: VadConfig, n: int = 10) -> dict[str, object]:
    """Median build time of a detector and the peak-RSS growth per detector over `n` of them."""
    make_detector(config)  # first load maps the library and model once
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    keep, times = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        keep.append(make_detector(config))
        times.append(time.perf_counter() - t0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "detector_create_ms_median": round(1000 * statistics.median(times), 1),
        "detector_rss_mb_each": round((rss1 - rss0) / 1024 / n, 1),
    }


def main(argv: list[str]) -> int:
    clips = Path(argv[1]) if len(argv) > 1 else default_clips_dir()
    config = load_env(VadConfig)
    result: dict[str, object] = {"config": dataclasses.asdict(config)}
    result.update(detector_footprint(config))
    result.update(cost(config, clips))
    result["quiet"] = accuracy(config, clips)
    result["noisy_-35dBFS"] = accuracy(config, clips, noise_dbfs=-35.0)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
