"""Traces and logs without sockets (docs/observability.md): the OTEL_* configuration, the span tree of a
session driven in memory, the server interceptor's context, and the trace ids of log lines. Spans go
to the SDK's in-memory exporter; the whole path over gRPC and OTLP/HTTP is tests/e2e/test_traces.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common import tracing
from common.envconf import ConfigError, load_env
from common.logs import JsonFormatter
from common.tracing import TracingConfig
from orchestrator.core.events import SpeechBoundary, StageName, Transcript
from orchestrator.core.session import Session, SessionConfig
from orchestrator.session_trace import SessionTrace

pytestmark = pytest.mark.unit

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.setup_tracing("test", TracingConfig(), exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown_tracing()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


# ----- configuration -----


def test_tracing_is_off_without_an_endpoint() -> None:
    assert not load_env(TracingConfig, {}).enabled
    assert not load_env(TracingConfig, {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}).enabled
    tracing.setup_tracing("test", load_env(TracingConfig, {}))
    assert not tracing.enabled() and tracing.client_interceptors() == [] and tracing.server_interceptors() == []


def test_an_endpoint_turns_tracing_on_unless_disabled() -> None:
    on = load_env(TracingConfig, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert on.enabled and on.traces_url == "http://collector:4318/v1/traces"
    full = load_env(TracingConfig, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c.example/otlp/spans"})
    assert full.enabled and full.traces_url == "https://c.example/otlp/spans"
    for off in ({"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}):
        assert not load_env(TracingConfig, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", **off}).enabled


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ("OTEL_TRACES_EXPORTER", "jaeger"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "no-equals-sign"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096"),
    ],
)
def test_a_bad_otel_variable_names_itself(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_env(TracingConfig, {name: value})


def test_the_sampler_names_build_the_sdks_samplers() -> None:
    ratio = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    assert tracing._sampler(load_env(TracingConfig, ratio)).get_description() == "TraceIdRatioBased{0.25}"
    parent = tracing._sampler(TracingConfig()).get_description()  # the default: parentbased_always_on
    assert parent.startswith("ParentBased{root:AlwaysOnSampler")
    never = tracing._sampler(load_env(TracingConfig, {"OTEL_TRACES_SAMPLER": "always_off"}))
    assert never.get_description() == "AlwaysOffSampler"


# ----- the session's spans -----


def session_started(traceparent: str | None) -> Session:
    session = Session(SessionConfig(stages=(StageName.VAD, StageName.ASR)), 0.0, "gen")
    start: dict[str, Any] = {"type": "start", "flowId": "flow-1"}
    if traceparent:
        start["traceparent"] = traceparent
    session.receive_text(json.dumps(start), 0.0)
    return session


def test_a_session_is_one_tree_under_the_clients_span(spans: InMemorySpanExporter) -> None:
    session = session_started(f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
    trace = SessionTrace()
    assert trace.started(session) == CLIENT_TRACE
    trace.acknowledged(session)

    async def stage() -> None:
        with trace.stage(StageName.ASR):
            assert tracing.current_flow_id() == "flow-1"  # the baggage the gRPC calls carry
            trace.on_event(SpeechBoundary("start", 100_000_000))
            trace.on_event(Transcript(False, "hello", 0.1, 0.5, pool="en"))
            trace.on_event(Transcript(False, "hello wor", 0.1, 0.9, pool="en"))
            trace.on_event(Transcript(True, "hello world", 0.1, 1.2, "en", pool="en"))

    asyncio.run(stage())
    session.receive_disconnect(1.0)
    trace.closed(session)
    got = by_name(spans)
    assert set(got) == {"session", "ws.accept", "start", "stage.asr", "asr.utterance"}
    root = got["session"]
    assert root.parent is not None and f"{root.parent.span_id:016x}" == CLIENT_SPAN
    for span in got.values():
        assert f"{span.context.trace_id:032x}" == CLIENT_TRACE
        assert span.attributes is not None and span.attributes["flowId"] == "flow-1"
        if span is not root:
            assert span.parent is not None and span.parent.span_id == root.context.span_id
    utterance = got["asr.utterance"]
    assert [e.name for e in utterance.events] == ["first_partial", "final"]
    assert utterance.attributes is not None and utterance.attributes["asr.partials"] == 2
    # No transcript text in any span.
    assert not any("hello" in str(v) for s in got.values() for v in (s.attributes or {}).values())


def test_without_traceparent_the_session_is_a_new_root(spans: InMemorySpanExporter) -> None:
    session = session_started(None)
    trace = SessionTrace()
    trace_id = trace.started(session)
    session.receive_disconnect(1.0)
    trace.closed(session)
    root = by_name(spans)["session"]
    assert root.parent is None and f"{root.context.trace_id:032x}" == trace_id != CLIENT_TRACE
    assert by_name(spans)["start"].status.status_code.name == "ERROR"  # never acknowledged


# ----- the server interceptor -----


class Details:
    """grpc.HandlerCallDetails as the server hands it to interceptors."""

    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


class Context:
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK


def test_the_server_span_continues_the_callers_trace(spans: InMemorySpanExporter) -> None:
    seen: list[tuple[str, str] | None] = []

    async def handler(request_iterator: Any, context: Any) -> str:
        seen.append(tracing.current_ids())
        return "done"

    async def continuation(details: Any) -> grpc.RpcMethodHandler:
        return grpc.stream_unary_rpc_method_handler(handler)

    metadata = (("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"), ("baggage", "flowId=flow-9"))

    async def call() -> Any:
        wrapped = await tracing.ServerTraceInterceptor().intercept_service(
            continuation, Details("/lid.v1.Lid/Detect", metadata)
        )
        health = await tracing.ServerTraceInterceptor().intercept_service(
            continuation, Details("/grpc.health.v1.Health/Check", metadata)
        )
        assert health.stream_unary is handler  # health checks are left alone
        return await asyncio.create_task(wrapped.stream_unary(iter(()), Context()))

    assert asyncio.run(call()) == "done"
    (server,) = spans.get_finished_spans()
    assert server.name == "lid.v1.Lid/Detect" and server.kind.name == "SERVER"
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CLIENT_SPAN
    assert server.attributes is not None and server.attributes["flowId"] == "flow-9"
    assert seen == [(CLIENT_TRACE, f"{server.context.span_id:016x}")]


# ----- logs -----


def log_line(**extra: Any) -> dict[str, Any]:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "stage done", None, None)
    record.__dict__.update(extra)
    parsed: dict[str, Any] = json.loads(JsonFormatter().format(record))
    return parsed


def test_a_line_under_a_span_names_its_trace_and_span(spans: InMemorySpanExporter) -> None:
    with tracing.span("archive.upload", flow_id="flow-3") as span:
        assert span is not None
        line = log_line(stage="compress", bytes_out=10)
        ctx = span.get_span_context()
    assert line["trace_id"] == f"{ctx.trace_id:032x}" and line["span_id"] == f"{ctx.span_id:016x}"
    assert line["flowId"] == "flow-3" and line["stage"] == "compress" and line["bytes_out"] == 10
    outside = log_line(stage="compress")
    assert "trace_id" not in outside and "span_id" not in outside


def test_a_line_has_the_spec_fields_it_is_given_and_no_others() -> None:
    fields = {
        "flowId": "f",
        "stage": "vad",
        "seq": 3,
        "sr": 16000,
        "ns": 20_000_000,
        "bytes_in": 640,
        "bytes_out": 0,
        "lang": "en",
        "model": "tiny.en",
        "latency_ms": 1.5,
        "err_code": "x",
    }
    line = log_line(**fields, pcm=b"\x01\x02", token="secret")
    assert {k: line[k] for k in fields} == fields
    assert {"ts", "level", "logger", "msg"} <= set(line)
    assert "pcm" not in line and "token" not in line  # only the listed fields leave the process
