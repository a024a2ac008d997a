"""The gateway's Prometheus metrics; names are part of the contract (SPEC §7)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from common import tls
from orchestrator.core.events import StageName
from orchestrator.core.protocol import FATAL_CLOSE, ErrorCode
from orchestrator.core.session import FAMILY_OF
from orchestrator.edge.limits import REFUSAL_REASONS

if TYPE_CHECKING:
    from orchestrator.routing.pool import AsrPool, Member

# The gateway's own registry: the stage latencies below share their SPEC §7 names with the services'
# metrics (the gateway's view vs the service's processing time), which a test process imports too.
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
# The certificate metrics of common/tls.py live in the services' default registry; the gateway shows them too.
REGISTRY.register(tls.CERT_EXPIRY)
REGISTRY.register(tls.RELOADS)

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 750, 1000, 2000, 5000, 10000)

ACTIVE_SESSIONS = Gauge("orchestrator_active_sessions", "WebSocket sessions open on this gateway", registry=REGISTRY)
INGRESS_BYTES = Counter("ingress_bytes_total", "Audio bytes received from clients", registry=REGISTRY)
EGRESS_EVENTS = Counter("egress_events_total", "Events sent to clients", ["type"], registry=REGISTRY)
SESSIONS = Counter("orchestrator_sessions_total", "Sessions ended, by end reason", ["reason"], registry=REGISTRY)
ERRORS = Counter("orchestrator_errors_total", "Error events sent, by code", ["code"], registry=REGISTRY)
REFUSALS = Counter(
    "orchestrator_refusals_total",
    "Connections and sessions refused by the gateway's limits, by reason (the error code)",
    ["reason"],
    registry=REGISTRY,
)
PENDING_CONNECTIONS = Gauge(
    "orchestrator_pending_connections",
    "WebSocket connections that have not sent start yet (their own pool, MAX_PENDING_CONNECTIONS)",
    registry=REGISTRY,
)
STAGE_FAILURES = Counter("orchestrator_stage_failures_total", "Stage calls that failed", ["stage"], registry=REGISTRY)
VAD_LATENCY = Histogram(
    "vad_latency_ms",
    "Send of the audio to the VAD boundary answer (gateway view)",
    buckets=LATENCY_BUCKETS_MS,
    registry=REGISTRY,
)
COMPRESS_LATENCY = Histogram(
    "compress_latency_ms",
    "End of audio to record_url (gateway view)",
    buckets=LATENCY_BUCKETS_MS,
    registry=REGISTRY,
)
ASR_LATENCY = Histogram(
    "asr_latency_ms",
    "Send of an utterance's last packet to its final (gateway view)",
    buckets=LATENCY_BUCKETS_MS,
    registry=REGISTRY,
)
PCM_TO_OPUS_FAIL = Counter(
    "pcm_to_opus_fail_total", "Sessions whose Opus encoder failed (PCM fallback)", registry=REGISTRY
)
ASR_LINK_BYTES = Counter("asr_link_bytes_total", "Bytes sent on the ASR link, by codec", ["codec"], registry=REGISTRY)
ASR_LINK_SESSIONS = Counter(
    "asr_link_sessions_total", "ASR link streams opened, by codec", ["codec"], registry=REGISTRY
)
ASR_ADMISSION_WAITING = Gauge(
    "orchestrator_asr_admission_waiting",
    "Sessions waiting for a free ASR member (every member of their pool busy)",
    registry=REGISTRY,
)
DN_LATENCY = Histogram(
    "dn_latency_ms",
    "Send of audio to its denoised return (gateway view)",
    buckets=LATENCY_BUCKETS_MS,
    registry=REGISTRY,
)
LID_LATENCY = Histogram(
    "lid_latency_ms",
    "First audio sent to the LID answer (gateway view)",
    buckets=LATENCY_BUCKETS_MS,
    registry=REGISTRY,
)
STAGE_LATENCY = {
    "vad": VAD_LATENCY,
    "denoise": DN_LATENCY,
    "lid": LID_LATENCY,
    "compress": COMPRESS_LATENCY,
    "asr": ASR_LATENCY,
}

# The SLOs (SPEC §6), per ASR pool. Finer buckets around the targets: first partial P50 300 ms and
# P95 600 ms, a final about 1 s after the end of speech.
FIRST_PARTIAL_BUCKETS_MS = (
    50, 100, 150, 200, 250, 300, 350, 400, 450, 500, 550, 600, 700, 800, 1000, 1500, 2000, 3000, 5000, 10000,
)  # fmt: skip
FINAL_LAG_BUCKETS_MS = (
    100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200, 1400, 1600, 2000, 2500, 3000, 5000, 10000,
)  # fmt: skip
FIRST_PARTIAL_LATENCY = Histogram(
    "orchestrator_first_partial_latency_ms",
    "Arrival of a session's first speech sample (VAD speech start) to its first asr_partial, by ASR pool",
    ["pool"],
    buckets=FIRST_PARTIAL_BUCKETS_MS,
    registry=REGISTRY,
)
FINAL_LAG = Histogram(
    "orchestrator_final_lag_ms",
    "Arrival of the audio at a VAD speech end to the asr_final of that utterance, by ASR pool",
    ["pool"],
    buckets=FINAL_LAG_BUCKETS_MS,
    registry=REGISTRY,
)
SESSION_OUTCOMES = Counter(
    "orchestrator_session_outcomes_total",
    "Sessions ended, by end reason (flush, disconnect, idle, shutdown, error, refused) and fatal error code (none)",
    ["reason", "code"],
    registry=REGISTRY,
)
SESSION_MODES = Counter(
    "orchestrator_session_modes_total",
    "Streamed sessions ended, by ASR mode: live, record_only (transcript deferred), asr_lost, no_asr",
    ["mode"],
    registry=REGISTRY,
)
RESUMES = Counter(
    "orchestrator_resumes_total",
    "Resumes by outcome: resumed, lapsed (the window ended without one; the session was flushed), "
    "or the error code of a refused resume",
    ["outcome"],
    registry=REGISTRY,
)
AWAITING_RESUME = Gauge(
    "orchestrator_sessions_awaiting_resume",
    "Sessions whose client dropped and that wait for it to resume (at scrape)",
    registry=REGISTRY,
)
SEND_QUEUE_EVENTS = Gauge(
    "orchestrator_send_queue_events",
    "Events queued for clients and not yet written to their sockets, all sessions (at scrape)",
    registry=REGISTRY,
)
SEND_QUEUE_EVENTS_MAX = Gauge(
    "orchestrator_send_queue_events_max",
    "Events queued for the one session furthest behind (at scrape)",
    registry=REGISTRY,
)
SEND_BUFFER_BYTES = Gauge(
    "orchestrator_send_buffer_bytes",
    "Bytes in the WebSocket transports' write buffers, all sessions (at scrape)",
    registry=REGISTRY,
)
STAGE_UP = Gauge(
    "orchestrator_stage_up",
    "Whether each configured stage answers its health check: 1 serving, 0 down (ASR: any pool member) (at scrape)",
    ["stage"],
    registry=REGISTRY,
)
EVENT_LOOP_TASKS = Gauge(
    "orchestrator_event_loop_tasks",
    "asyncio tasks not yet done on the gateway's event loop (at scrape)",
    registry=REGISTRY,
)
DRAINING = Gauge(
    "orchestrator_draining",
    "1 while the gateway drains on SIGTERM (not ready, refusing new sessions), else 0 (at scrape)",
    registry=REGISTRY,
)
BREAKER_STATE = Gauge(
    "orchestrator_asr_member_breaker_state",
    "Circuit breaker state per ASR pool member: 0 closed, 1 half-open, 2 open (at scrape)",
    ["pool", "addr"],
    registry=REGISTRY,
)

# Every label value known at start is exported from the start, at 0: a fresh gateway shows 0, not "no data".
ARCHIVE_SPOOL_BYTES = Gauge(
    "orchestrator_archive_spool_bytes",
    "Session audio on the gateway's archive spool: live sessions' and those waiting for an archive member",
    registry=REGISTRY,
)
ARCHIVE_SPOOL_RECORDINGS = Gauge(
    "orchestrator_archive_spool_recordings", "Sessions with audio on the gateway's archive spool", registry=REGISTRY
)
ARCHIVE_SPOOL_UPLOADS = Counter(
    "orchestrator_archive_spool_uploads_total",
    "Uploads of spooled sessions to the archive, by outcome (stored, failed, dropped)",
    ["outcome"],
    registry=REGISTRY,
)
ARCHIVE_SPOOL_REFUSED = Counter(
    "orchestrator_archive_spool_refused_total",
    "Sessions whose audio the spool stopped keeping (ARCHIVE_SPOOL_MAX_BYTES reached, or a disk error)",
    registry=REGISTRY,
)
for _outcome in ("stored", "failed", "dropped"):
    ARCHIVE_SPOOL_UPLOADS.labels(_outcome)


def spool_changed(size_bytes: int, recordings: int) -> None:
    ARCHIVE_SPOOL_BYTES.set(size_bytes)
    ARCHIVE_SPOOL_RECORDINGS.set(recordings)


EVENT_TYPES = ("ack", "end", "error", *FAMILY_OF)
END_REASONS = ("flush", "disconnect", "idle", "shutdown")
SESSION_MODE_NAMES = ("live", "record_only", "asr_lost", "no_asr")
LINK_CODECS = ("opus", "pcm")
RESUME_OUTCOMES = (
    "resumed",
    "lapsed",
    ErrorCode.RESUME_EXPIRED.value,
    ErrorCode.RESUME_UNKNOWN.value,
    ErrorCode.RESUME_FORBIDDEN.value,
)
for _reason in REFUSAL_REASONS:
    REFUSALS.labels(_reason.value)
for _type in EVENT_TYPES:
    EGRESS_EVENTS.labels(_type)
for _code in ErrorCode:
    ERRORS.labels(_code.value)
for _reason_name in (*END_REASONS, "error"):
    SESSIONS.labels(_reason_name)
for _reason_name in END_REASONS:
    SESSION_OUTCOMES.labels(_reason_name, "none")
for _code in FATAL_CLOSE:
    SESSION_OUTCOMES.labels("error", _code.value)
    SESSION_OUTCOMES.labels("refused", _code.value)
for _outcome in RESUME_OUTCOMES:
    RESUMES.labels(_outcome)
for _mode in SESSION_MODE_NAMES:
    SESSION_MODES.labels(_mode)
for _stage in StageName:
    STAGE_FAILURES.labels(_stage.value)
for _codec in LINK_CODECS:
    ASR_LINK_BYTES.labels(_codec)
    ASR_LINK_SESSIONS.labels(_codec)


BREAKER_LEVELS = {"closed": 0, "half_open": 1, "open": 2}


def init_pools(pools: Mapping[str, AsrPool]) -> None:
    """The routing table is loaded: export every pool's SLO histograms and members' breakers at 0."""
    for name, pool in pools.items():
        FIRST_PARTIAL_LATENCY.labels(name)
        FINAL_LAG.labels(name)
        for member in pool.members:
            BREAKER_STATE.labels(name, member.addr).set(0)


def forget_members(members: Iterable[Member]) -> None:
    """Members gone from their pool's DNS name: their breaker series end with them."""
    for member in members:
        with contextlib.suppress(KeyError):
            BREAKER_STATE.remove(member.pool, member.addr)


def refresh_breakers(members: Iterable[Member], now: float) -> None:
    """Each member's effective breaker state (an open one past its period shows half-open)."""
    for member in members:
        BREAKER_STATE.labels(member.pool, member.addr).set(BREAKER_LEVELS[member.breaker.state_at(now).value])
