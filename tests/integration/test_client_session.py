"""The client library's session API over a real socket: an in-process gateway on 127.0.0.1:0 with
no stages (a session ends as soon as it is flushed) and authentication on."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.envconf import load_env
from devtools.devauth import mint
from orchestrator.config import GatewayConfig
from orchestrator.gateway import Gateway
from speechgw_client import (
    Ack,
    ConnectError,
    End,
    Error,
    Event,
    Metrics,
    SessionClosed,
    audio_seconds,
    connect,
    stream_pcm,
)
from tests.poll import seconds
from tests.schemas import check_event

pytestmark = pytest.mark.integration

SECRET = "client-session-test-secret-0123456789abcdef"
AUD, ISS = "speechgw", "test-issuer"


def token(secret: str = SECRET) -> str:
    return mint(secret, "tenant-a", 300, audience=AUD, issuer=ISS)


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    env = {
        "GATEWAY_PORT": "0",
        "AUTH_JWT_SECRET": SECRET,
        "AUTH_JWT_AUDIENCE": AUD,
        "AUTH_JWT_ISSUER": ISS,
        "ENABLE_VAD": "false",
        "JOBS_DB": str(tmp_path / "jobs.sqlite"),
    }
    gw = Gateway(load_env(GatewayConfig, env))
    await gw.start()
    try:
        yield f"ws://127.0.0.1:{gw.port}/ws/stream"
    finally:
        await gw.stop()


async def read_all(events: AsyncIterator[Event]) -> list[Event]:
    return [e async for e in events]


@pytest.mark.parametrize("via", ["header", "subprotocol", "start"])
async def test_a_session_sends_audio_and_reads_typed_events(url: str, via: str) -> None:
    pcm = b"\x01\x00" * 16_000 * 3  # 3 s: more than one 64 KiB frame, split by `send`
    async with connect(url, token=token(), token_via=via, families=["metrics"]) as s:
        await s.send(pcm)
        await s.keepalive()
        await s.flush()
        events = await asyncio.wait_for(read_all(s.events()), seconds(10))
    for e in events:
        check_event(e.raw)
    assert [type(e) for e in events] == [Ack, Metrics, End]
    ack, metrics, end = events
    assert isinstance(ack, Ack) and ack.return_ == ["metrics"] and ack.limits.max_frame_bytes == 65_536
    assert isinstance(metrics, Metrics) and metrics.bytes_in == len(pcm)
    assert isinstance(end, End) and end.reason == "flush" and end.audio_s == audio_seconds(pcm) == 3.0
    assert s.flow_id == ack.flow_id and s.flow_id  # the gateway made one up
    assert s.progress.audio_bytes_sent == len(pcm) and s.progress.audio_s_sent == 3.0 and s.progress.flushed
    assert s.progress.events_read == 3 and s.close_code == 1000 and s.closed
    assert all(e.received_at is not None for e in events)


async def test_a_refused_token_is_an_error_event_and_sending_raises(url: str) -> None:
    async with connect(url, token=token("another-secret-0123456789abcdef-0123456789"), flow_id="f1") as s:
        events = await asyncio.wait_for(read_all(s.events()), seconds(10))
        with pytest.raises(SessionClosed) as closed:
            await s.send(b"\0\0" * 160)
    assert [(type(e), getattr(e, "code", None)) for e in events] == [(Error, "auth_invalid")]
    assert closed.value.code == 1008 == s.close_code and s.progress.audio_bytes_sent == 0


async def test_leaving_the_block_early_closes_the_connection(url: str) -> None:
    async with connect(url, token=token(), flow_id="early") as s:
        await s.send(b"\0\0" * 1600)
        first = await asyncio.wait_for(anext(aiter(s.events())), seconds(10))
    assert isinstance(first, Ack) and s.closed


async def test_stream_pcm_paces_sends_finalizes_and_collects(url: str) -> None:
    seen: list[str] = []
    result = await asyncio.wait_for(
        stream_pcm(
            url,
            b"\0\0" * 8000,
            speed=0,
            chunk_ms=40,
            token=token(),
            start={"return": ["metrics"]},
            finalize_at_s=[0.2],
            on_event=lambda e: seen.append(e.type),
        ),
        seconds(10),
    )
    assert result.ok and seen == [e["type"] for e in result.events] == ["ack", "metrics", "end"]
    assert result.typed[0].raw is result.events[0] and len(result.received_at) == 3
    assert result.audio_s_sent == 0.5 and result.close_code == 1000 and result.finals == []


async def test_a_closed_port_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectError):
        async with connect(f"ws://127.0.0.1:{port}/ws/stream", open_timeout_s=seconds(5)):
            pass
