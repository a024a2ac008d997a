"""Every bad input over a real socket: an `error` event with its stable code, then the documented
close code (docs/errors.md); nothing accepted is lost, and other sessions are not disturbed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from devtools.client import stream_pcm
from devtools.devauth import default_token
from devtools.launcher import launch
from devtools.stack import Stack
from speechgw_client import connect_kwargs
from tests.schemas import check_event

pytestmark = pytest.mark.e2e
START = {"type": "start", "flowId": "bad", "return": ["record_url", "metrics"]}


async def exchange(url: str, messages: list[str | bytes]) -> tuple[list[dict[str, Any]], int | None]:
    """Send `messages`, then read events until the server closes."""
    events: list[dict[str, Any]] = []
    async with connect(url, max_size=2**22, **connect_kwargs(default_token())) as ws:
        try:
            for m in messages:
                await ws.send(m)
        except ConnectionClosed:
            pass  # the server may close while we still send; what it said is read below
        try:
            async for raw in ws:
                events.append(json.loads(raw))
        except ConnectionClosed:
            pass
        code = ws.close_code
    for e in events:
        check_event(e)
    return events, code


CASES = [
    ("invalid_json", ["{not json"], 1002),
    ("invalid_message", ['"just a string"'], 1002),
    ("unknown_type", ['{"type":"dance"}'], 1002),
    ("audio_before_start", [b"\x00\x00" * 320], 1002),
    ("flush_before_start", ['{"type":"flush"}'], 1002),
    ("unsupported_codec", [json.dumps({**START, "audio": {"codec": "opus"}})], 1003),
    ("unsupported_sample_rate", [json.dumps({**START, "audio": {"sr": 44100}})], 1003),
    ("unsupported_channels", [json.dumps({**START, "audio": {"channels": 2}})], 1003),
    ("invalid_start", [json.dumps({**START, "return": "asr"})], 1002),
    ("invalid_flow_id", [json.dumps({**START, "flowId": "a/b"})], 1002),
    # issue 10: what was accepted (or crashed the session) before the input bounds
    ("json_too_deep", ["[" * 25_000 + "]" * 25_000], 1008),
    ("invalid_start", [json.dumps({**START, "hints": {"hotwords": ["w"] * 10_000}})], 1002),
    ("invalid_flow_id", [json.dumps({**START, "flowId": "a" + "." * 127})], 1002),
    ("frame_too_large", ['{"type":"start","hints":{"domain":"' + "€" * 30_000 + '"}}'], 1009),
]


@pytest.mark.parametrize(("code", "messages", "close"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_before_or_at_start(stack: Stack, code: str, messages: list[str | bytes], close: int) -> None:
    events, close_code = asyncio.run(exchange(stack.url, messages))
    assert [e["type"] for e in events] == ["error"]
    assert events[0]["code"] == code and events[0]["fatal"] is True
    assert close_code == close


@pytest.mark.parametrize(
    ("code", "bad", "close"),
    [
        ("duplicate_start", json.dumps(START), 1002),
        ("unknown_type", '{"type":"pause"}', 1002),
        ("invalid_json", "{", 1002),
        ("frame_too_large", b"\x00" * 70_000, 1009),
        ("json_too_deep", "[" * 25_000 + "]" * 25_000, 1008),  # was RecursionError, 1011, audio lost
    ],
)
def test_bad_input_mid_stream_keeps_accepted_audio(stack: Stack, code: str, bad: str | bytes, close: int) -> None:
    audio = b"\x01\x00" * 16000  # one second
    events, close_code = asyncio.run(exchange(stack.url, [json.dumps(START), audio, bad]))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "ack" and kinds[-1] == "end" and "error" in kinds
    err = events[kinds.index("error")]
    assert err["code"] == code and err["fatal"] is True
    (record,) = [e for e in events if e["type"] == "record_url"]
    assert record["duration_s"] == pytest.approx(1.0, abs=0.02)  # nothing accepted was lost
    assert events[-1]["reason"] == "error"
    assert close_code == close


def test_message_over_the_library_cap_is_closed_1009(stack: Stack) -> None:
    """Above WS_MAX_MESSAGE_BYTES (1 MiB) the WebSocket library itself closes with 1009."""

    async def oversize_after_ack() -> tuple[dict[str, Any], int | None]:
        # Wait for the ack first: the library's close may otherwise overtake it on the wire.
        async with connect(stack.url, max_size=2**22, **connect_kwargs(stack.token())) as ws:
            await ws.send(json.dumps(START))
            ack = json.loads(await ws.recv())
            with contextlib.suppress(ConnectionClosed):
                await ws.send(b"\x00" * (2**20 + 2))
                async for _ in ws:
                    pass
            return ack, ws.close_code

    ack, close_code = asyncio.run(oversize_after_ack())
    assert ack["type"] == "ack"
    assert close_code == 1009


def test_start_timeout(stack: Stack) -> None:
    """START_TIMEOUT_SEC=2 in this stack."""
    events, close_code = asyncio.run(exchange(stack.url, []))
    assert [e["code"] for e in events] == ["start_timeout"] and close_code == 1008


def test_one_bad_session_does_not_disturb_another(stack: Stack, counting_pcm: bytes) -> None:
    async def both() -> tuple[Any, Any]:
        good = asyncio.create_task(
            stream_pcm(
                stack.url, counting_pcm, speed=4.0, start={"flowId": "good", "return": ["record_url", "metrics"]}
            )
        )
        bad = asyncio.create_task(
            exchange(stack.url, [json.dumps({**START, "flowId": "evil"}), b"\x00" * 999, "{garbage", b"\x00" * 70_000])
        )
        return await good, await bad

    good, (bad_events, bad_close) = asyncio.run(both())
    assert good.ok and good.close_code == 1000
    assert good.of_type("metrics")[0]["bytes_in"] == len(counting_pcm)
    assert all(e["flowId"] == "good" for e in good.events)
    assert bad_close == 1002 and any(e.get("code") == "invalid_json" for e in bad_events)


def test_too_many_sessions_is_an_explicit_refusal(stack: Stack) -> None:
    env = {
        "MAX_SESSIONS": "1",
        "GATEWAY_PORT": "0",
        "LOG_LEVEL": "WARNING",
        "VAD_ADDR": stack.running["vad"].grpc_addr,
        "COMPRESS_ADDR": stack.running["compress"].grpc_addr,
    }
    gw = launch("gateway-small", [sys.executable, "-m", "orchestrator"], env=env)
    url = f"ws://127.0.0.1:{gw.http_port}/ws/stream"

    async def go() -> tuple[list[dict[str, Any]], int | None, list[dict[str, Any]]]:
        async with connect(url) as first:
            await first.send(json.dumps(START))
            await first.recv()
            refused, code = await exchange(url, [json.dumps(START)])  # live sessions are counted at `start`
            await first.send('{"type":"flush"}')
            rest = [json.loads(m) async for m in first]
        return refused, code, rest

    try:
        refused, code, rest = asyncio.run(go())
    finally:
        gw.stop()
    assert [e["code"] for e in refused] == ["too_many_sessions"] and code == 1013
    assert rest[-1]["type"] == "end"  # the session holding the slot was not disturbed
