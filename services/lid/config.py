"""LID service configuration (SPEC §4, §5, STYLE §4): one frozen dataclass, env read only in `from_env`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from common.audio import SAMPLE_RATE
from common.envconf import ConfigError, env_float, env_int, env_list, env_str
from services.lid.speech import WINDOW_SAMPLES

# Whisper's language codes (faster_whisper.tokenizer._LANGUAGE_CODES), kept here so that the
# config and the sans-I/O policy do not import the model stack.
_WHISPER_CODES = (
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi "
    "hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no "
    "oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo "
    "zh yue"
)
WHISPER_LANGS = frozenset(_WHISPER_CODES.split())


@dataclass(frozen=True)
class LidConfig:
    """Early-answer policy, engine and service limits. Env keys: `LID_` + upper-cased field name,
    except `first_n_s`, which is SPEC §5's `LID_FIRST_N_SECONDS`, and `min_s` (`LID_MIN_SECONDS`)."""

    first_n_s: float = 3.0  # speech used at most; answer when it is in (or this long after the first speech)
    min_s: float = 1.0  # first detection once this much speech has arrived
    step_ms: int = 500  # new speech needed before the next detection (one in flight at a time)
    confidence: float = 0.9  # top probability that answers early
    min_score: float = 0.5  # below it the answer is "und" (undetermined), not a guess
    vad_threshold: float = 0.5  # Silero speech probability that starts speech
    min_speech_ms: int = 96  # a run of speech windows shorter than this (a click) is not speech
    speech_pad_ms: int = 192  # audio kept before and after each run of speech
    idle_timeout_s: float = 10.0  # no frame for this long: answer with the audio at hand
    langs: tuple[str, ...] = ()  # candidate languages; empty = all Whisper languages
    window_s: float = 10.0  # encoder input: audio zero-padded to this (30 = faster-whisper's default)
    cpu_threads: int = 1  # CTranslate2 intra-op threads per inference
    workers: int = 1  # parallel inferences (CTranslate2 num_workers = executor threads)
    max_sessions: int = 32  # concurrent Detect calls; more get RESOURCE_EXHAUSTED
    model_dir: str = ""  # empty: the multilingual Whisper base from `make setup` (SPEC §9)

    def __post_init__(self) -> None:
        if self.min_s <= 0 or self.first_n_s < self.min_s:
            raise ConfigError(f"need 0 < LID_MIN_SECONDS ({self.min_s}) <= LID_FIRST_N_SECONDS ({self.first_n_s})")
        if not 0.0 < self.confidence <= 1.0:
            raise ConfigError(f"LID_CONFIDENCE={self.confidence} must be in (0, 1]")
        if not 0.0 <= self.min_score <= self.confidence:
            raise ConfigError(f"LID_MIN_SCORE={self.min_score} must be in [0, LID_CONFIDENCE={self.confidence}]")
        if not 0.0 < self.vad_threshold < 1.0:
            raise ConfigError(f"LID_VAD_THRESHOLD={self.vad_threshold} must be in (0, 1)")
        if self.min_speech_ms < 0 or self.speech_pad_ms < 0:
            raise ConfigError("LID_MIN_SPEECH_MS and LID_SPEECH_PAD_MS must be >= 0")
        if self.window_s <= 0 or self.window_s > 30:
            raise ConfigError(f"LID_WINDOW_S={self.window_s} must be in (0, 30] (Whisper's context)")
        if self.idle_timeout_s <= 0:
            raise ConfigError("LID_IDLE_TIMEOUT_S must be > 0")
        for name in ("step_ms", "cpu_threads", "workers", "max_sessions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"LID_{name.upper()} must be >= 1")
        unknown = sorted(set(self.langs) - WHISPER_LANGS)
        if unknown:
            raise ConfigError(f"LID_LANGS has languages Whisper does not know: {','.join(unknown)}")

    @property
    def max_samples(self) -> int:
        return round(self.first_n_s * SAMPLE_RATE)

    @property
    def min_samples(self) -> int:
        return round(self.min_s * SAMPLE_RATE)

    @property
    def step_samples(self) -> int:
        return self.step_ms * SAMPLE_RATE // 1000

    @property
    def min_speech_windows(self) -> int:
        """Silero windows (32 ms) a run of speech needs, at least one."""
        return max(1, math.ceil(self.min_speech_ms * SAMPLE_RATE / 1000 / WINDOW_SAMPLES))

    @property
    def pad_windows(self) -> int:
        return math.ceil(self.speech_pad_ms * SAMPLE_RATE / 1000 / WINDOW_SAMPLES)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LidConfig:
        d = cls()
        return cls(
            first_n_s=env_float(env, "LID_FIRST_N_SECONDS", d.first_n_s),
            min_s=env_float(env, "LID_MIN_SECONDS", d.min_s),
            step_ms=env_int(env, "LID_STEP_MS", d.step_ms),
            confidence=env_float(env, "LID_CONFIDENCE", d.confidence),
            min_score=env_float(env, "LID_MIN_SCORE", d.min_score),
            vad_threshold=env_float(env, "LID_VAD_THRESHOLD", d.vad_threshold),
            min_speech_ms=env_int(env, "LID_MIN_SPEECH_MS", d.min_speech_ms),
            speech_pad_ms=env_int(env, "LID_SPEECH_PAD_MS", d.speech_pad_ms),
            idle_timeout_s=env_float(env, "LID_IDLE_TIMEOUT_S", d.idle_timeout_s),
            langs=tuple(x.lower() for x in env_list(env, "LID_LANGS", d.langs)),
            window_s=env_float(env, "LID_WINDOW_S", d.window_s),
            cpu_threads=env_int(env, "LID_CPU_THREADS", d.cpu_threads),
            workers=env_int(env, "LID_WORKERS", d.workers),
            max_sessions=env_int(env, "LID_MAX_SESSIONS", d.max_sessions),
            model_dir=env_str(env, "LID_MODEL_DIR", d.model_dir),
        )
