"""Fuzzing the gateway's WebSocket endpoint (issue 10): sequences of start, audio, control and flush
frames, malformed ones among them (bad JSON, deep JSON, wrong types, oversize frames past the
library's cap, invalid UTF-8, binary before start, text after flush), sent over a real socket to a
gateway in this process with a fake archive stage.

Every sequence must end in documented error and close codes, never 1011, never an exception in the
gateway, with every connection's hold on the limits released; a session that reached `end` handed
all its audio to the archive. Deterministic (derandomized, bounded examples); `FUZZ_EXAMPLES` runs
more."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from orchestrator.config import GatewayConfig, ListenConfig
from orchestrator.core.events import StageName
from orchestrator.core.session import SessionConfig
from orchestrator.edge.limits import LimitsConfig
from orchestrator.gateway import Gateway
from tests.fakes import FakeStage
from tests.poll import seconds, wait_for
from tests.protocol_inputs import (
    CLIENT_CLOSE_CODES,
    GOOD_START,
    Big,
    Frame,
    audio_frames,
    control_texts,
    documented_codes,
    wire,
)
from tests.schemas import check_event

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
NO_LIMITS = LimitsConfig(
    max_connections_per_ip=0,
    max_pending_per_ip=0,
    max_sessions_per_ip=0,
    max_sessions_per_tenant=0,
    session_rate_per_s=0.0,
)


class InvalidUtf8:
    """A text frame whose payload is not UTF-8."""

    def __repr__(self) -> str:
        return "InvalidUtf8()"


Step = Frame | InvalidUtf8
steps = st.lists(
    st.one_of(control_texts, audio_frames, st.just(GOOD_START), st.just(InvalidUtf8())),
    max_size=8,
)


class Errors(logging.Handler):
    """Log records at ERROR or above (a crashed session, a failed client message)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class GatewayThread:
    """One gateway on its own event loop in a thread, for the whole module: each hypothesis example
    runs its client on that loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.archive = FakeStage(StageName.COMPRESS)
        config = GatewayConfig(
            listen=ListenConfig(port=0, tick_s=0.05, ws_max_message_bytes=16384),
            limits=NO_LIMITS,
            session=SessionConfig(max_frame_bytes=4096, flush_idle_s=1.0),
        )
        self.gateway = Gateway(config, stages=[self.archive])
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> GatewayThread:
        self._thread.start()
        self.run(self.gateway.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(self.gateway.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(seconds(5))
        self.loop.close()

    def run(self, coro: Any, timeout_s: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(seconds(timeout_s))


@pytest.fixture(scope="module")
def served() -> Iterator[GatewayThread]:
    errors = Errors()
    logging.getLogger("orchestrator").addHandler(errors)
    try:
        with GatewayThread() as gw:
            gw.errors = errors  # type: ignore[attr-defined]
            yield gw
    finally:
        logging.getLogger("orchestrator").removeHandler(errors)


async def play(port: int, sequence: list[Step], flush: bool) -> tuple[list[dict[str, Any]], int | None]:
    """Send the sequence (stopping if the gateway closes), then flush and wait, or just leave."""
    events: list[dict[str, Any]] = []
    async with connect(f"ws://127.0.0.1:{port}/ws/stream", max_size=None) as ws:

        async def read() -> None:
            try:
                async for message in ws:
                    events.append(json.loads(message))
            except ConnectionClosed:
                pass  # closed with an error code: the code is checked below

        reader = asyncio.create_task(read())
        try:
            for step in sequence:
                if isinstance(step, InvalidUtf8):
                    await ws.send(b'{"type":"flush"\xff}', text=True)
                else:
                    await ws.send(wire(step))
            if flush:
                await ws.send('{"type":"flush"}')
                async with asyncio.timeout(seconds(10)):
                    await ws.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            if not flush:
                await ws.close()
            await asyncio.wait_for(reader, seconds(10))
        return events, ws.close_code


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(sequence=steps, flush=st.booleans())
def test_the_endpoint_answers_any_sequence_with_documented_codes(
    served: GatewayThread, sequence: list[Step], flush: bool
) -> None:
    archived_before = served.archive.audio_bytes
    events, close_code = served.run(play(served.gateway.port, sequence, flush))
    gw = served.gateway
    wait_for(lambda: not gw.drivers, 10, "the session to finish on the gateway")
    assert (gw.limits.pending, gw.limits.live) == (0, 0)  # every hold on the limits released
    assert not served.errors.records, [r.getMessage() for r in served.errors.records]  # type: ignore[attr-defined]
    assert close_code in CLIENT_CLOSE_CODES, close_code
    for event in events:
        check_event(event)
        if event["type"] == "error":
            assert event["code"] in documented_codes(), event
    end = next((e for e in events if e["type"] == "end"), None)
    if end is not None:  # the session's audio went to the archive, every byte of it (`audio_s` is in ms)
        assert abs(served.archive.audio_bytes - archived_before - end["audio_s"] * 32000) <= 16


def test_an_oversize_message_past_the_library_cap_closes_1009(served: GatewayThread) -> None:
    events, close_code = served.run(play(served.gateway.port, [GOOD_START, Big(b"\x00", 20_000)], flush=True))
    assert close_code == 1009 and "error" not in [e["type"] for e in events]  # the library's refusal
