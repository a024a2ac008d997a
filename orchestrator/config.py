"""The gateway's configuration (SPEC §5): one frozen dataclass per concern, nested under `GatewayConfig`,
read from the environment by `common.envconf.load_env`.

Variable names are the ones operators know (`FLUSH_IDLE_SEC`, `VAD_BATCH_MS`); field names carry units
(`flush_idle_s`, `batch_ms`). The session core, the Opus link and the deferred-transcript configs do
not know the environment: their variables are listed here, next to the field they set.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from common.envconf import ConfigError, nested, setting
from common.tls import EdgeTlsConfig, TlsConfig, host_of
from orchestrator.core.events import StageName
from orchestrator.core.session import SessionConfig
from orchestrator.edge.auth import MIN_SECRET_BYTES
from orchestrator.edge.limits import LimitsConfig
from orchestrator.routing.table import RoutingTable
from orchestrator.stages.opus_link import OpusLinkConfig
from orchestrator.transcripts.store import JobsConfig
from orchestrator.transcripts.transcribe import TranscribeConfig

SESSION_ENV = {
    "max_frame_bytes": "MAX_FRAME_BYTES",
    "flush_idle_s": "FLUSH_IDLE_SEC",
    "start_timeout_s": "START_TIMEOUT_SEC",
    "max_session_s": "MAX_SESSION_SEC",
    "partial_interval_ms": "PARTIAL_INTERVAL_MS",
    "resume_window_s": "RESUME_WINDOW_S",
    "resume_buffer_events": "RESUME_BUFFER_EVENTS",
    "send_timeout_s": "SEND_TIMEOUT_S",
}
OPUS_LINK_ENV = {
    "codec": "ASR_LINK_CODEC",
    "bitrate": "ASR_LINK_BITRATE",
    "frame_ms": "ASR_LINK_FRAME_MS",
    "vbr": "ASR_LINK_VBR",
    "complexity": "ASR_LINK_COMPLEXITY",
    "fault_after_frames": "OPUS_FAULT_AFTER_FRAMES",
}
JOBS_ENV = {
    "db_path": "JOBS_DB",
    "concurrency": "JOBS_CONCURRENCY",
    "max_attempts": "JOBS_MAX_ATTEMPTS",
    "backoff_base_s": "JOBS_BACKOFF_BASE_SEC",
    "backoff_factor": "JOBS_BACKOFF_FACTOR",
    "backoff_cap_s": "JOBS_BACKOFF_CAP_SEC",
    "backoff_jitter": "JOBS_BACKOFF_JITTER",
    "jitter_seed": "JOBS_JITTER_SEED",
    "capacity_poll_s": "JOBS_CAPACITY_POLL_SEC",
    "attempt_timeout_s": "JOBS_ATTEMPT_TIMEOUT_SEC",
    "wait_cap_s": "JOBS_WAIT_CAP_SEC",
    "store_url": "JOBS_STORE_URL",
    "lease_s": "JOBS_LEASE_SEC",
    "poll_s": "JOBS_POLL_SEC",
}
TRANSCRIBE_ENV = {
    "deadline_s": "TRANSCRIBE_DEADLINE_SEC",
    "download_timeout_s": "TRANSCRIBE_DOWNLOAD_TIMEOUT_SEC",
    "max_download_bytes": "TRANSCRIBE_MAX_DOWNLOAD_BYTES",
    "batch_packets": "TRANSCRIBE_BATCH_PACKETS",
}


@dataclass(frozen=True)
class ListenConfig:
    """Where the gateway listens, how many sessions it holds, how it stops."""

    host: str = setting("127.0.0.1", env="GATEWAY_HOST")
    port: int = setting(8080, env="GATEWAY_PORT")
    max_sessions: int = setting(1000, env="MAX_SESSIONS")
    # Hard cap of the WebSocket library: a larger message is refused by the library itself
    # (close 1009 with no error event). Messages between the session's max_frame_bytes and this
    # get a `frame_too_large` error event first.
    ws_max_message_bytes: int = setting(1024 * 1024, env="WS_MAX_MESSAGE_BYTES")
    drain_grace_s: float = setting(30.0, env="DRAIN_GRACE_SEC")
    tick_s: float = 0.25  # one timer for every session's idle flush, start timeout and length cap

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ConfigError("MAX_SESSIONS must be at least 1")
        if self.drain_grace_s < 0:
            raise ConfigError("DRAIN_GRACE_SEC must be >= 0")


@dataclass(frozen=True)
class StagePolicy:
    """How long the gateway waits for any stage."""

    # This far behind the audio: the client is held (backpressure); that long held: the stage fails.
    backlog_s: float = setting(10.0, env="STAGE_BACKLOG_SEC")
    timeout_s: float = setting(15.0, env="STAGE_TIMEOUT_SEC")  # also: after the end of audio, to answer
    connect_timeout_s: float = 2.0  # health checks of the stage channels


@dataclass(frozen=True)
class VadLinkConfig:
    enabled: bool = setting(True, env="ENABLE_VAD")
    addr: str = setting("", env="VAD_ADDR")  # host:port; empty = stage off
    batch_ms: int = setting(100, env="VAD_BATCH_MS")


@dataclass(frozen=True)
class DenoiseLinkConfig:
    # Off by default: both denoise engines double Whisper's WER on noisy clips (docs/services/denoise.md).
    enabled: bool = setting(False, env="ENABLE_DENOISE")
    addr: str = setting("", env="DENOISE_ADDR")
    batch_ms: int = setting(40, env="DENOISE_BATCH_MS")


@dataclass(frozen=True)
class LidLinkConfig:
    enabled: bool = setting(True, env="ENABLE_LID")
    addr: str = setting("", env="LID_ADDR")
    batch_ms: int = setting(100, env="LID_BATCH_MS")


@dataclass(frozen=True)
class CompressLinkConfig:
    enabled: bool = setting(True, env="ENABLE_COMPRESS")
    addr: str = setting("", env="COMPRESS_ADDR")
    batch_ms: int = setting(1000, env="COMPRESS_BATCH_MS")
    # The gateway keeps each session's audio on its disk until the archive has it, and hands it to an
    # archive member when the archive failed mid-session (docs/storage.md). 0 bytes: off.
    spool_dir: str = setting("var/archive-spool", env="ARCHIVE_SPOOL_DIR")
    spool_max_bytes: int = setting(2 * 1024**3, env="ARCHIVE_SPOOL_MAX_BYTES")
    # After the end of audio, how long a session whose archive failed waits for a re-upload (and its
    # record_url) before it ends with the record pending; at most half of STAGE_TIMEOUT_SEC (the session
    # gives up a stage silent that long after the end of audio).
    retry_window_s: float = setting(5.0, env="ARCHIVE_RETRY_WINDOW_SEC")
    retry_base_s: float = setting(1.0, env="ARCHIVE_RETRY_BASE_SEC")  # background uploader's first wait
    retry_max_s: float = setting(30.0, env="ARCHIVE_RETRY_MAX_SEC")

    def __post_init__(self) -> None:
        if self.spool_max_bytes < 0 or self.retry_window_s < 0:
            raise ConfigError("ARCHIVE_SPOOL_MAX_BYTES and ARCHIVE_RETRY_WINDOW_SEC must be >= 0")
        if not 0 < self.retry_base_s <= self.retry_max_s:
            raise ConfigError("need 0 < ARCHIVE_RETRY_BASE_SEC <= ARCHIVE_RETRY_MAX_SEC")


@dataclass(frozen=True)
class AsrLinkConfig:
    """The ASR stage: its pools, the Opus link to them, and how a session opens a stream."""

    enabled: bool = setting(True, env="ENABLE_ASR")
    # ROUTING_FILE (TOML, docs/routing.md) maps (language, domain) to ASR pools; without it,
    # ASR_ADDR (comma-separated) is one pool.
    addr: str = setting("", env="ASR_ADDR")
    routing_file: str = setting("", env="ROUTING_FILE")
    batch_ms: int = setting(100, env="ASR_LINK_BATCH_MS")
    open_timeout_s: float = setting(3.0, env="ASR_OPEN_TIMEOUT_SEC")
    # While LID listens, stream to the default route's pool and show its partials (docs/routing.md).
    provisional: bool = setting(True, env="ASR_PROVISIONAL")
    # The language the provisional stream is opened with (its route's pool); "" = the default route,
    # language unknown. When LID then picks this language, the provisional stream is kept: no replay.
    provisional_lang: str = setting("", env="ASR_PROVISIONAL_LANG")
    # Past capacity, a new session waits this long for a member to free up before it is refused
    # (record-only); 0 refuses at once.
    admission_wait_s: float = setting(2.0, env="ASR_ADMISSION_WAIT_SEC")
    opus_threads: int = setting(2, env="OPUS_THREADS")
    link: OpusLinkConfig = nested(OpusLinkConfig, env=OPUS_LINK_ENV)

    def __post_init__(self) -> None:
        if self.opus_threads < 1:
            raise ConfigError("OPUS_THREADS must be at least 1")


AUTH_MODES = ("", "jwt", "off")


@dataclass(frozen=True)
class AuthConfig:
    """Who may stream (docs/security.md). AUTH_MODE unset: `jwt` when a key source is set, else `off`,
    which only a loopback listener may run without saying so."""

    mode: str = setting("", env="AUTH_MODE", parse=lambda raw: raw.strip().lower())  # jwt | off | unset
    # Exactly one key source: an HS256 secret, a PEM public key (RS256/ES256), or a JWKS endpoint.
    jwt_secret: str = setting("", env="AUTH_JWT_SECRET")
    jwt_public_key_file: str = setting("", env="AUTH_JWT_PUBLIC_KEY_FILE")
    jwks_url: str = setting("", env="AUTH_JWKS_URL")
    audience: str = setting("", env="AUTH_JWT_AUDIENCE")  # required `aud` when set
    issuer: str = setting("", env="AUTH_JWT_ISSUER")  # required `iss` when set
    # Clock skew tolerated on exp/nbf/iat between the token issuer and the gateway.
    leeway_s: float = setting(30.0, env="AUTH_JWT_LEEWAY_SEC")
    jwks_cache_s: float = setting(300.0, env="AUTH_JWKS_CACHE_SEC")
    jwks_timeout_s: float = setting(5.0, env="AUTH_JWKS_TIMEOUT_SEC")

    def __post_init__(self) -> None:
        if self.mode not in AUTH_MODES:
            raise ConfigError(f"AUTH_MODE={self.mode!r}: expected jwt or off")
        sources = [s for s in (self.jwt_secret, self.jwt_public_key_file, self.jwks_url) if s]
        if len(sources) > 1:
            raise ConfigError("set only one of AUTH_JWT_SECRET, AUTH_JWT_PUBLIC_KEY_FILE, AUTH_JWKS_URL")
        if self.mode == "jwt" and not sources:
            raise ConfigError("AUTH_MODE=jwt needs AUTH_JWT_SECRET, AUTH_JWT_PUBLIC_KEY_FILE or AUTH_JWKS_URL")
        if self.jwt_secret and len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"AUTH_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (HS256, RFC 7518 §3.2)")
        if self.jwks_url and not self.jwks_url.startswith(("https://", "http://")):
            raise ConfigError("AUTH_JWKS_URL must be an http(s) URL")
        if not 0 <= self.leeway_s <= 300:
            raise ConfigError("AUTH_JWT_LEEWAY_SEC must be within 0..300")
        if self.jwks_cache_s <= 0 or self.jwks_timeout_s <= 0:
            raise ConfigError("AUTH_JWKS_CACHE_SEC and AUTH_JWKS_TIMEOUT_SEC must be > 0")

    @property
    def enabled(self) -> bool:
        return self.mode == "jwt" or (
            self.mode == "" and bool(self.jwt_secret or self.jwt_public_key_file or self.jwks_url)
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class GatewayConfig:
    listen: ListenConfig = nested(ListenConfig)
    auth: AuthConfig = nested(AuthConfig)
    limits: LimitsConfig = nested(LimitsConfig)
    session: SessionConfig = nested(SessionConfig, env=SESSION_ENV)
    stages: StagePolicy = nested(StagePolicy)
    vad: VadLinkConfig = nested(VadLinkConfig)
    denoise: DenoiseLinkConfig = nested(DenoiseLinkConfig)
    lid: LidLinkConfig = nested(LidLinkConfig)
    asr: AsrLinkConfig = nested(AsrLinkConfig)
    compress: CompressLinkConfig = nested(CompressLinkConfig)
    jobs: JobsConfig = nested(JobsConfig, env=JOBS_ENV)
    transcribe: TranscribeConfig = nested(TranscribeConfig, env=TRANSCRIBE_ENV)
    edge_tls: EdgeTlsConfig = nested(EdgeTlsConfig)  # wss:// (TLS_CERT_FILE, TLS_KEY_FILE)
    tls: TlsConfig = nested(TlsConfig)  # mTLS towards every service (GRPC_TLS_*, TLS_CA_FILE)

    def __post_init__(self) -> None:
        if not self.auth.enabled and self.auth.mode != "off" and not is_loopback(self.listen.host):
            raise ConfigError(
                f"AUTH_MODE: the gateway would listen on {self.listen.host} without authentication; set a key "
                "(AUTH_JWT_SECRET, AUTH_JWT_PUBLIC_KEY_FILE or AUTH_JWKS_URL) or AUTH_MODE=off explicitly"
            )
        if self.session.send_timeout_s <= 0:
            raise ConfigError("SEND_TIMEOUT_S must be > 0")
        if self.session.max_frame_bytes > self.listen.ws_max_message_bytes:
            raise ConfigError("MAX_FRAME_BYTES must not exceed WS_MAX_MESSAGE_BYTES")
        batches = (
            self.vad.batch_ms,
            self.denoise.batch_ms,
            self.compress.batch_ms,
            self.asr.batch_ms,
            self.lid.batch_ms,
        )
        if any(b <= 0 or b % self.session.frame_ms for b in batches):
            raise ConfigError("stage batch sizes (*_BATCH_MS) must be multiples of the 20 ms frame")
        # The session waits for exactly the stages this gateway runs.
        stages = self.active_stages
        session = replace(
            self.session,
            stages=stages,
            deferred_transcripts=StageName.ASR in stages,
            archive_spool=StageName.COMPRESS in stages and self.compress.spool_max_bytes > 0,
            stage_backlog_s=self.stages.backlog_s,
            stage_timeout_s=self.stages.timeout_s,
            admission=True,  # auth, ownership and flow_in_use are checked between `start` and `ack`
        )
        object.__setattr__(self, "session", session)
        # No plaintext off loopback unless it is asked for (docs/security.md#tls).
        self.edge_tls.check_plaintext(self.listen.host)
        self.tls.check_plaintext("the gateway dials", [host_of(a) for a in self.stage_addrs()])

    def stage_addrs(self) -> list[str]:
        """Every service address this gateway dials, the ASR members of ASR_ADDR included."""
        addrs = [getattr(self, name).addr for name in self.active_stages if name != StageName.ASR]
        if StageName.ASR in self.active_stages and not self.asr.routing_file:
            addrs += [a.strip() for a in self.asr.addr.split(",") if a.strip()]
        return addrs

    @property
    def active_stages(self) -> tuple[StageName, ...]:
        """Stages each session waits for, in the logical order of SPEC §1."""
        wanted = [
            (StageName.VAD, self.vad.enabled and bool(self.vad.addr)),
            (StageName.DENOISE, self.denoise.enabled and bool(self.denoise.addr)),
            (StageName.LID, self.lid.enabled and bool(self.lid.addr)),
            (StageName.ASR, self.asr.enabled and bool(self.asr.addr or self.asr.routing_file)),
            (StageName.COMPRESS, self.compress.enabled and bool(self.compress.addr)),
        ]
        return tuple(name for name, on in wanted if on)

    def routing_table(self) -> RoutingTable:
        if self.asr.routing_file:
            table = RoutingTable.load(self.asr.routing_file)
            members = [a for spec in table.pools for a in spec.addrs]
            self.tls.check_plaintext("the gateway dials", [host_of(a) for a in members])
            return table
        addrs = tuple(a.strip() for a in self.asr.addr.split(",") if a.strip())
        return RoutingTable.single_pool(addrs)
