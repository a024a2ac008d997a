"""The one config loader of the ASR service (STYLE §4). Every limit has a unit in its name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from common.envconf import ConfigError, env_bool, env_float, env_int, env_str
from services.asr.guards import GuardConfig

ENGINES = ("whisper", "sphinx")
WHISPER_MODELS = ("tiny.en", "base")


@dataclass(frozen=True)
class AsrConfig:
    """Engine choice, concurrency limits and stream handling of one ASR process."""

    engine: str = "whisper"
    model: str = "tiny.en"
    lang: str = "en"  # used when Start.lang_hint is empty or "auto"; "" lets a multilingual model detect
    cpu_threads: int = 1
    decode_workers: int = 1
    beam_size: int = 1
    # Largest Whisper encoder window for audio shorter than it (services/asr/window.py; 0 = faster-
    # whisper's own 30 s path). Finals on the windowed path too (30): with min_window_s their window
    # is sized to the audio, the lever that keeps finals on time under load (docs/services/asr.md).
    partial_window_s: float = 10.0
    final_window_s: float = 30.0
    # > 0: a window is sized to the audio (its length + 1 s, whole seconds), at least this long,
    # at most the window above; a repetition-looking text is decoded again on 30 s.
    min_window_s: float = 3.0
    max_sessions: int = 16  # a VAD-gated session costs nothing between utterances
    queue: int = 8
    queue_timeout_ms: int = 10_000
    partial_interval_ms: int = 250  # used when Start.partial_interval_ms is 0 (SPEC §5)
    min_partial_interval_ms: int = 50
    min_partial_audio_ms: int = 300  # whisper; an incremental engine (sphinx) defaults to 60
    reorder_window_packets: int = 3
    max_gap_packets: int = 250
    max_utterance_ms: int = 25_000
    preroll_ms: int = 2_000
    # VAD gating (Start.vad_endpoints): audio kept before SPEECH_START and after SPEECH_END.
    speech_preroll_ms: int = 300
    speech_tail_ms: int = 200
    reuse_partial_final: bool = True  # a final whose speech the last partial decoded reuses it
    guard: GuardConfig = field(default_factory=GuardConfig)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"ASR_ENGINE={self.engine!r}: expected one of {', '.join(ENGINES)}")
        if self.engine == "whisper" and self.model not in WHISPER_MODELS:
            raise ConfigError(f"ASR_MODEL={self.model!r}: expected one of {', '.join(WHISPER_MODELS)}")
        for name in (
            "cpu_threads",
            "decode_workers",
            "beam_size",
            "max_sessions",
            "reorder_window_packets",
            "max_gap_packets",
            "max_utterance_ms",
            "partial_interval_ms",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("partial_window_s", "final_window_s", "min_window_s"):
            if not 0.0 <= getattr(self, name) <= 30.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be 0 (off) or at most 30 s")
        for name in (
            "queue",
            "queue_timeout_ms",
            "min_partial_audio_ms",
            "preroll_ms",
            "speech_preroll_ms",
            "speech_tail_ms",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")

    @property
    def model_label(self) -> str:
        """The `model` label of metrics and logs, e.g. `whisper-tiny.en`, `sphinx-en-us`."""
        return f"whisper-{self.model}" if self.engine == "whisper" else "sphinx-en-us"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AsrConfig:
        engine = env_str(env, "ASR_ENGINE", cls.engine)
        return cls(
            engine=engine,
            model=env_str(env, "ASR_MODEL", cls.model if engine == "whisper" else "en-us"),
            lang=env_str(env, "ASR_LANG", cls.lang),
            cpu_threads=env_int(env, "ASR_CPU_THREADS", cls.cpu_threads),
            decode_workers=env_int(env, "ASR_DECODE_WORKERS", cls.decode_workers),
            beam_size=env_int(env, "ASR_BEAM_SIZE", cls.beam_size),
            partial_window_s=env_float(env, "ASR_WINDOW_S", cls.partial_window_s),
            final_window_s=env_float(env, "ASR_FINAL_WINDOW_S", cls.final_window_s),
            max_sessions=env_int(env, "ASR_MAX_SESSIONS", cls.max_sessions),
            queue=env_int(env, "ASR_QUEUE", cls.queue),
            queue_timeout_ms=env_int(env, "ASR_QUEUE_TIMEOUT_MS", cls.queue_timeout_ms),
            partial_interval_ms=env_int(env, "PARTIAL_INTERVAL_MS", cls.partial_interval_ms),
            min_partial_interval_ms=env_int(env, "ASR_MIN_PARTIAL_INTERVAL_MS", cls.min_partial_interval_ms),
            min_partial_audio_ms=env_int(
                env, "ASR_MIN_PARTIAL_AUDIO_MS", cls.min_partial_audio_ms if engine == "whisper" else 60
            ),
            reorder_window_packets=env_int(env, "ASR_REORDER_WINDOW", cls.reorder_window_packets),
            max_gap_packets=env_int(env, "ASR_MAX_GAP_PACKETS", cls.max_gap_packets),
            max_utterance_ms=env_int(env, "ASR_MAX_UTTERANCE_MS", cls.max_utterance_ms),
            preroll_ms=env_int(env, "ASR_PREROLL_MS", cls.preroll_ms),
            min_window_s=env_float(env, "ASR_MIN_WINDOW_S", cls.min_window_s),
            speech_preroll_ms=env_int(env, "ASR_SPEECH_PREROLL_MS", cls.speech_preroll_ms),
            speech_tail_ms=env_int(env, "ASR_SPEECH_TAIL_MS", cls.speech_tail_ms),
            reuse_partial_final=env_bool(env, "ASR_REUSE_PARTIAL_FINAL", cls.reuse_partial_final),
            guard=GuardConfig.from_env(env),
        )
