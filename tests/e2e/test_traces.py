"""One session's trace across every process (docs/observability.md#traces): the real stack (gateway, VAD,
denoise, LID, ASR, archive, each its own process) exports OTLP/HTTP to a receiver of the test's own, and
the spans of the session form one connected trace under the client's `traceparent`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from devtools.client import stream_pcm
from devtools.stack import Stack
from tests.otlp_sink import OtlpSink, ReceivedSpan
from tests.poll import seconds
from tests.schemas import check_event

pytestmark = pytest.mark.e2e

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
PROCESSES = {"gateway", "vad", "denoise", "lid", "asr", "compress"}
STAGES = {"stage.vad", "stage.denoise", "stage.lid", "stage.asr", "stage.compress"}


@pytest.fixture(scope="module")
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as running:
        yield running


@pytest.fixture(scope="module")
def traced_stack(sink: OtlpSink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "STORAGE_BACKEND": "local",
        "LOG_LEVEL": "WARNING",
        "ENABLE_DENOISE": "true",
        "FLUSH_IDLE_SEC": "2.0",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    services = ("vad", "denoise", "lid", "asr.en", "compress")
    with Stack(services, env=env, workdir=tmp_path_factory.mktemp("traced")) as running:
        yield running


def connected(spans: list[ReceivedSpan], root_id: str) -> set[str]:
    """Ids of the spans that reach `root_id` by parent links."""
    by_id = {s.span_id: s for s in spans}
    reached = set()
    for s in spans:
        seen, cur = set(), s
        while cur is not None and cur.span_id not in seen:
            if cur.span_id == root_id:
                reached.add(s.span_id)
                break
            seen.add(cur.span_id)
            cur = by_id.get(cur.parent_span_id)
    return reached


def test_one_session_is_one_connected_trace_across_every_process(
    traced_stack: Stack, sink: OtlpSink, counting_pcm: bytes
) -> None:
    flow = "traced-counting"
    result = asyncio.run(
        stream_pcm(
            traced_stack.url,
            counting_pcm,
            speed=0,
            start={
                "flowId": flow,
                "return": ["lid", "asr", "record_url"],
                "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
            },
        )
    )
    assert result.ok, result.events
    (ack,) = result.of_type("ack")
    check_event(ack)
    assert ack["trace_id"] == CLIENT_TRACE
    assert result.of_type("asr_final") and result.of_type("record_url")

    def complete(spans: list[ReceivedSpan]) -> bool:
        ours = [s for s in spans if s.trace_id == CLIENT_TRACE]
        names = {s.name for s in ours}
        return {s.process for s in ours} >= PROCESSES and {
            "session",
            "ws.accept",
            "start",
            "asr.utterance",
            "archive.upload",
        } | STAGES <= names

    spans = sink.wait_for(complete, timeout_s=seconds(30))
    ours = [s for s in spans if s.trace_id == CLIENT_TRACE]
    (session,) = [s for s in ours if s.name == "session"]
    assert session.parent_span_id == CLIENT_SPAN and session.process == "gateway"
    # Every span of the trace hangs off the session span, whatever process sent it.
    assert connected(ours, session.span_id) == {s.span_id for s in ours}
    assert all(s.attributes.get("flowId") == flow for s in ours), [
        (s.process, s.name) for s in ours if s.attributes.get("flowId") != flow
    ]
    by_name = {s.name: s for s in ours}
    # Each service's server span is a child of the gateway's span of its stage.
    servers = {}
    for process in ("vad", "denoise", "lid", "asr", "compress"):
        parent = by_name[f"stage.{process}"]
        under = [s for s in ours if s.process == process and s.parent_span_id == parent.span_id]
        assert under and all(s.kind == 2 for s in under), f"no {process} server span under stage.{process}"
        servers[process] = under[0]
    assert by_name["archive.upload"].parent_span_id == servers["compress"].span_id
    utterances = [s for s in ours if s.name == "asr.utterance"]
    assert any("final" in u.events for u in utterances)
    assert any("first_partial" in u.events for u in utterances) or len(result.of_type("asr_partial")) == 0
    assert not any(k for s in ours for k in s.attributes if k in {"text", "asr.text"})


def test_no_traceparent_starts_a_trace_of_the_gateway(traced_stack: Stack, sink: OtlpSink, counting_pcm: bytes) -> None:
    result = asyncio.run(
        stream_pcm(traced_stack.url, counting_pcm[:32000], speed=0, start={"flowId": "traced-own", "return": []})
    )
    assert result.ok, result.events
    trace_id = result.of_type("ack")[0]["trace_id"]
    assert len(trace_id) == 32 and trace_id != CLIENT_TRACE
    spans = sink.wait_for(
        lambda spans: any(s.trace_id == trace_id and s.name == "session" for s in spans), timeout_s=seconds(30)
    )
    (session,) = [s for s in spans if s.trace_id == trace_id and s.name == "session"]
    assert session.parent_span_id == "" and session.attributes["flowId"] == "traced-own"
