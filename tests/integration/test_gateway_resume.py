"""Resume by flowId over real sockets (docs/protocol.md#resume): an in-process gateway on 127.0.0.1:0
with authentication and one fake archive stage; the client's TCP connection is cut (aborted, no
close frame), then a new connection resumes the session, or is refused with its code."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from devtools.client import connect_kwargs
from devtools.devauth import DEV_AUDIENCE, DEV_ISSUER, mint
from orchestrator import metrics
from orchestrator.config import AuthConfig, GatewayConfig, ListenConfig
from orchestrator.core.events import StageName
from orchestrator.core.session import SessionConfig
from orchestrator.gateway import Gateway
from tests.fakes import FakeStage
from tests.poll import seconds, until
from tests.schemas import check_event

pytestmark = pytest.mark.integration
SECRET = "gateway-resume-test-secret-0123456789abcdef"
SECOND = b"\x01\x00" * 16000
FLUSH = json.dumps({"type": "flush"})

GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayFactory]:
    started: list[Gateway] = []

    async def start(auth: bool = True, **session: Any) -> Gateway:
        config = GatewayConfig(
            listen=ListenConfig(port=0, tick_s=0.05),
            auth=AuthConfig(jwt_secret=SECRET, audience=DEV_AUDIENCE, issuer=DEV_ISSUER) if auth else AuthConfig(),
            session=SessionConfig(**session),
        )
        gw = Gateway(config, stages=[FakeStage(StageName.COMPRESS)])
        await gw.start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.stop()


def token(sub: str) -> str:
    return mint(SECRET, sub, 300)


def start(flow: str, **over: Any) -> str:
    return json.dumps({"type": "start", "flowId": flow, "return": ["metrics"], **over})


def resumes(outcome: str) -> float:
    return metrics.REGISTRY.get_sample_value("orchestrator_resumes_total", {"outcome": outcome}) or 0.0


async def opened(gw: Gateway, sub: str) -> ClientConnection:
    return await connect(f"ws://127.0.0.1:{gw.port}/ws/stream", **connect_kwargs(token(sub)))


async def next_event(ws: ClientConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), seconds(5)))
    check_event(event)
    return event


async def rest(ws: ClientConnection) -> list[dict[str, Any]]:
    events = []
    try:
        async with asyncio.timeout(seconds(10)):
            async for raw in ws:
                events.append(json.loads(raw))
                check_event(events[-1])
    except ConnectionClosed:
        pass
    return events


async def cut(gw: Gateway, ws: ClientConnection, flow: str) -> None:
    """Cut the client's TCP connection (no close frame) and wait until the gateway waits for a resume."""
    assert ws.transport is not None
    ws.transport.abort()
    await until(
        lambda: any(d.session.flow_id == flow and d.session.awaiting_resume for d in gw.drivers),
        5,
        "the session waiting for its client",
    )


@pytest.mark.parametrize("auth", [True, False], ids=["jwt", "auth-off"])
async def test_a_cut_connection_is_resumed_and_the_session_goes_on(gateway: GatewayFactory, auth: bool) -> None:
    """With authentication the token's `sub` must be the same; without it the flowId alone names the flow."""
    gw = await gateway(auth=auth)
    before = resumes("resumed")
    first = await opened(gw, "tenant-a")
    await first.send(start("r1"))
    ack = await next_event(first)
    assert ack["seq"] == 1
    await first.send(SECOND)
    await until(lambda: any(d.session.audio_s >= 1.0 for d in gw.drivers), 5, "the first second accepted")
    await cut(gw, first, "r1")
    second = await opened(gw, "tenant-a")
    await second.send(start("r1", resume={"last_seq": 1, "audio_s": 1.0}))
    ack = await next_event(second)
    assert "seq" not in ack and ack["resume"]["resume_from_bytes"] == len(SECOND)
    await second.send(SECOND)
    await second.send(FLUSH)
    events = await rest(second)
    assert [(e["type"], e["seq"]) for e in events] == [("metrics", 2), ("end", 3)]
    assert events[0]["bytes_in"] == 2 * len(SECOND) and events[1]["reason"] == "flush"
    assert second.close_code == 1000 and resumes("resumed") == before + 1
    await until(lambda: not gw.drivers, 5, "every connection released")
    assert gw.limits.live == 0 and gw.limits.pending == 0


async def test_a_new_start_of_a_flow_waiting_for_its_client_is_flow_in_use(gateway: GatewayFactory) -> None:
    gw = await gateway()
    first = await opened(gw, "tenant-a")
    await first.send(start("r2"))
    await next_event(first)
    await cut(gw, first, "r2")
    again = await opened(gw, "tenant-a")
    await again.send(start("r2"))
    assert [e.get("code") for e in await rest(again)] == ["flow_in_use"] and again.close_code == 1008


@pytest.mark.parametrize(
    ("flow", "sub", "code"), [("nobody", "tenant-a", "resume_unknown"), ("r3", "tenant-b", "resume_forbidden")]
)
async def test_a_resume_of_an_unknown_or_foreign_flow_is_refused(
    gateway: GatewayFactory, flow: str, sub: str, code: str
) -> None:
    gw = await gateway()
    first = await opened(gw, "tenant-a")
    await first.send(start("r3"))
    await next_event(first)
    await cut(gw, first, "r3")
    before = resumes(code)
    other = await opened(gw, sub)
    await other.send(start(flow, resume={"last_seq": 1, "audio_s": 0}))
    await other.send(SECOND)  # never read: the refusal comes first
    events = await rest(other)
    assert [(e["type"], e["code"], e["fatal"]) for e in events] == [("error", code, True)]
    assert "seq" not in events[0]  # it answers this connection, it is not one of the flow's events
    assert other.close_code == 1008 and resumes(code) == before + 1
    assert any(d.session.flow_id == "r3" and d.session.awaiting_resume for d in gw.drivers)  # untouched


async def test_a_resume_after_the_window_is_resume_expired(gateway: GatewayFactory) -> None:
    gw = await gateway(resume_window_s=0.3)
    lapsed = resumes("lapsed")
    first = await opened(gw, "tenant-a")
    await first.send(start("r4"))
    await next_event(first)
    await first.send(SECOND)
    await cut(gw, first, "r4")
    await until(lambda: not gw.drivers, 5, "the session flushed once its window ended")
    assert resumes("lapsed") == lapsed + 1
    late = await opened(gw, "tenant-a")
    await late.send(start("r4", resume={"last_seq": 1, "audio_s": 1.0}))
    assert [e.get("code") for e in await rest(late)] == ["resume_expired"] and late.close_code == 1008


async def test_a_resume_with_a_bad_token_is_refused_like_any_start(gateway: GatewayFactory) -> None:
    gw = await gateway()
    first = await opened(gw, "tenant-a")
    await first.send(start("r5"))
    await next_event(first)
    await cut(gw, first, "r5")
    async with connect(f"ws://127.0.0.1:{gw.port}/ws/stream") as anonymous:
        await anonymous.send(start("r5", resume={"last_seq": 1, "audio_s": 0}))
        assert [e.get("code") for e in await rest(anonymous)] == ["auth_required"]
