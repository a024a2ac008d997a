"""Real denoise engines through the core: length contract, alignment, delay bound, noise reduction
(SPEC §4). The GTCRN model is the one `python -m services.denoise.prepare` writes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from services.denoise.core import DenoiseStream, FrameIn, check_frame, pcm16_to_float
from services.denoise.engines import Engine, make_engine
from services.denoise.prepare import GTCRN_META, ensure_gtcrn_onnx, prepare_gtcrn

pytestmark = pytest.mark.unit

# Documented bound (docs/services/denoise.md) of input held back, with 20 ms frames in and out.
MAX_LAG_SAMPLES = {"gtcrn": 640, "rnnoise": 960}


@pytest.fixture(scope="module", params=["gtcrn", "rnnoise"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    yield make_engine(request.param, ensure_gtcrn_onnx() if request.param == "gtcrn" else None)


def stream_through(engine: Engine, pcm: bytes, sizes: list[int]) -> tuple[bytes, int]:
    """Denoise `pcm` split as `sizes`; returns the output and the largest input-output gap seen."""
    stream = DenoiseStream(engine)
    out: list[bytes] = []
    lag = 0
    pos = 0
    for size in sizes:
        f = FrameIn("f", 0, 16_000, 1, 0, pcm[pos : pos + size])
        check_frame(f)
        out += [o.pcm for o in stream.push(f)]
        lag = max(lag, stream.samples_in - stream.samples_out)
        pos += size
    assert pos == len(pcm)
    finals = stream.finish()
    assert finals[-1].last
    return b"".join(out + [o.pcm for o in finals]), lag


def frames_20ms(n_bytes: int) -> list[int]:
    return [min(640, n_bytes - pos) for pos in range(0, n_bytes, 640)]


def to_pcm(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.mark.parametrize("seed", range(3))
def test_output_length_equals_input_for_random_splits(engine: Engine, seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 24_000)
    pcm = to_pcm(np.random.default_rng(seed).normal(0, 0.1, n))
    sizes = []
    left = len(pcm)
    while left:
        sizes.append(min(left, 2 * rng.randint(0, 2000)))
        left -= sizes[-1]
    out, _ = stream_through(engine, pcm, sizes)
    assert len(out) == len(pcm)


def test_speech_stays_aligned_and_delay_is_bounded(engine: Engine, clips: Path) -> None:
    clean, sr = sf.read(clips / "en" / "counting.wav", dtype="float32")
    assert sr == 16_000
    pcm = to_pcm(clean)
    out, lag = stream_through(engine, pcm, frames_20ms(len(pcm)))
    y, x = pcm16_to_float(out), pcm16_to_float(pcm)
    lags = range(-400, 401)
    corr = [float(np.dot(y[max(k, 0) : len(y) + min(k, 0)], x[max(-k, 0) : len(x) - max(k, 0)])) for k in lags]
    assert lags[int(np.argmax(corr))] == 0  # output sample n is input sample n, denoised
    assert lag <= MAX_LAG_SAMPLES[engine.name]


def test_white_noise_power_drops_substantially(engine: Engine) -> None:
    noise = np.random.default_rng(7).normal(0, 0.05, 32_000)
    pcm = to_pcm(noise)
    out, _ = stream_through(engine, pcm, frames_20ms(len(pcm)))
    y = pcm16_to_float(out)[16_000:]  # after the engine has adapted
    x = pcm16_to_float(pcm)[16_000:]
    gain_db = 10 * np.log10(np.mean(y**2) / np.mean(x**2) + 1e-12)
    assert gain_db < -20.0, f"{engine.name} reduced white noise by only {-gain_db:.1f} dB"


def test_prepare_is_idempotent_and_writes_sherpa_metadata(tmp_path: Path) -> None:
    import onnx

    first = prepare_gtcrn(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert prepare_gtcrn(tmp_path) == first
    assert first.stat().st_mtime_ns == stamp  # untouched the second time
    meta = {p.key: p.value for p in onnx.load(str(first)).metadata_props}
    assert {k: meta[k] for k in GTCRN_META} == GTCRN_META
