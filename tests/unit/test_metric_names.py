"""The SPEC §7 metric names exist, and every component's metrics load in one process (the gateway
keeps its own registry: its stage latencies share their names with the services' ones)."""

import importlib

import pytest
from prometheus_client import REGISTRY as SERVICES
from prometheus_client import generate_latest

from orchestrator.metrics import REGISTRY as GATEWAY

pytestmark = pytest.mark.unit
MODULES = (
    "orchestrator.metrics",
    "orchestrator.routing.pool",
    "orchestrator.transcripts.runner",
    "services.vad.servicer",
    "services.denoise.servicer",
    "services.lid.servicer",
    "services.asr.metrics",
    "services.compress.service",
    "services.compress.uploader",
)
GATEWAY_NAMES = (
    "orchestrator_active_sessions",
    "ingress_bytes_total",
    "egress_events_total",
    "pcm_to_opus_fail_total",
    "vad_latency_ms",
    "dn_latency_ms",
    "lid_latency_ms",
    "compress_latency_ms",
    "asr_latency_ms",
)
SERVICE_NAMES = (
    "asr_rtf",
    "asr_latency_ms",
    "asr_inflight_sessions",
    "vad_latency_ms",
    "dn_latency_ms",
    "lid_latency_ms",
    "compress_latency_ms",
)


def test_all_metrics_load_together_and_carry_the_spec_names() -> None:
    for name in MODULES:
        importlib.import_module(name)
    gateway = generate_latest(GATEWAY).decode()
    services = generate_latest(SERVICES).decode()
    for name in GATEWAY_NAMES:
        assert f"# TYPE {name} " in gateway, name
    for name in SERVICE_NAMES:
        assert f"# TYPE {name} " in services, name
