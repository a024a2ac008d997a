"""LID service configuration (SPEC §4, §5, STYLE §4): one frozen dataclass, read by `common.envconf.load_env`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.audio import SAMPLE_RATE
from common.envconf import ConfigError, nested, parse_list, setting
from common.server import ServerConfig
from common.tls import TlsConfig
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

    # speech used at most, counted from the first speech; answer when it is in (SPEC §4), or this
    # long after the first speech
    first_n_s: float = setting(3.0, env="LID_FIRST_N_SECONDS")
    min_s: float = setting(1.0, env="LID_MIN_SECONDS")  # first detection once this much speech has arrived
    # new speech needed before the next detection (one in flight at a time)
    step_ms: int = setting(500, env="LID_STEP_MS")
    confidence: float = setting(0.9, env="LID_CONFIDENCE")  # top probability that answers early
    min_score: float = setting(0.5, env="LID_MIN_SCORE")  # below it the answer is "und", not a guess
    vad_threshold: float = setting(0.5, env="LID_VAD_THRESHOLD")  # Silero probability that starts speech
    # a run of speech windows shorter than this (a click) is not speech
    min_speech_ms: int = setting(96, env="LID_MIN_SPEECH_MS")
    speech_pad_ms: int = setting(192, env="LID_SPEECH_PAD_MS")  # audio kept before and after each run of speech
    # no frame for this long: answer with the audio at hand
    idle_timeout_s: float = setting(10.0, env="LID_IDLE_TIMEOUT_S")
    # candidate languages; empty = all Whisper languages
    langs: tuple[str, ...] = setting((), env="LID_LANGS", parse=lambda raw: parse_list(raw.lower()))
    # encoder input: audio zero-padded to this (30 = faster-whisper's default)
    window_s: float = setting(8.0, env="LID_WINDOW_S")
    cpu_threads: int = setting(1, env="LID_CPU_THREADS")  # CTranslate2 intra-op threads per inference
    workers: int = setting(1, env="LID_WORKERS")  # parallel inferences (CTranslate2 num_workers = executor threads)
    max_sessions: int = setting(32, env="LID_MAX_SESSIONS")  # concurrent Detect calls; more get RESOURCE_EXHAUSTED
    # empty: the multilingual Whisper base from `make setup` (SPEC §9)
    model_dir: str = setting("", env="LID_MODEL_DIR")
    server: ServerConfig = nested(ServerConfig, prefix="LID_")
    tls: TlsConfig = nested(TlsConfig)  # GRPC_TLS_*, TLS_CA_FILE: mTLS identity (common/tls.py)

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
