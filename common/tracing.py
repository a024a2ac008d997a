"""OpenTelemetry traces for every process (SPEC §7; docs/observability.md#traces).

Configured by the standard `OTEL_*` variables (`TracingConfig`, read by the one loader). Without an
endpoint, tracing is off: no SDK objects, no gRPC interceptors, and `enabled()` is False, so the hot
paths skip even the no-op API calls. With one, spans go in batches (a background thread) to an OTLP
collector over HTTP/protobuf.

The W3C `traceparent` (and a `baggage` entry holding the flowId) travel in gRPC metadata: the client
interceptor injects them from the current context on every call, the server interceptor extracts them
and runs the handler under a server span of the same trace. A span processor copies the baggage's
flowId onto every span, so `flowId` is an attribute of every span of every process.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import grpc
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from common.envconf import ConfigError, setting

log = logging.getLogger(__name__)

FLOW_ID = "flowId"  # the span attribute and baggage key of SPEC §7
PROTOCOLS = ("http/protobuf",)
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
EXPORTERS = ("otlp", "none")
_CARRIER_KEYS = ("traceparent", "tracestate", "baggage")
_HEALTH_PREFIX = "/grpc.health."  # probes every 2 s: not worth a trace


@dataclass(frozen=True)
class TracingConfig:
    """The `OTEL_*` variables this project honours (docs/configuration.md#traces); read by every process."""

    endpoint: str = setting("", env="OTEL_EXPORTER_OTLP_ENDPOINT")
    traces_endpoint: str = setting("", env="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    protocol: str = setting("http/protobuf", env="OTEL_EXPORTER_OTLP_PROTOCOL")
    headers: str = setting("", env="OTEL_EXPORTER_OTLP_HEADERS")
    timeout_ms: int = setting(10000, env="OTEL_EXPORTER_OTLP_TIMEOUT")
    exporter: str = setting("otlp", env="OTEL_TRACES_EXPORTER")
    service_name: str = setting("", env="OTEL_SERVICE_NAME")
    resource_attributes: str = setting("", env="OTEL_RESOURCE_ATTRIBUTES")
    sampler: str = setting("parentbased_always_on", env="OTEL_TRACES_SAMPLER")
    sampler_arg: float = setting(1.0, env="OTEL_TRACES_SAMPLER_ARG")
    disabled: bool = setting(False, env="OTEL_SDK_DISABLED")
    batch_delay_ms: int = setting(5000, env="OTEL_BSP_SCHEDULE_DELAY")
    batch_queue_size: int = setting(2048, env="OTEL_BSP_MAX_QUEUE_SIZE")
    batch_max_export: int = setting(512, env="OTEL_BSP_MAX_EXPORT_BATCH_SIZE")

    def __post_init__(self) -> None:
        for name in ("endpoint", "traces_endpoint"):
            url = getattr(self, name)
            if url and not url.startswith(("http://", "https://")):
                raise ConfigError(f"{name}={url!r} must be an http:// or https:// URL")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol={self.protocol!r}: only {', '.join(PROTOCOLS)} is supported")
        if self.exporter not in EXPORTERS:
            raise ConfigError(f"exporter={self.exporter!r}: expected one of {', '.join(EXPORTERS)}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler={self.sampler!r}: expected one of {', '.join(SAMPLERS)}")
        if not 0.0 <= self.sampler_arg <= 1.0:
            raise ConfigError(f"sampler_arg={self.sampler_arg} must be a ratio between 0 and 1")
        for name in ("timeout_ms", "batch_delay_ms", "batch_queue_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be > 0")
        if not 0 < self.batch_max_export <= self.batch_queue_size:
            raise ConfigError(
                f"batch_max_export={self.batch_max_export} must be > 0 and at most "
                f"batch_queue_size={self.batch_queue_size}"
            )
        _pairs(self.headers, "headers")
        _pairs(self.resource_attributes, "resource_attributes")

    @property
    def enabled(self) -> bool:
        return not self.disabled and self.exporter == "otlp" and bool(self.endpoint or self.traces_endpoint)

    @property
    def traces_url(self) -> str:
        """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, else the base endpoint plus `/v1/traces`."""
        return self.traces_endpoint or self.endpoint.rstrip("/") + "/v1/traces"


def _pairs(raw: str, name: str) -> dict[str, str]:
    """`k=v,k2=v2` (values percent-decoded), as OTEL_EXPORTER_OTLP_HEADERS and OTEL_RESOURCE_ATTRIBUTES."""
    out: dict[str, str] = {}
    for i, part in enumerate(raw.split(","), 1):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():  # the text is not echoed: headers may hold a collector's key
            raise ConfigError(f"{name}=...: entry {i} is not key=value")
        out[key.strip()] = unquote(value.strip())
    return out


# ----- the process's tracer -----

_tracer: Tracer | None = None  # None: tracing is off
_provider: Any = None
_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


def enabled() -> bool:
    """Whether this process records spans; callers skip all tracing work when not."""
    return _tracer is not None


def tracer() -> Tracer:
    assert _tracer is not None, "tracing is off: check enabled() first"
    return _tracer


def setup_tracing(process: str, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
    """Install the SDK for this process when an endpoint is set; otherwise leave tracing off. The
    service name is OTEL_SERVICE_NAME or `speechgw-<process>`; `speechgw.process` names the process.
    `exporter`: spans go there synchronously instead of to the OTLP endpoint (tests)."""
    global _tracer, _provider
    if not (config.enabled or exporter is not None) or _tracer is not None:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    attributes: dict[str, Any] = _pairs(config.resource_attributes, "resource_attributes")
    attributes |= {
        "service.name": config.service_name or f"speechgw-{process}",
        "speechgw.process": process,
        "process.pid": os.getpid(),
    }
    provider = TracerProvider(resource=Resource.create(attributes), sampler=_sampler(config))
    provider.add_span_processor(FlowIdProcessor())
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        _provider, _tracer = provider, provider.get_tracer("speechgw")
        return
    otlp = OTLPSpanExporter(
        endpoint=config.traces_url,
        headers=_pairs(config.headers, "headers"),
        timeout=config.timeout_ms / 1000,
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            otlp,
            max_queue_size=config.batch_queue_size,
            schedule_delay_millis=config.batch_delay_ms,
            max_export_batch_size=config.batch_max_export,
        )
    )
    _provider = provider
    _tracer = provider.get_tracer("speechgw")
    log.info("tracing on", extra={"stage": process, "event": "tracing_on"})


def shutdown_tracing() -> None:
    """Export what is queued and stop (at process exit)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def _sampler(config: TracingConfig) -> Any:
    from opentelemetry.sdk.trace import sampling

    name, ratio = config.sampler, config.sampler_arg
    root = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(ratio),
    }[name.removeprefix("parentbased_")]
    return sampling.ParentBased(root) if name.startswith("parentbased_") else root


class FlowIdProcessor(SpanProcessor):
    """Copies the flowId of the span's context (W3C baggage) onto the span: every span of every process
    carries `flowId` without each call site repeating it."""

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        flow_id = baggage.get_baggage(FLOW_ID, parent_context)
        if flow_id is not None and not (span.attributes or {}).get(FLOW_ID):
            span.set_attribute(FLOW_ID, str(flow_id))


# ----- contexts -----


def flow_context(flow_id: str, traceparent: str | None = None) -> Context:
    """A new root context for `flow_id`: the client's `traceparent` as the parent when given, and the
    flowId in baggage (so that every span under it, in every process, carries it)."""
    ctx = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else Context()
    return baggage.set_baggage(FLOW_ID, flow_id, ctx)


def trace_id_of(span: Span) -> str:
    return trace.format_trace_id(span.get_span_context().trace_id)


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span, for log lines; None when there is none."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)


def current_flow_id() -> str | None:
    value = baggage.get_baggage(FLOW_ID)
    return None if value is None else str(value)


@contextlib.contextmanager
def span(name: str, flow_id: str | None = None, **attributes: Any) -> Iterator[Span | None]:
    """A span under the current context (a new trace of `flow_id` when given), or nothing when
    tracing is off. For work outside a session's own spans: an archive upload, a deferred job."""
    if _tracer is None:
        yield None
        return
    ctx = flow_context(flow_id) if flow_id is not None and current_flow_id() != flow_id else None
    if flow_id is not None:
        attributes[FLOW_ID] = flow_id
    token = otel_context.attach(ctx) if ctx is not None else None
    try:
        with _tracer.start_as_current_span(name, attributes=attributes) as current:
            yield current
    finally:
        if token is not None:
            otel_context.detach(token)


# ----- gRPC: one interceptor pair -----


def _with_trace_metadata(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if not carrier:
        return details
    metadata = grpc.aio.Metadata(*(tuple(details.metadata) if details.metadata else ()), *carrier.items())
    return details._replace(metadata=metadata)


# grpc.aio files each interceptor under the first kind it is an instance of: one class per kind.
class _UnaryUnaryTrace(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_trace_metadata(client_call_details), request)


class _UnaryStreamTrace(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(_with_trace_metadata(client_call_details), request)


class _StreamUnaryTrace(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_trace_metadata(client_call_details), request_iterator)


class _StreamStreamTrace(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(_with_trace_metadata(client_call_details), request_iterator)


class ServerTraceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Runs every handler (health checks aside) under a server span that continues the caller's trace.

    The span is made current with `attach` and never detached: grpc.aio runs each call in a task of its
    own, so the context dies with the call, and a detach from another context (an async generator
    closed elsewhere) would only log an error."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or _tracer is None or method.startswith(_HEALTH_PREFIX):
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        carrier = {k: v for k, v in metadata if k in _CARRIER_KEYS and isinstance(v, str)}
        return _traced_handler(handler, method.lstrip("/"), _PROPAGATOR.extract(carrier))


def _enter(name: str, parent: Context, context: Any) -> Span:
    assert _tracer is not None
    span = _tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes={"rpc.system": "grpc"})
    otel_context.attach(trace.set_span_in_context(span, parent))
    return span


def _finish(span: Span, context: Any, error: BaseException | None = None) -> None:
    code = context.code() if hasattr(context, "code") else None
    if error is not None and not isinstance(error, GeneratorExit):
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
    elif code is not None and code != grpc.StatusCode.OK:
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(code)))
    if code is not None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
    span.end()


def _traced_handler(handler: grpc.RpcMethodHandler, name: str, parent: Context) -> grpc.RpcMethodHandler:
    kind = (
        ("stream" if handler.request_streaming else "unary")
        + "_"
        + ("stream" if handler.response_streaming else "unary")
    )
    inner = getattr(handler, kind)
    if inspect.isasyncgenfunction(inner):

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            span = _enter(name, parent, context)
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException as exc:
                _finish(span, context, exc)
                raise
            _finish(span, context)

        behavior: Any = streaming
    else:

        async def plain(request: Any, context: Any) -> Any:
            span = _enter(name, parent, context)
            try:
                result = await inner(request, context)
            except BaseException as exc:
                _finish(span, context, exc)
                raise
            _finish(span, context)
            return result

        behavior = plain
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def client_interceptors() -> list[Any]:
    """For every channel to an internal service (common/tls.grpc_channel): each call carries the current
    trace context (traceparent, baggage) in its metadata. None while tracing is off."""
    if _tracer is None:
        return []
    return [_UnaryUnaryTrace(), _UnaryStreamTrace(), _StreamUnaryTrace(), _StreamStreamTrace()]


def server_interceptors() -> list[Any]:
    """For every service's gRPC server (common/server.py); none while tracing is off."""
    return [ServerTraceInterceptor()] if _tracer is not None else []
