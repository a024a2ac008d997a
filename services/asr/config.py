"""The ASR service's config, read by `common.envconf.load_env` (STYLE §4). Every limit has a unit in its name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.envconf import ConfigError, env_name, nested, setting
from common.server import ServerConfig
from common.tls import TlsConfig
from services.asr.guards import GuardConfig

ENGINES = ("whisper", "sphinx")
WHISPER_MODELS = ("tiny.en", "base")


def _model_default(loaded: Mapping[str, Any]) -> str:
    """ASR_MODEL when unset: Whisper tiny.en, or the only Sphinx model."""
    return "tiny.en" if loaded.get("engine", "whisper") == "whisper" else "en-us"


def _min_partial_audio_default(loaded: Mapping[str, Any]) -> int:
    """ASR_MIN_PARTIAL_AUDIO_MS when unset: an incremental engine (sphinx) can say something after 60 ms."""
    return 300 if loaded.get("engine", "whisper") == "whisper" else 60


@dataclass(frozen=True)
class AsrConfig:
    """Engine choice, concurrency limits and stream handling of one ASR process."""

    engine: str = setting("whisper", env="ASR_ENGINE")
    model: str = setting("tiny.en", env="ASR_MODEL", default_from=_model_default)
    # used when Start.lang_hint is empty or "auto"; "" lets a multilingual model detect
    lang: str = setting("en", env="ASR_LANG")
    cpu_threads: int = setting(1, env="ASR_CPU_THREADS")
    decode_workers: int = setting(1, env="ASR_DECODE_WORKERS")
    # Most partials (of different sessions, one language and prompt) decoded as one batch when a
    # decode worker frees; 1 = one at a time (docs/services/asr.md, "Cross-session batching").
    batch_max: int = setting(4, env="ASR_BATCH_MAX")
    # Share of a decode worker's time that partial updates may take (finals and an utterance's first
    # partial are never held); 1 = no cap (services/asr/scheduler.py, docs/services/asr.md).
    partial_duty: float = setting(0.5, env="ASR_PARTIAL_DUTY")
    beam_size: int = setting(1, env="ASR_BEAM_SIZE")
    # Largest Whisper encoder window for audio shorter than it (services/asr/window.py; 0 = faster-
    # whisper's own 30 s path). Finals on the windowed path too (30): with min_window_s their window
    # is sized to the audio, the lever that keeps finals on time under load (docs/services/asr.md).
    partial_window_s: float = setting(10.0, env="ASR_WINDOW_S")
    final_window_s: float = setting(30.0, env="ASR_FINAL_WINDOW_S")
    # > 0: a window is sized to the audio (its length + 1 s, whole seconds), at least this long,
    # at most the window above; a repetition-looking text is decoded again on 10 s, then 30 s.
    min_window_s: float = setting(3.0, env="ASR_MIN_WINDOW_S")
    max_sessions: int = setting(16, env="ASR_MAX_SESSIONS")  # a gated session between utterances costs nothing
    queue: int = setting(8, env="ASR_QUEUE")
    queue_timeout_ms: int = setting(10_000, env="ASR_QUEUE_TIMEOUT_MS")
    # used when Start.partial_interval_ms is 0 (SPEC §5)
    partial_interval_ms: int = setting(250, env="PARTIAL_INTERVAL_MS")
    min_partial_interval_ms: int = setting(50, env="ASR_MIN_PARTIAL_INTERVAL_MS")
    min_partial_audio_ms: int = setting(
        300, env="ASR_MIN_PARTIAL_AUDIO_MS", default_from=_min_partial_audio_default
    )  # whisper; an incremental engine (sphinx) defaults to 60
    reorder_window_packets: int = setting(3, env="ASR_REORDER_WINDOW")
    max_gap_packets: int = setting(250, env="ASR_MAX_GAP_PACKETS")
    max_utterance_ms: int = setting(25_000, env="ASR_MAX_UTTERANCE_MS")
    preroll_ms: int = setting(2_000, env="ASR_PREROLL_MS")
    # VAD gating (Start.vad_endpoints): audio kept before SPEECH_START and after SPEECH_END.
    speech_preroll_ms: int = setting(300, env="ASR_SPEECH_PREROLL_MS")
    speech_tail_ms: int = setting(200, env="ASR_SPEECH_TAIL_MS")
    # A final whose speech the last partial decoded reuses that decode.
    reuse_partial_final: bool = setting(True, env="ASR_REUSE_PARTIAL_FINAL")
    # Whisper aligns each decode's words (cross-attention, one more decoder pass; cost and error in
    # docs/performance.md): finals and partials carry `words`. pocketsphinx's come free with finals.
    word_timestamps: bool = setting(True, env="ASR_WORD_TIMESTAMPS")
    guard: GuardConfig = nested(GuardConfig, prefix="ASR_GUARD_")
    server: ServerConfig = nested(ServerConfig, prefix="ASR_")
    tls: TlsConfig = nested(TlsConfig)  # GRPC_TLS_*, TLS_CA_FILE: mTLS identity (common/tls.py)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"ASR_ENGINE={self.engine!r}: expected one of {', '.join(ENGINES)}")
        if self.engine == "whisper" and self.model not in WHISPER_MODELS:
            raise ConfigError(f"ASR_MODEL={self.model!r}: expected one of {', '.join(WHISPER_MODELS)}")
        for name in (
            "cpu_threads",
            "decode_workers",
            "batch_max",
            "beam_size",
            "max_sessions",
            "reorder_window_packets",
            "max_gap_packets",
            "max_utterance_ms",
            "partial_interval_ms",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{env_name(AsrConfig, name)}={getattr(self, name)} must be >= 1")
        if not 0.0 < self.partial_duty <= 1.0:
            raise ConfigError(f"ASR_PARTIAL_DUTY={self.partial_duty} must be in (0, 1]")
        for name in ("partial_window_s", "final_window_s", "min_window_s"):
            if not 0.0 <= getattr(self, name) <= 30.0:
                raise ConfigError(f"{env_name(AsrConfig, name)}={getattr(self, name)} must be 0 (off) or at most 30 s")
        for name in (
            "queue",
            "queue_timeout_ms",
            "min_partial_audio_ms",
            "preroll_ms",
            "speech_preroll_ms",
            "speech_tail_ms",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{env_name(AsrConfig, name)}={getattr(self, name)} must be >= 0")

    @property
    def model_label(self) -> str:
        """The `model` label of metrics and logs, e.g. `whisper-tiny.en`, `sphinx-en-us`."""
        return f"whisper-{self.model}" if self.engine == "whisper" else "sphinx-en-us"
