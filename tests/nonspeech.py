"""A non-speech test set made with numpy, deterministic (seeded): what must never yield ASR text.

`NONSPEECH` maps a name to a function of the duration in seconds returning float32 mono 16 kHz audio
in [-1, 1]: digital silence, dither, mains hum, white / pink / brown noise at several levels, a
babble-like noise (speech-shaped noise with a syllable-rate envelope, no words in it), clicks, a
pure tone, a tone sweep and a music-like chord sequence.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SR = 16_000


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _level(x: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x)))) or 1.0
    return np.clip(x * (10 ** (dbfs / 20) / rms), -1.0, 1.0).astype(np.float32)


def _t(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * SR)) / SR


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


def dither(seconds: float) -> np.ndarray:
    return _level(_rng(1).standard_normal(int(seconds * SR)), -80)


def hum(seconds: float) -> np.ndarray:
    t = _t(seconds)
    return _level(sum(np.sin(2 * np.pi * 50 * k * t) / k for k in (1, 2, 3, 5)), -30)


def white(dbfs: float) -> Callable[[float], np.ndarray]:
    return lambda seconds: _level(_rng(2).standard_normal(int(seconds * SR)), dbfs)


def _coloured(seconds: float, exponent: float, seed: int) -> np.ndarray:
    n = int(seconds * SR)
    spectrum = np.fft.rfft(_rng(seed).standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1]
    return np.fft.irfft(spectrum / f ** (exponent / 2), n)


def pink(dbfs: float) -> Callable[[float], np.ndarray]:
    return lambda seconds: _level(_coloured(seconds, 1.0, 3), dbfs)


def brown(seconds: float) -> np.ndarray:
    return _level(_coloured(seconds, 2.0, 4), -30)


def babble(seconds: float) -> np.ndarray:
    """Speech-shaped noise (energy around 300-3000 Hz) with 4 Hz syllable-like bursts from 6 talkers."""
    n = int(seconds * SR)
    rng = _rng(5)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    shaped = np.fft.irfft(spectrum * np.exp(-(((np.log(f + 1) - np.log(800)) / 1.0) ** 2)), n)
    t = _t(seconds)
    envelope = sum(0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6.3)) for _ in range(6))
    return _level(shaped * envelope, -30)


def clicks(seconds: float) -> np.ndarray:
    x = np.zeros(int(seconds * SR))
    x[:: SR // 4] = 0.8  # four clicks a second
    return x.astype(np.float32)


def tone(seconds: float) -> np.ndarray:
    return _level(np.sin(2 * np.pi * 440 * _t(seconds)), -20)


def sweep(seconds: float) -> np.ndarray:
    t = _t(seconds)
    return _level(np.sin(2 * np.pi * (200 * t + (3000 - 200) * t**2 / (2 * seconds))), -20)


def chords(seconds: float) -> np.ndarray:
    """Major triads changing every 0.5 s, with a decaying envelope: music-like."""
    t = _t(seconds)
    out = np.zeros_like(t)
    roots = (220.0, 261.6, 196.0, 246.9)
    for i, start in enumerate(np.arange(0, seconds, 0.5)):
        seg = (t >= start) & (t < start + 0.5)
        tt = t[seg] - start
        root = roots[i % len(roots)]
        out[seg] = sum(np.sin(2 * np.pi * root * r * tt) for r in (1, 1.26, 1.5)) * np.exp(-3 * tt)
    return _level(out, -20)


NONSPEECH: dict[str, Callable[[float], np.ndarray]] = {
    "silence": silence,
    "dither_-80": dither,
    "hum_50hz": hum,
    "white_-50": white(-50),
    "white_-35": white(-35),
    "white_-20": white(-20),
    "pink_-40": pink(-40),
    "pink_-25": pink(-25),
    "brown_-30": brown,
    "babble_-30": babble,
    "clicks": clicks,
    "tone_440": tone,
    "sweep": sweep,
    "chords": chords,
}
