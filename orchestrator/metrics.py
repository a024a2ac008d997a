"""The gateway's Prometheus metrics; names are part of the contract (SPEC §7)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from common import tls
from orchestrator.edge.limits import REFUSAL_REASONS

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
for _reason in REFUSAL_REASONS:
    REFUSALS.labels(_reason.value)  # every reason is exported from the start, at 0
