"""VAD service configuration (SPEC §3, STYLE §4): one frozen dataclass, env read only in `from_env`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common.audio import SAMPLE_RATE
from common.envconf import ConfigError, env_float, env_int, env_str


@dataclass(frozen=True)
class VadConfig:
    """Detector and service limits. Env keys are the upper-cased field names with the `VAD_` prefix."""

    threshold: float = 0.5  # Silero speech probability above which a window counts as speech
    min_silence_ms: int = 300  # silence that ends a segment
    min_speech_ms: int = 250  # speech needed before a segment starts
    pad_start_ms: int = 0  # moved earlier on SPEECH_START (never before the flow's first sample)
    pad_end_ms: int = 0  # moved later on SPEECH_END (never past the audio seen)
    chunk_ms: int = 32  # model window: 32 ms = 512 samples, what Silero v5+ needs at 16 kHz
    max_speech_s: float = 20.0  # a longer segment is cut: SPEECH_END, then a new SPEECH_START
    num_threads: int = 1  # onnxruntime intra-op threads per detector
    max_streams: int = 64  # concurrent Stream calls; more get RESOURCE_EXHAUSTED
    max_flows_per_stream: int = 16  # distinct live flow_ids on one call; more get RESOURCE_EXHAUSTED
    workers: int = 2  # executor threads running inference
    model_path: str = ""  # empty: silero_vad.onnx from the silero-vad wheel (SPEC §9)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"VAD_THRESHOLD={self.threshold} must be in (0, 1)")
        for name in ("min_silence_ms", "min_speech_ms", "pad_start_ms", "pad_end_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"VAD_{name.upper()} must be >= 0")
        for name in ("chunk_ms", "num_threads", "max_streams", "max_flows_per_stream", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"VAD_{name.upper()} must be >= 1")
        if self.max_speech_s <= 0:
            raise ConfigError("VAD_MAX_SPEECH_S must be > 0")

    @property
    def window_samples(self) -> int:
        return self.chunk_ms * SAMPLE_RATE // 1000

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> VadConfig:
        d = cls()
        return cls(
            threshold=env_float(env, "VAD_THRESHOLD", d.threshold),
            min_silence_ms=env_int(env, "VAD_MIN_SILENCE_MS", d.min_silence_ms),
            min_speech_ms=env_int(env, "VAD_MIN_SPEECH_MS", d.min_speech_ms),
            pad_start_ms=env_int(env, "VAD_PAD_START_MS", d.pad_start_ms),
            pad_end_ms=env_int(env, "VAD_PAD_END_MS", d.pad_end_ms),
            chunk_ms=env_int(env, "VAD_CHUNK_MS", d.chunk_ms),
            max_speech_s=env_float(env, "VAD_MAX_SPEECH_S", d.max_speech_s),
            num_threads=env_int(env, "VAD_NUM_THREADS", d.num_threads),
            max_streams=env_int(env, "VAD_MAX_STREAMS", d.max_streams),
            max_flows_per_stream=env_int(env, "VAD_MAX_FLOWS_PER_STREAM", d.max_flows_per_stream),
            workers=env_int(env, "VAD_WORKERS", d.workers),
            model_path=env_str(env, "VAD_MODEL_PATH", d.model_path),
        )
