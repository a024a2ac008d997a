"""Hallucination guards, sans-I/O: decide whether a decoded text may be sent (issue 9 item 1).

Whisper writes fluent text over silence, hum and noise ("I am a man who is a man ..." from 4 s of
digital silence). Every decode, partial or final, of every engine passes through `check` before its
text goes out; a refused text is replaced by "" (no event) and counted by reason.

Guards, each with its environment variable (defaults in `GuardConfig`; docs/services/asr.md):
- `silence`: the audio's RMS is below `ASR_GUARD_MIN_RMS_DBFS` (checked before any decode: nothing
  to hear, nothing decoded);
- `no_speech`: Whisper's no-speech probability above `ASR_GUARD_NO_SPEECH_PROB`;
- `logprob`: average token log-probability below `ASR_GUARD_MIN_AVG_LOGPROB`;
- `compression`: gzip compression ratio of the text above `ASR_GUARD_MAX_COMPRESSION_RATIO`;
- `repeats`: a word n-gram (n = 1..4) repeated more than `ASR_GUARD_MAX_NGRAM_REPEATS` times in a row;
- `rate`: more characters per second of audio than `ASR_GUARD_MAX_CHARS_PER_S` (speech rarely
  exceeds ~20; minimum audio 1 s in the division, so one short word on a short clip passes).

Scores an engine does not have (pocketsphinx: no no-speech probability) are `None` and skip their
guard. A text of only punctuation is empty.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

import numpy as np

from common.envconf import ConfigError, setting

_WORD = re.compile(r"[\w']+", re.UNICODE)


@dataclass(frozen=True)
class GuardConfig:
    """Thresholds; the ASR config nests it with the prefix `ASR_GUARD_`."""

    min_rms_dbfs: float = setting(-60.0, env="MIN_RMS_DBFS")
    no_speech_prob: float = setting(0.6, env="NO_SPEECH_PROB")
    min_avg_logprob: float = setting(-1.5, env="MIN_AVG_LOGPROB")
    max_compression_ratio: float = setting(2.4, env="MAX_COMPRESSION_RATIO")
    max_ngram_repeats: int = setting(3, env="MAX_NGRAM_REPEATS")
    max_chars_per_s: float = setting(25.0, env="MAX_CHARS_PER_S")

    def __post_init__(self) -> None:
        if not 0.0 < self.no_speech_prob <= 1.0:
            raise ConfigError(f"ASR_GUARD_NO_SPEECH_PROB={self.no_speech_prob}: expected (0, 1]")
        if self.max_compression_ratio <= 1.0 or self.max_chars_per_s <= 0 or self.max_ngram_repeats < 1:
            raise ConfigError("ASR_GUARD_MAX_*: compression ratio > 1, chars per second > 0, repeats >= 1")


@dataclass(frozen=True)
class Scores:
    """What the engine knows about one decode; `None` where it has no such score."""

    no_speech_prob: float | None = None
    avg_logprob: float | None = None


def rms_dbfs(pcm: np.ndarray) -> float:
    """RMS level of float audio in [-1, 1], in dB full scale (-inf for digital silence)."""
    if pcm.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64))))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def compression_ratio(text: str) -> float:
    """faster-whisper's repetition measure: UTF-8 bytes / zlib-compressed bytes."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def max_ngram_run(text: str, max_n: int = 4) -> int:
    """Longest run of one word n-gram (n = 1..max_n) repeated back to back, case-insensitive."""
    words = [w.lower() for w in _WORD.findall(text)]
    best = 1 if words else 0
    for n in range(1, max_n + 1):
        for start in range(n):
            run, prev = 1, None
            for i in range(start, len(words) - n + 1, n):
                gram = tuple(words[i : i + n])
                run = run + 1 if gram == prev else 1
                prev = gram
                best = max(best, run)
    return best


def is_silent(pcm: np.ndarray, config: GuardConfig) -> bool:
    return rms_dbfs(pcm) < config.min_rms_dbfs


# Every name `check` can return (the `guard` label of asr_guard_refused_total).
GUARDS = ("empty", "no_speech", "logprob", "compression", "repeats", "rate")


def check(text: str, audio_s: float, scores: Scores, config: GuardConfig) -> str | None:
    """The guard that refuses `text` (decoded from `audio_s` seconds), or None when it may be sent."""
    if not _WORD.search(text):
        return "empty" if text.strip() else None
    if scores.no_speech_prob is not None and scores.no_speech_prob > config.no_speech_prob:
        return "no_speech"
    if scores.avg_logprob is not None and scores.avg_logprob < config.min_avg_logprob:
        return "logprob"
    if compression_ratio(text) > config.max_compression_ratio:
        return "compression"
    if max_ngram_run(text) > config.max_ngram_repeats:
        return "repeats"
    if len(text) / max(audio_s, 1.0) > config.max_chars_per_s:
        return "rate"
    return None
