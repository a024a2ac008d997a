"""The gateway's configuration: one frozen dataclass, read from the environment in one place (SPEC §5)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from common.envconf import ConfigError, env_bool, env_float, env_int, env_str
from orchestrator.core.events import StageName
from orchestrator.core.session import SessionConfig
from orchestrator.routing.table import RoutingTable
from orchestrator.stages.opus_link import OpusLinkConfig
from orchestrator.transcripts.jobs import JobsConfig
from orchestrator.transcripts.transcribe import TranscribeConfig


@dataclass(frozen=True)
class StageAddrs:
    """host:port of each gRPC stage; empty means the stage is not configured."""

    vad: str = ""
    denoise: str = ""
    lid: str = ""
    asr: str = ""
    compress: str = ""


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_sessions: int = 1000
    # Hard cap of the WebSocket library: a larger message is refused by the library itself
    # (close 1009 with no error event). Messages between the session's max_frame_bytes and this
    # get a `frame_too_large` error event first.
    ws_max_message_bytes: int = 1024 * 1024
    session: SessionConfig = field(default_factory=SessionConfig)
    stages: StageAddrs = field(default_factory=StageAddrs)
    asr_link: OpusLinkConfig = field(default_factory=OpusLinkConfig)
    asr_link_batch_ms: int = 20
    asr_open_timeout_s: float = 3.0
    # While LID listens, stream to the default route's pool and show its partials (docs/routing.md).
    asr_provisional: bool = True
    # ROUTING_FILE (TOML, docs/routing.md) maps (language, domain) to ASR pools; without it,
    # ASR_ADDR (comma-separated) is one pool.
    routing_file: str = ""
    lid_first_n_s: float = 3.0
    lid_batch_ms: int = 100
    lid_timeout_s: float = 15.0
    enable_lid: bool = True
    jobs: JobsConfig = field(default_factory=JobsConfig)
    transcribe: TranscribeConfig = field(default_factory=TranscribeConfig)
    opus_threads: int = 2
    enable_vad: bool = True
    enable_asr: bool = True
    # Off by default: both denoise engines double Whisper's WER on noisy clips (docs/services/denoise.md).
    enable_denoise: bool = False
    enable_compress: bool = True
    vad_batch_ms: int = 100
    denoise_batch_ms: int = 40
    compress_batch_ms: int = 1000
    stage_backlog_s: float = 10.0
    stage_timeout_s: float = 15.0
    stage_connect_timeout_s: float = 2.0
    tick_s: float = 0.25
    drain_grace_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ConfigError("MAX_SESSIONS must be at least 1")
        if self.session.max_frame_bytes > self.ws_max_message_bytes:
            raise ConfigError("MAX_FRAME_BYTES must not exceed WS_MAX_MESSAGE_BYTES")
        batches = (
            self.vad_batch_ms,
            self.denoise_batch_ms,
            self.compress_batch_ms,
            self.asr_link_batch_ms,
            self.lid_batch_ms,
        )
        if any(b <= 0 or b % self.session.frame_ms for b in batches):
            raise ConfigError("stage batch sizes must be multiples of the 20 ms frame")

    @property
    def active_stages(self) -> tuple[StageName, ...]:
        """Stages each session waits for, in the logical order of SPEC §1."""
        wanted = [
            (StageName.VAD, self.enable_vad and bool(self.stages.vad)),
            (StageName.DENOISE, self.enable_denoise and bool(self.stages.denoise)),
            (StageName.LID, self.enable_lid and bool(self.stages.lid)),
            (StageName.ASR, self.enable_asr and bool(self.stages.asr or self.routing_file)),
            (StageName.COMPRESS, self.enable_compress and bool(self.stages.compress)),
        ]
        return tuple(name for name, on in wanted if on)

    def routing_table(self) -> RoutingTable:
        if self.routing_file:
            return RoutingTable.load(self.routing_file)
        addrs = tuple(a.strip() for a in self.stages.asr.split(",") if a.strip())
        return RoutingTable.single_pool(addrs)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewayConfig:
        session = SessionConfig(
            max_frame_bytes=env_int(env, "MAX_FRAME_BYTES", SessionConfig.max_frame_bytes),
            flush_idle_s=env_float(env, "FLUSH_IDLE_SEC", SessionConfig.flush_idle_s),
            start_timeout_s=env_float(env, "START_TIMEOUT_SEC", SessionConfig.start_timeout_s),
            max_session_s=env_float(env, "MAX_SESSION_SEC", SessionConfig.max_session_s),
            partial_interval_ms=env_int(env, "PARTIAL_INTERVAL_MS", SessionConfig.partial_interval_ms),
        )
        stages = StageAddrs(
            vad=env_str(env, "VAD_ADDR", ""),
            denoise=env_str(env, "DENOISE_ADDR", ""),
            lid=env_str(env, "LID_ADDR", ""),
            asr=env_str(env, "ASR_ADDR", ""),
            compress=env_str(env, "COMPRESS_ADDR", ""),
        )
        base = cls(
            host=env_str(env, "GATEWAY_HOST", cls.host),
            port=env_int(env, "GATEWAY_PORT", cls.port),
            max_sessions=env_int(env, "MAX_SESSIONS", cls.max_sessions),
            ws_max_message_bytes=env_int(env, "WS_MAX_MESSAGE_BYTES", cls.ws_max_message_bytes),
            session=session,
            stages=stages,
            asr_link=OpusLinkConfig(
                codec=env_str(env, "ASR_LINK_CODEC", OpusLinkConfig.codec),
                bitrate=env_int(env, "ASR_LINK_BITRATE", OpusLinkConfig.bitrate),
                frame_ms=env_int(env, "ASR_LINK_FRAME_MS", OpusLinkConfig.frame_ms),
                vbr=env_bool(env, "ASR_LINK_VBR", OpusLinkConfig.vbr),
                complexity=env_int(env, "ASR_LINK_COMPLEXITY", OpusLinkConfig.complexity),
                fault_after_frames=env_int(env, "OPUS_FAULT_AFTER_FRAMES", 0),
            ),
            asr_link_batch_ms=env_int(env, "ASR_LINK_BATCH_MS", cls.asr_link_batch_ms),
            asr_open_timeout_s=env_float(env, "ASR_OPEN_TIMEOUT_SEC", cls.asr_open_timeout_s),
            asr_provisional=env_bool(env, "ASR_PROVISIONAL", cls.asr_provisional),
            routing_file=env_str(env, "ROUTING_FILE", cls.routing_file),
            lid_first_n_s=env_float(env, "LID_FIRST_N_SECONDS", cls.lid_first_n_s),
            lid_batch_ms=env_int(env, "LID_BATCH_MS", cls.lid_batch_ms),
            lid_timeout_s=env_float(env, "LID_TIMEOUT_SEC", cls.lid_timeout_s),
            enable_lid=env_bool(env, "ENABLE_LID", cls.enable_lid),
            jobs=JobsConfig.from_env(env),
            transcribe=TranscribeConfig.from_env(env),
            opus_threads=env_int(env, "OPUS_THREADS", cls.opus_threads),
            enable_vad=env_bool(env, "ENABLE_VAD", cls.enable_vad),
            enable_asr=env_bool(env, "ENABLE_ASR", cls.enable_asr),
            enable_denoise=env_bool(env, "ENABLE_DENOISE", cls.enable_denoise),
            enable_compress=env_bool(env, "ENABLE_COMPRESS", cls.enable_compress),
            vad_batch_ms=env_int(env, "VAD_BATCH_MS", cls.vad_batch_ms),
            denoise_batch_ms=env_int(env, "DENOISE_BATCH_MS", cls.denoise_batch_ms),
            compress_batch_ms=env_int(env, "COMPRESS_BATCH_MS", cls.compress_batch_ms),
            stage_backlog_s=env_float(env, "STAGE_BACKLOG_SEC", cls.stage_backlog_s),
            stage_timeout_s=env_float(env, "STAGE_TIMEOUT_SEC", cls.stage_timeout_s),
            drain_grace_s=env_float(env, "DRAIN_GRACE_SEC", cls.drain_grace_s),
        )
        return base.with_session_stages()

    def with_session_stages(self) -> GatewayConfig:
        """The session waits for exactly the stages this gateway runs."""
        from dataclasses import replace

        stages = self.active_stages
        session = replace(
            self.session,
            stages=stages,
            deferred_transcripts=StageName.ASR in stages,
            stage_backlog_s=self.stage_backlog_s,
            stage_timeout_s=self.stage_timeout_s,
        )
        return replace(self, session=session)
