"""The gateway's logs over real sockets (docs/observability.md#logs): every line one JSON object with the
SPEC §7 fields it has, the session's lines naming its trace, and no token in any line whichever way it
came (handshake header, subprotocol, `start.auth.token`, accepted or refused). An in-process gateway on
127.0.0.1:0 with authentication on, at DEBUG, tracing to the SDK's in-memory exporter."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common import tracing
from common.logs import json_handler
from common.tracing import TracingConfig
from tests.integration.test_gateway_auth import AUDIO, FLUSH, SECRET, running_gateway, session, start, token

pytestmark = pytest.mark.integration


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Every record of every logger at DEBUG, formatted as the processes format them."""
    out = io.StringIO()
    handler = json_handler(out)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def traced() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.setup_tracing("gateway", TracingConfig(), exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown_tracing()


def parse(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


async def test_no_token_reaches_the_logs_whichever_way_it_came(
    tmp_path: Path, log_lines: io.StringIO, traced: InMemorySpanExporter
) -> None:
    gw = await running_gateway(tmp_path)
    good, bad = token("tenant-logs"), token("tenant-logs", secret=SECRET + "x")
    try:
        for via in ("header", "subprotocol", "start"):
            msg = start(f"logs-{via}", auth={"token": good}) if via == "start" else start(f"logs-{via}")
            events, _ = await session(gw, [msg, AUDIO, FLUSH], good, via)
            assert events[0]["type"] == "ack" and events[-1]["type"] == "end"
            refused, _ = await session(gw, [start(f"logs-bad-{via}", auth={"token": bad}), FLUSH], bad, via)
            assert refused[0]["code"] == "auth_invalid"
    finally:
        await gw.stop()
    text = log_lines.getvalue()
    lines = parse(log_lines)  # every line is one JSON object
    assert any(line.get("flowId") == "logs-start" for line in lines)
    for tok in (good, bad):
        for part in [tok, *tok.split(".")]:  # the token and each of its segments (the signature, the claims)
            assert part not in text
    # The WebSocket library's own DEBUG lines (headers, frames) are what would carry it: none is kept.
    assert not [line for line in lines if line["logger"].startswith("websockets") and line["level"] == "debug"]


async def test_a_session_logs_its_stage_and_close_lines_with_its_trace(
    tmp_path: Path, log_lines: io.StringIO, traced: InMemorySpanExporter
) -> None:
    gw = await running_gateway(tmp_path, AUTH_MODE="off", ENABLE_COMPRESS="false")
    try:
        events, code = await session(gw, [start("logs-trace"), AUDIO, FLUSH], "")
    finally:
        await gw.stop()
    assert code == 1000
    trace_id = events[0]["trace_id"]
    closed = [line for line in parse(log_lines) if line.get("msg") == "session closed"]
    assert closed == [
        {
            **{k: closed[0][k] for k in ("ts", "level", "logger", "msg")},
            "flowId": "logs-trace",
            "stage": "gateway",
            "event": "flush",
            "trace_id": trace_id,
        }
    ]
    assert {s.name for s in traced.get_finished_spans()} >= {"session", "ws.accept", "start"}
