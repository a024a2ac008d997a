"""The spans of one session at the gateway (SPEC §7; docs/observability.md#traces).

A tracing adapter beside the sans-I/O core, like `speech_latency.py` for the metrics: the driver tells
it what it moves, the core knows nothing of it. The driver builds one only while tracing is on.

    session                      WS accept to close; a child of the client's `start.traceparent`
    ├─ ws.accept                 connection accepted -> `start` received
    ├─ start                     `start` -> `ack` (token, limits, flowId ownership) or refusal
    ├─ stage.<name>              one per stage stream (vad, denoise, lid, asr, compress): the gRPC
    │   └─ <service> server span     calls made inside it carry its traceparent to the service
    └─ asr.utterance             per utterance: speech start (or first partial) -> final, with a
                                 `first_partial` event; no text is recorded
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from common import tracing
from orchestrator.core.events import SpeechBoundary, StageFailed, StageName, Transcript
from orchestrator.core.session import Session


class SessionTrace:
    def __init__(self) -> None:
        self._accepted_ns = time.time_ns()
        self._ctx: Context | None = None
        self._session: Span | None = None
        self._start: Span | None = None
        self._utterance: Span | None = None
        self._utterance_partials = 0
        self._stages: dict[StageName, Span] = {}
        self.trace_id: str | None = None

    def started(self, session: Session) -> str:
        """`start` was parsed: open the session's trace (under the client's traceparent, if it sent
        one) dated back to the accept; returns the trace id for the `ack`."""
        assert session.start is not None and session.flow_id is not None
        now = time.time_ns()
        tracer = tracing.tracer()
        parent = tracing.flow_context(session.flow_id, session.start.traceparent)
        self._session = tracer.start_span("session", context=parent, kind=SpanKind.SERVER, start_time=self._accepted_ns)
        self._ctx = trace.set_span_in_context(self._session, parent)
        tracer.start_span("ws.accept", context=self._ctx, start_time=self._accepted_ns).end(end_time=now)
        self._start = tracer.start_span("start", context=self._ctx, start_time=now)
        self.trace_id = tracing.trace_id_of(self._session)
        return self.trace_id

    def acknowledged(self, session: Session) -> None:
        if self._start is not None:
            self._start.set_attribute("speechgw.stages", [str(s) for s in session.stages])
            self._start.end()
            self._start = None

    @contextmanager
    def stage(self, name: StageName) -> Iterator[None]:
        """The span of one stage stream, current in the stage's task while it runs."""
        if self._ctx is None:
            yield
            return
        # The session's context (its baggage holds the flowId the services' spans take) becomes the
        # stage task's own, then the stage's span within it.
        token = otel_context.attach(self._ctx)
        try:
            with tracing.tracer().start_as_current_span(f"stage.{name}", kind=SpanKind.CLIENT) as span:
                self._stages[name] = span
                yield
        finally:
            otel_context.detach(token)

    def on_event(self, event: Any) -> None:
        """What a stage reported (the driver's `report`), for the utterance spans and stage failures."""
        if isinstance(event, SpeechBoundary):
            if event.kind == "start":
                self._open_utterance(event.pts_ns / 1e9)
        elif isinstance(event, Transcript):
            if self._utterance is None:
                self._open_utterance(event.start_s)
            assert self._utterance is not None
            if not event.final:
                if self._utterance_partials == 0:
                    self._utterance.add_event("first_partial", {"asr.pool": event.pool})
                self._utterance_partials += 1
                return
            self._utterance.set_attributes(
                {
                    "asr.pool": event.pool,
                    "asr.lang": event.lang,
                    "asr.start_s": event.start_s,
                    "asr.end_s": event.end_s,
                    "asr.partials": self._utterance_partials,
                }
            )
            self._utterance.add_event("final")
            self._close_utterance()
        elif isinstance(event, StageFailed):
            span = self._stages.get(event.stage)
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, event.message[:200]))

    def _open_utterance(self, speech_start_s: float) -> None:
        if self._ctx is None:
            return
        if self._utterance is not None:  # speech started again before the last one's final
            self._utterance.set_attribute("asr.final", False)
            self._close_utterance()
        self._utterance = tracing.tracer().start_span(
            "asr.utterance", context=self._ctx, attributes={"asr.speech_start_s": speech_start_s}
        )
        self._utterance_partials = 0

    def _close_utterance(self) -> None:
        if self._utterance is not None:
            self._utterance.end()
            self._utterance = None

    def closed(self, session: Session) -> None:
        """The session is over: end whatever is still open, with its outcome."""
        if self._start is not None:  # refused before `ack`
            code = session.fatal_code.value if session.fatal_code is not None else "refused"
            self._start.set_status(Status(StatusCode.ERROR, code))
            self._start.end()
            self._start = None
        if self._utterance is not None:
            self._utterance.set_attribute("asr.final", False)
            self._close_utterance()
        if self._session is None:
            return
        self._session.set_attribute("speechgw.end_reason", session.end_reason or "unknown")
        if session.lang:
            self._session.set_attribute("speechgw.lang", session.lang)
        if session.failed_stages:
            self._session.set_attribute("speechgw.failed_stages", sorted(str(s) for s in session.failed_stages))
        if session.fatal_code is not None:
            self._session.set_attribute("error.code", session.fatal_code.value)
            self._session.set_status(Status(StatusCode.ERROR, session.fatal_code.value))
        self._session.end()
        self._session = None
