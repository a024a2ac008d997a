"""The non-speech set that must never yield ASR text, as float32 mono 16 kHz audio in [-1, 1]:
digital silence, dither, mains hum, white / pink / brown noise at several levels, babble-like noise
(speech-shaped, syllable-rate bursts, no words), clicks, a pure tone, a sweep and music-like chords.
Every sound is `tests.corpus.noise` (seeded), the generator the benchmarks' corpus uses too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tests.corpus import SR, noise

# name -> (kind, RMS level in dBFS, seed)
_SET = {
    "silence": ("silence", -120.0, 0),
    "dither_-80": ("white", -80.0, 1),
    "hum_50hz": ("hum", -30.0, 0),
    "white_-50": ("white", -50.0, 2),
    "white_-35": ("white", -35.0, 2),
    "white_-20": ("white", -20.0, 2),
    "pink_-40": ("pink", -40.0, 3),
    "pink_-25": ("pink", -25.0, 3),
    "brown_-30": ("brown", -30.0, 4),
    "babble_-30": ("babble", -30.0, 5),
    "clicks": ("clicks", -30.0, 6),
    "tone_440": ("tone440", -20.0, 0),
    "sweep": ("sweep", -20.0, 0),
    "chords": ("chords", -20.0, 0),
}


def _sound(kind: str, level_dbfs: float, seed: int) -> Callable[[float], np.ndarray]:
    return lambda seconds: np.clip(noise(kind, int(seconds * SR), level_dbfs, seed), -1.0, 1.0)


NONSPEECH: dict[str, Callable[[float], np.ndarray]] = {name: _sound(*spec) for name, spec in _SET.items()}
