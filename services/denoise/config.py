"""Configuration of the Denoise service, read by `common.envconf.load_env` (STYLE §4)."""

from __future__ import annotations

from dataclasses import dataclass

from common.envconf import ConfigError, env_name, nested, setting
from common.server import ServerConfig
from common.tls import TlsConfig
from services.denoise.engines import ENGINES

RESAMPLE_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")


@dataclass(frozen=True)
class DenoiseConfig:
    """Engine choice and service limits of one Denoise process."""

    engine: str = setting("gtcrn", env="DENOISE_ENGINE", parse=lambda raw: raw.strip().lower())  # gtcrn | rnnoise
    gtcrn_model: str = setting("", env="DENOISE_GTCRN_MODEL")  # "" = the model prepared under MODELS_DIR/gtcrn
    num_threads: int = setting(1, env="DENOISE_NUM_THREADS")  # onnxruntime threads per GTCRN instance
    workers: int = setting(2, env="DENOISE_WORKERS")  # executor threads running the engines
    max_streams: int = setting(256, env="DENOISE_MAX_STREAMS")  # concurrent calls; more get RESOURCE_EXHAUSTED
    max_flows_per_stream: int = setting(16, env="DENOISE_MAX_FLOWS_PER_STREAM")  # open flows on one call
    frame_ms: int = setting(20, env="DENOISE_FRAME_MS")  # output is emitted in whole frames of this length
    idle_engines: int = setting(8, env="DENOISE_IDLE_ENGINES")  # reset engines kept for reuse
    rnnoise_resample_quality: str = setting(
        "LQ", env="DENOISE_RNNOISE_RESAMPLE_QUALITY", parse=lambda raw: raw.strip().upper()
    )  # soxr QQ|LQ|MQ|HQ|VHQ
    probe_timeout_s: float = setting(30.0, env="DENOISE_PROBE_TIMEOUT_S")  # child-process model probe at start
    server: ServerConfig = nested(ServerConfig, prefix="DENOISE_")
    tls: TlsConfig = nested(TlsConfig)  # GRPC_TLS_*, TLS_CA_FILE: mTLS identity (common/tls.py)

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
                raise ConfigError(f"{env_name(DenoiseConfig, name)}={getattr(self, name)} must be positive")
        if self.idle_engines < 0 or self.probe_timeout_s <= 0:
            raise ConfigError("DENOISE_IDLE_ENGINES must be >= 0 and DENOISE_PROBE_TIMEOUT_S > 0")

    @property
    def frame_samples(self) -> int:
        return 16 * self.frame_ms
