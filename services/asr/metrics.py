"""Prometheus metrics of the ASR service; names from SPEC §7, labels `engine` and `model`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.asr.guards import GUARDS

ASR_RTF = Histogram(
    "asr_rtf",
    "Decode time / audio duration of one decode",
    ["engine", "model", "kind"],
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0),
)
ASR_LATENCY_MS = Histogram(
    "asr_latency_ms",
    "From the end of an event's audio reaching the service to the event sent",
    ["engine", "model", "type"],
    buckets=(5, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 2000, 5000, 10000),
)
ASR_INFLIGHT = Gauge("asr_inflight_sessions", "Streams holding a session slot", ["engine", "model"])
ASR_QUEUED = Gauge("asr_queued_sessions", "Streams waiting for a session slot", ["engine", "model"])
ASR_REFUSED = Counter("asr_refused_total", "Streams refused with RESOURCE_EXHAUSTED", ["engine", "model"])
ASR_EVENTS = Counter("asr_events_total", "Events sent", ["engine", "model", "type"])
ASR_PARTIALS_SKIPPED = Counter(
    "asr_partials_skipped_total",
    "Partial intervals that passed without a decode because the decoders were busy",
    ["engine", "model"],
)
ASR_QUEUE_DEPTH = Gauge("asr_queue_depth", "Decodes waiting for a decode worker", ["engine", "model"])
ASR_BATCH_SIZE = Histogram(
    "asr_batch_size",
    "Decodes (partials or finals) run together in one batched decode, observed per decode (ASR_BATCH_MAX)",
    ["engine", "model", "kind"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16),
)
ASR_DECODE_SECONDS = Counter(
    "asr_decode_seconds_total", "Wall time spent decoding, by kind", ["engine", "model", "kind"]
)
ASR_AUDIO_SECONDS = Counter(
    "asr_audio_seconds_total",
    "Audio received by sessions (decode seconds per audio second = asr_decode_seconds_total / this)",
    ["engine", "model"],
)
ASR_FINALS_REUSED = Counter(
    "asr_finals_reused_total", "Finals that reused the last partial's decode (no speech after it)", ["engine", "model"]
)
ASR_GUARD_REFUSED = Counter(
    "asr_guard_refused_total",
    "Decoded texts not sent because a hallucination guard refused them",
    ["engine", "model", "kind", "guard"],
)
ASR_PACKETS = Counter(
    "asr_packets_total",
    "Packets by outcome (decoded, concealed, late, duplicate, corrupt)",
    ["codec", "outcome"],
)
ASR_STREAM_ERRORS = Counter("asr_stream_errors_total", "Streams ended with an error status", ["code"])

EVENT_TYPES = ("ready", "partial", "final", "end", "error")
DECODE_KINDS = ("partial", "final")
PACKET_OUTCOMES = ("released", "concealed", "late", "duplicate", "corrupt")
STREAM_ERROR_CODES = ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED")
for _codec in ("opus", "pcm"):
    for _outcome in PACKET_OUTCOMES:
        ASR_PACKETS.labels(codec=_codec, outcome=_outcome)
for _code in STREAM_ERROR_CODES:
    ASR_STREAM_ERRORS.labels(code=_code)


def init_labels(engine: str, model: str) -> None:
    """The engine is loaded: export every label set of it at 0, so a fresh service shows 0, not "no data"."""
    labels = {"engine": engine, "model": model}
    for metric in (ASR_INFLIGHT, ASR_QUEUED, ASR_REFUSED, ASR_PARTIALS_SKIPPED, ASR_AUDIO_SECONDS, ASR_FINALS_REUSED):
        metric.labels(**labels)
    for event_type in EVENT_TYPES:
        ASR_EVENTS.labels(type=event_type, **labels)
    for kind in DECODE_KINDS:
        ASR_RTF.labels(kind=kind, **labels)
        ASR_DECODE_SECONDS.labels(kind=kind, **labels)
        ASR_BATCH_SIZE.labels(kind=kind, **labels)
        for guard in GUARDS:
            ASR_GUARD_REFUSED.labels(kind=kind, guard=guard, **labels)
    for event_type in ("partial", "final"):
        ASR_LATENCY_MS.labels(type=event_type, **labels)
