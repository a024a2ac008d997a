"""Configuration of the Compress service (SPEC §4, §5): frozen dataclasses read by `common.envconf.load_env`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.envconf import ConfigError, nested, setting
from common.server import ServerConfig
from common.tls import TlsConfig

FORMATS = ("ogg_opus", "flac")
BACKENDS = ("local", "s3")
URL_MODES = ("presigned", "public")


@dataclass(frozen=True)
class S3Config:
    """The S3/MinIO/SeaweedFS backend (SPEC §4). Credentials come from the standard AWS variables."""

    endpoint_url: str = setting("", env="S3_ENDPOINT_URL", parse=lambda raw: raw.rstrip("/"))  # empty = AWS
    bucket: str = setting("records", env="S3_BUCKET")
    region: str = setting("us-east-1", env="S3_REGION")
    access_key_id: str = setting("", env="AWS_ACCESS_KEY_ID")
    secret_access_key: str = setting("", env="AWS_SECRET_ACCESS_KEY")
    url_mode: str = setting("presigned", env="S3_URL_MODE", parse=lambda raw: raw.strip().lower())  # presigned | public
    presign_expiry_s: int = setting(7 * 24 * 3600, env="S3_PRESIGN_EXPIRY_S")  # SigV4 maximum: 7 days
    addressing_style: str = setting("path", env="S3_ADDRESSING_STYLE")  # path | virtual | auto
    connect_timeout_s: float = setting(2.0, env="S3_CONNECT_TIMEOUT_S")
    read_timeout_s: float = setting(30.0, env="S3_READ_TIMEOUT_S")
    max_attempts: int = setting(2, env="S3_MAX_ATTEMPTS")  # botocore retries, per upload attempt
    multipart_threshold_bytes: int = setting(8 * 1024 * 1024, env="S3_MULTIPART_THRESHOLD_BYTES")

    def __post_init__(self) -> None:
        if self.url_mode not in URL_MODES:
            raise ConfigError(f"S3_URL_MODE={self.url_mode!r}: expected one of {URL_MODES}")
        if not 1 <= self.presign_expiry_s <= 7 * 24 * 3600:
            raise ConfigError("S3_PRESIGN_EXPIRY_S must be within 1..604800 (SigV4 limit)")
        if not self.bucket:
            raise ConfigError("S3_BUCKET must not be empty")
        if self.max_attempts < 1:
            raise ConfigError("S3_MAX_ATTEMPTS must be >= 1")


@dataclass(frozen=True)
class CompressConfig:
    """The archive pipeline: accepted audio, encoder, spool and retry policy."""

    # FLAC by default: lossless for later re-transcription and ~100x cheaper in CPU than libsndfile's
    # Ogg/Opus (docs/services/compress.md); ogg_opus trades that CPU for 5x fewer bytes.
    format: str = setting("flac", env="COMPRESS_FORMAT", parse=lambda raw: raw.strip().lower())  # flac | ogg_opus
    compression_level: float | None = setting(None, env="COMPRESS_LEVEL")  # 0..1 (libsndfile), unset = library default
    backend: str = setting("local", env="STORAGE_BACKEND", parse=lambda raw: raw.strip().lower())  # local | s3
    store_dir: Path = setting(Path("var/records"), env="COMPRESS_STORE_DIR")  # local backend root
    spool_dir: Path = setting(Path("var/compress-spool"), env="COMPRESS_SPOOL_DIR")  # PCM in flight, archives pending
    # empty = this service's own HTTP base (dev only)
    public_base: str = setting("", env="PUBLIC_BASE", parse=lambda raw: raw.rstrip("/"))
    # The local backend's record URLs are signed (HMAC-SHA256 over path and expiry) with this key and
    # expire after the TTL (docs/storage.md). Empty: a random key per process (URLs die with it).
    record_url_key: str = setting("", env="RECORD_URL_KEY")
    record_url_ttl_s: int = setting(24 * 3600, env="RECORD_URL_TTL_SEC")
    sample_rate_hz: int = 16000
    max_flow_s: float = setting(4 * 3600.0, env="COMPRESS_MAX_FLOW_S")  # longest archivable flow
    spool_flush_bytes: int = setting(64 * 1024, env="COMPRESS_SPOOL_FLUSH_BYTES")  # PCM kept in memory per flow
    encode_workers: int = setting(2, env="COMPRESS_ENCODE_WORKERS")  # executor threads for encode and storage
    retry_base_s: float = setting(0.5, env="COMPRESS_RETRY_BASE_S")  # first back-off of the background uploader
    retry_max_s: float = setting(30.0, env="COMPRESS_RETRY_MAX_S")  # back-off cap
    s3: S3Config = nested(S3Config)  # read whatever STORAGE_BACKEND says, so a bad value fails at start
    server: ServerConfig = nested(ServerConfig, prefix="COMPRESS_")
    tls: TlsConfig = nested(TlsConfig)  # GRPC_TLS_*, TLS_CA_FILE: mTLS identity (common/tls.py)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"COMPRESS_FORMAT={self.format!r}: expected one of {FORMATS}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"STORAGE_BACKEND={self.backend!r}: expected one of {BACKENDS}")
        if self.compression_level is not None and not 0.0 <= self.compression_level <= 1.0:
            raise ConfigError("COMPRESS_LEVEL must be within 0..1")
        if self.max_flow_s <= 0 or self.spool_flush_bytes <= 0 or self.encode_workers <= 0:
            raise ConfigError("COMPRESS_MAX_FLOW_S, COMPRESS_SPOOL_FLUSH_BYTES, COMPRESS_ENCODE_WORKERS must be > 0")
        if self.record_url_key and len(self.record_url_key.encode()) < 32:
            raise ConfigError("RECORD_URL_KEY must be at least 32 bytes")
        if not 1 <= self.record_url_ttl_s <= 7 * 24 * 3600:
            raise ConfigError("RECORD_URL_TTL_SEC must be within 1..604800")
        if not 0 < self.retry_base_s <= self.retry_max_s:
            raise ConfigError("need 0 < COMPRESS_RETRY_BASE_S <= COMPRESS_RETRY_MAX_S")
