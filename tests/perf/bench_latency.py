"""First-partial latency through the whole stack (SPEC §6), per ASR engine (make bench).

Each English clip is streamed in real time through the real gateway, VAD and ASR. The first speech
sample is known from the clip itself (the first 10 ms window within 30 dB of the clip's peak); the
latency is the arrival of the first `asr_partial` at the client minus the moment that sample was
sent. Also printed: final latency after the end of audio, and RTF is left to bench_asr.

    python -m tests.perf.bench_latency [--runs 3] [--engines whisper,sphinx]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from common.models import package_dir
from devtools.client import stream_pcm
from devtools.stack import DEFAULT_SERVICES, Stack
from speechgw_client import load_audio
from tests.wer import wer

_TINY = {"ASR_ENGINE": "whisper", "ASR_MODEL": "tiny.en"}
ENGINES = {
    "whisper-tiny.en": _TINY,
    # Whisper's 30 s encoder window vs a 10 s one (services/asr/window.py), whatever the defaults are
    "whisper-tiny.en-w0": {**_TINY, "ASR_WINDOW_S": "0", "ASR_FINAL_WINDOW_S": "0"},
    "whisper-tiny.en-w10": {**_TINY, "ASR_WINDOW_S": "10", "ASR_FINAL_WINDOW_S": "10"},
    "sphinx": {"ASR_ENGINE": "sphinx"},
    # With --with-lid: the ASR waits for the language instead of streaming to the provisional pool
    "whisper-tiny.en-wait-lid": {**_TINY, "ASR_PROVISIONAL": "false"},
}


def first_speech_s(pcm: bytes, window_s: float = 0.01, below_peak_db: float = 30.0) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    win = int(16000 * window_s)
    frames = x[: len(x) // win * win].reshape(-1, win)
    rms = np.sqrt((frames**2).mean(axis=1)) + 1e-9
    db = 20 * np.log10(rms / rms.max())
    return float(np.argmax(db > -below_peak_db) * window_s)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_engine(name: str, env: dict[str, str], runs: int, lid: bool = False) -> dict[str, object]:
    clips = package_dir("pytest_audioeval") / "samples" / "audio" / "en"
    work = tempfile.mkdtemp(prefix="bench-latency-")
    base = {"LOG_LEVEL": "WARNING", **env}
    first, final, refs, hyps = [], [], [], []
    # With LID the ASR waits for the language (SPEC §4) before it hears the held audio: the default
    # stack of `make run` (two pools); without, one pool and no wait, as with `hints.user_lang_pref`.
    services = DEFAULT_SERVICES if lid else ("vad", "asr", "compress")
    with Stack(services, env=base, workdir=Path(work)) as stack:
        for _ in range(runs):
            for wav in sorted(clips.glob("*.wav")):
                pcm = load_audio(wav)
                speech_at = first_speech_s(pcm)
                result = asyncio.run(stream_pcm(stack.url, pcm, speed=1.0, start={"return": ["asr"]}))
                t0 = result.first_audio_at or 0.0
                times = dict(zip([id(e) for e in result.events], result.received_at, strict=True))
                partials = result.of_type("asr_partial")
                if partials:
                    first.append((times[id(partials[0])] - t0 - speech_at) * 1000)
                finals = result.of_type("asr_final")
                if finals:
                    final.append((times[id(finals[-1])] - t0 - len(pcm) / 32000) * 1000)
                refs.append(wav.with_suffix(".txt").read_text())
                hyps.append(" ".join(e["text"] for e in finals))
    return {
        "engine": name + (" + LID routing (make run stack)" if lid else ""),
        "sessions": len(refs),
        "first_partial_ms_p50": round(percentile(first, 50), 1),
        "first_partial_ms_p95": round(percentile(first, 95), 1),
        "sessions_with_partial": len(first),
        "final_after_audio_end_ms_p50": round(percentile(final, 50), 1),
        "wer": round(wer(refs, hyps), 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--with-lid", action="store_true", help="the default two-pool stack with LID routing")
    p.add_argument("--engines", default="whisper-tiny.en,sphinx", help=f"any of {','.join(ENGINES)}")
    args = p.parse_args(argv)
    print(
        f"# first partial from the first speech sample, through gateway+VAD+ASR, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}",
        flush=True,
    )
    for name in args.engines.split(","):
        print(json.dumps(run_engine(name, ENGINES[name], args.runs, args.with_lid)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
