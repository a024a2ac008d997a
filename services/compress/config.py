"""Configuration of the Compress service (SPEC §4, §5): frozen dataclasses, the only place env is read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.envconf import ConfigError, env_float, env_int, env_str

FORMATS = ("ogg_opus", "flac")
BACKENDS = ("local", "s3")
URL_MODES = ("presigned", "public")


@dataclass(frozen=True)
class CompressConfig:
    """The archive pipeline: accepted audio, encoder, spool and retry policy."""

    # FLAC by default: lossless for later re-transcription and ~100x cheaper in CPU than libsndfile's
    # Ogg/Opus (docs/services/compress.md); ogg_opus trades that CPU for 5x fewer bytes.
    format: str = "flac"  # COMPRESS_FORMAT: flac | ogg_opus
    compression_level: float | None = None  # COMPRESS_LEVEL 0..1 (libsndfile), unset = library default
    backend: str = "local"  # STORAGE_BACKEND: local | s3
    store_dir: Path = Path("var/records")  # COMPRESS_STORE_DIR (local backend root)
    spool_dir: Path = Path("var/compress-spool")  # COMPRESS_SPOOL_DIR (PCM in flight, archives pending)
    public_base: str = ""  # PUBLIC_BASE; empty = this service's own HTTP base (dev only)
    sample_rate_hz: int = 16000
    max_flow_s: float = 4 * 3600.0  # COMPRESS_MAX_FLOW_S: longest archivable flow
    spool_flush_bytes: int = 64 * 1024  # COMPRESS_SPOOL_FLUSH_BYTES: PCM kept in memory per flow
    encode_workers: int = 2  # COMPRESS_ENCODE_WORKERS: executor threads for encode and storage
    retry_base_s: float = 0.5  # COMPRESS_RETRY_BASE_S: first back-off of the background uploader
    retry_max_s: float = 30.0  # COMPRESS_RETRY_MAX_S: back-off cap

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"COMPRESS_FORMAT={self.format!r}: expected one of {FORMATS}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"STORAGE_BACKEND={self.backend!r}: expected one of {BACKENDS}")
        if self.compression_level is not None and not 0.0 <= self.compression_level <= 1.0:
            raise ConfigError("COMPRESS_LEVEL must be within 0..1")
        if self.max_flow_s <= 0 or self.spool_flush_bytes <= 0 or self.encode_workers <= 0:
            raise ConfigError("COMPRESS_MAX_FLOW_S, COMPRESS_SPOOL_FLUSH_BYTES, COMPRESS_ENCODE_WORKERS must be > 0")
        if not 0 < self.retry_base_s <= self.retry_max_s:
            raise ConfigError("need 0 < COMPRESS_RETRY_BASE_S <= COMPRESS_RETRY_MAX_S")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CompressConfig:
        level = env_str(env, "COMPRESS_LEVEL", "").strip()
        return cls(
            format=env_str(env, "COMPRESS_FORMAT", cls.format).strip().lower(),
            compression_level=env_float(env, "COMPRESS_LEVEL", 0.0) if level else None,
            backend=env_str(env, "STORAGE_BACKEND", cls.backend).strip().lower(),
            store_dir=Path(env_str(env, "COMPRESS_STORE_DIR", str(cls.store_dir))),
            spool_dir=Path(env_str(env, "COMPRESS_SPOOL_DIR", str(cls.spool_dir))),
            public_base=env_str(env, "PUBLIC_BASE", "").rstrip("/"),
            max_flow_s=env_float(env, "COMPRESS_MAX_FLOW_S", cls.max_flow_s),
            spool_flush_bytes=env_int(env, "COMPRESS_SPOOL_FLUSH_BYTES", cls.spool_flush_bytes),
            encode_workers=env_int(env, "COMPRESS_ENCODE_WORKERS", cls.encode_workers),
            retry_base_s=env_float(env, "COMPRESS_RETRY_BASE_S", cls.retry_base_s),
            retry_max_s=env_float(env, "COMPRESS_RETRY_MAX_S", cls.retry_max_s),
        )


@dataclass(frozen=True)
class S3Config:
    """The S3/MinIO/SeaweedFS backend (SPEC §4). Credentials come from the standard AWS variables."""

    endpoint_url: str = ""  # S3_ENDPOINT_URL; empty = AWS
    bucket: str = "records"  # S3_BUCKET
    region: str = "us-east-1"  # S3_REGION
    access_key_id: str = ""  # AWS_ACCESS_KEY_ID
    secret_access_key: str = ""  # AWS_SECRET_ACCESS_KEY
    url_mode: str = "presigned"  # S3_URL_MODE: presigned | public
    presign_expiry_s: int = 7 * 24 * 3600  # S3_PRESIGN_EXPIRY_S (SigV4 maximum: 7 days)
    addressing_style: str = "path"  # S3_ADDRESSING_STYLE: path | virtual | auto
    connect_timeout_s: float = 2.0  # S3_CONNECT_TIMEOUT_S
    read_timeout_s: float = 30.0  # S3_READ_TIMEOUT_S
    max_attempts: int = 2  # S3_MAX_ATTEMPTS (botocore retries, per upload attempt)
    multipart_threshold_bytes: int = 8 * 1024 * 1024  # S3_MULTIPART_THRESHOLD_BYTES

    def __post_init__(self) -> None:
        if self.url_mode not in URL_MODES:
            raise ConfigError(f"S3_URL_MODE={self.url_mode!r}: expected one of {URL_MODES}")
        if not 1 <= self.presign_expiry_s <= 7 * 24 * 3600:
            raise ConfigError("S3_PRESIGN_EXPIRY_S must be within 1..604800 (SigV4 limit)")
        if not self.bucket:
            raise ConfigError("S3_BUCKET must not be empty")
        if self.max_attempts < 1:
            raise ConfigError("S3_MAX_ATTEMPTS must be >= 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Config:
        return cls(
            endpoint_url=env_str(env, "S3_ENDPOINT_URL", "").rstrip("/"),
            bucket=env_str(env, "S3_BUCKET", cls.bucket),
            region=env_str(env, "S3_REGION", cls.region),
            access_key_id=env_str(env, "AWS_ACCESS_KEY_ID", ""),
            secret_access_key=env_str(env, "AWS_SECRET_ACCESS_KEY", ""),
            url_mode=env_str(env, "S3_URL_MODE", cls.url_mode).strip().lower(),
            presign_expiry_s=env_int(env, "S3_PRESIGN_EXPIRY_S", cls.presign_expiry_s),
            addressing_style=env_str(env, "S3_ADDRESSING_STYLE", cls.addressing_style),
            connect_timeout_s=env_float(env, "S3_CONNECT_TIMEOUT_S", cls.connect_timeout_s),
            read_timeout_s=env_float(env, "S3_READ_TIMEOUT_S", cls.read_timeout_s),
            max_attempts=env_int(env, "S3_MAX_ATTEMPTS", cls.max_attempts),
            multipart_threshold_bytes=env_int(env, "S3_MULTIPART_THRESHOLD_BYTES", cls.multipart_threshold_bytes),
        )
