"""Configuration of the Denoise service; the only place its environment is read (STYLE §4)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from common.envconf import ConfigError, env_float, env_int, env_str
from services.denoise.engines import ENGINES

RESAMPLE_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")


@dataclass(frozen=True)
class DenoiseConfig:
    engine: str = "gtcrn"  # DENOISE_ENGINE: gtcrn | rnnoise
    gtcrn_model: str = ""  # DENOISE_GTCRN_MODEL: "" = the model prepared under MODELS_DIR/gtcrn
    num_threads: int = 1  # DENOISE_NUM_THREADS: onnxruntime threads per GTCRN instance
    workers: int = 2  # DENOISE_WORKERS: executor threads running the engines
    max_streams: int = 256  # DENOISE_MAX_STREAMS: concurrent calls; more get RESOURCE_EXHAUSTED
    max_flows_per_stream: int = 16  # DENOISE_MAX_FLOWS_PER_STREAM: open flows on one call
    frame_ms: int = 20  # DENOISE_FRAME_MS: output is emitted in whole frames of this length
    idle_engines: int = 8  # DENOISE_IDLE_ENGINES: reset engines kept for reuse
    rnnoise_resample_quality: str = "LQ"  # DENOISE_RNNOISE_RESAMPLE_QUALITY: soxr QQ|LQ|MQ|HQ|VHQ
    probe_timeout_s: float = 30.0  # DENOISE_PROBE_TIMEOUT_S: child-process model probe at start

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"DENOISE_ENGINE={self.engine!r}: expected one of {', '.join(ENGINES)}")
        if self.rnnoise_resample_quality not in RESAMPLE_QUALITIES:
            raise ConfigError(
                f"DENOISE_RNNOISE_RESAMPLE_QUALITY={self.rnnoise_resample_quality!r}: "
                f"expected one of {', '.join(RESAMPLE_QUALITIES)}"
            )
        for name in ("num_threads", "workers", "max_streams", "max_flows_per_stream", "frame_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"denoise {name} must be positive")
        if self.idle_engines < 0 or self.probe_timeout_s <= 0:
            raise ConfigError("denoise idle_engines must be >= 0 and probe_timeout_s > 0")

    @property
    def frame_samples(self) -> int:
        return 16 * self.frame_ms

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DenoiseConfig:
        return cls(
            engine=env_str(env, "DENOISE_ENGINE", cls.engine).strip().lower(),
            gtcrn_model=env_str(env, "DENOISE_GTCRN_MODEL", cls.gtcrn_model),
            num_threads=env_int(env, "DENOISE_NUM_THREADS", cls.num_threads),
            workers=env_int(env, "DENOISE_WORKERS", cls.workers),
            max_streams=env_int(env, "DENOISE_MAX_STREAMS", cls.max_streams),
            max_flows_per_stream=env_int(env, "DENOISE_MAX_FLOWS_PER_STREAM", cls.max_flows_per_stream),
            frame_ms=env_int(env, "DENOISE_FRAME_MS", cls.frame_ms),
            idle_engines=env_int(env, "DENOISE_IDLE_ENGINES", cls.idle_engines),
            rnnoise_resample_quality=env_str(env, "DENOISE_RNNOISE_RESAMPLE_QUALITY", cls.rnnoise_resample_quality)
            .strip()
            .upper(),
            probe_timeout_s=env_float(env, "DENOISE_PROBE_TIMEOUT_S", cls.probe_timeout_s),
        )
