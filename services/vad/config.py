"""VAD service configuration (SPEC §3, STYLE §4): one frozen dataclass, read by `common.envconf.load_env`."""

from __future__ import annotations

from dataclasses import dataclass

from common.audio import SAMPLE_RATE
from common.envconf import ConfigError, nested, setting
from common.server import ServerConfig
from common.tls import TlsConfig


@dataclass(frozen=True)
class VadConfig:
    """Detector and service limits. Env keys are the upper-cased field names with the `VAD_` prefix."""

    # Silero speech probability above which a window counts as speech
    threshold: float = setting(0.5, env="VAD_THRESHOLD")
    min_silence_ms: int = setting(300, env="VAD_MIN_SILENCE_MS")  # silence that ends a segment
    min_speech_ms: int = setting(100, env="VAD_MIN_SPEECH_MS")  # speech needed before a segment starts
    # moved earlier on SPEECH_START (never before the flow's first sample)
    pad_start_ms: int = setting(0, env="VAD_PAD_START_MS")
    pad_end_ms: int = setting(0, env="VAD_PAD_END_MS")  # moved later on SPEECH_END (never past the audio seen)
    # model window: 32 ms = 512 samples, what Silero v5+ needs at 16 kHz
    chunk_ms: int = setting(32, env="VAD_CHUNK_MS")
    # a longer segment is cut: SPEECH_END, then a new SPEECH_START
    max_speech_s: float = setting(20.0, env="VAD_MAX_SPEECH_S")
    num_threads: int = setting(1, env="VAD_NUM_THREADS")  # onnxruntime intra-op threads per detector
    max_streams: int = setting(64, env="VAD_MAX_STREAMS")  # concurrent Stream calls; more get RESOURCE_EXHAUSTED
    # distinct live flow_ids on one call; more get RESOURCE_EXHAUSTED
    max_flows_per_stream: int = setting(16, env="VAD_MAX_FLOWS_PER_STREAM")
    workers: int = setting(2, env="VAD_WORKERS")  # executor threads running inference
    # idle detectors kept for the next flows (~10 MB each); 0 builds one per flow (~60 ms CPU)
    pool_size: int = setting(32, env="VAD_POOL_SIZE")
    model_path: str = setting("", env="VAD_MODEL_PATH")  # empty: silero_vad.onnx from the silero-vad wheel (SPEC §9)
    server: ServerConfig = nested(ServerConfig, prefix="VAD_")
    tls: TlsConfig = nested(TlsConfig)  # GRPC_TLS_*, TLS_CA_FILE: mTLS identity (common/tls.py)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"VAD_THRESHOLD={self.threshold} must be in (0, 1)")
        for name in ("min_silence_ms", "min_speech_ms", "pad_start_ms", "pad_end_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"VAD_{name.upper()} must be >= 0")
        for name in ("chunk_ms", "num_threads", "max_streams", "max_flows_per_stream", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"VAD_{name.upper()} must be >= 1")
        if self.pool_size < 0:
            raise ConfigError("VAD_POOL_SIZE must be >= 0")
        if self.max_speech_s <= 0:
            raise ConfigError("VAD_MAX_SPEECH_S must be > 0")

    @property
    def window_samples(self) -> int:
        return self.chunk_ms * SAMPLE_RATE // 1000
