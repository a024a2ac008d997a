"""The gateway's edge on a real WebSocket server in this process (127.0.0.1:0, fake stages): limits per
client, the Origin allow-list, and wire-level input errors (issue 10).

Clients connect from different loopback addresses (127.0.0.2, 127.0.0.3, ...) so that the limits per
address see an attacker and a legitimate client apart."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from orchestrator import metrics
from orchestrator.config import GatewayConfig, ListenConfig
from orchestrator.core.events import StageName
from orchestrator.core.session import SessionConfig
from orchestrator.edge.limits import LimitsConfig
from orchestrator.gateway import Gateway
from tests.fakes import SECOND, FakeStage
from tests.poll import seconds, until

pytestmark = pytest.mark.integration
ATTACKER, CLIENT = "127.0.0.2", "127.0.0.3"
START = json.dumps({"type": "start", "flowId": "legit", "return": ["record_url", "metrics"]})

GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayFactory]:
    """Start a gateway with the given limits (and listen/session settings) and one fake archive stage."""
    started: list[Gateway] = []

    async def start(
        limits: LimitsConfig | None = None, listen: dict[str, Any] | None = None, **session: Any
    ) -> Gateway:
        config = GatewayConfig(
            listen=ListenConfig(port=0, tick_s=0.05, **(listen or {})),
            limits=limits or LimitsConfig(),
            session=SessionConfig(**session),
        )
        gw = Gateway(config, stages=[FakeStage(StageName.COMPRESS)])
        await gw.start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.stop()


def url(gw: Gateway) -> str:
    return f"ws://127.0.0.1:{gw.port}/ws/stream"


def refusals(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("orchestrator_refusals_total", {"reason": reason}) or 0.0


async def events_until_close(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    events = []
    try:
        async with asyncio.timeout(seconds(10)):
            async for message in ws:
                events.append(json.loads(message))
    except ConnectionClosed:
        pass
    return events, ws.close_code


async def stream_one_session(gw: Gateway, source: str = CLIENT) -> tuple[list[dict[str, Any]], int | None]:
    async with connect(url(gw), local_addr=(source, 0)) as ws:
        await ws.send(START)
        await ws.send(SECOND[:32000])
        await ws.send('{"type":"flush"}')
        return await events_until_close(ws)


async def open_idle(gw: Gateway, n: int, source: str = ATTACKER) -> tuple[list[ClientConnection], list[int | None]]:
    """`n` sockets that never send `start`: the ones the gateway kept, and the close codes of the rest."""
    sockets = await asyncio.gather(*(connect(url(gw), local_addr=(source, 0)) for _ in range(n)))
    await until(lambda: gw.limits.pending + len([s for s in sockets if s.close_code is not None]) >= n, 20)
    await until(lambda: len(gw.drivers) == gw.limits.pending, 20, "refused connections to close")
    kept = [s for s in sockets if s.close_code is None]
    return kept, [s.close_code for s in sockets if s.close_code is not None]


async def close_all(sockets: list[ClientConnection]) -> None:
    await asyncio.gather(*(s.close() for s in sockets))


async def test_a_thousand_idle_sockets_leave_room_for_a_streaming_client(gateway: GatewayFactory) -> None:
    """The finding: 1000 sockets that never sent `start` filled MAX_SESSIONS (1000) for the start timeout
    and every legitimate client was refused with 1013. Default limits: one address gets its share of
    the pending pool (MAX_PENDING_PER_IP), the rest is refused with ip_pending_limit (1008)."""
    gw = await gateway(start_timeout_s=60.0)
    before = refusals("ip_pending_limit")
    kept, closed = await open_idle(gw, 1000)
    assert len(kept) == gw.config.limits.max_pending_per_ip == 16
    assert set(closed) == {1008} and refusals("ip_pending_limit") - before == 1000 - 16
    events, code = await stream_one_session(gw)
    assert [e["type"] for e in events] == ["ack", "metrics", "end"] and code == 1000
    await close_all(kept)


async def test_pending_connections_never_take_the_room_of_live_sessions(gateway: GatewayFactory) -> None:
    """Even with no per-address limits, connections before `start` count apart from MAX_SESSIONS."""
    off = LimitsConfig(max_connections_per_ip=0, max_pending_per_ip=0, max_pending=2000, max_sessions_per_ip=0)
    gw = await gateway(off, listen={"max_sessions": 4}, start_timeout_s=60.0)
    kept, closed = await open_idle(gw, 1000)
    assert len(kept) == 1000 and not closed and gw.limits.live == 0
    events, code = await stream_one_session(gw)
    assert [e["type"] for e in events] == ["ack", "metrics", "end"] and code == 1000
    await close_all(kept)


async def test_max_sessions_refuses_at_start_with_1013(gateway: GatewayFactory) -> None:
    gw = await gateway(LimitsConfig(max_sessions_per_ip=0, max_sessions_per_tenant=0), listen={"max_sessions": 1})
    async with connect(url(gw), local_addr=(CLIENT, 0)) as first:
        await first.send(START)
        assert json.loads(await first.recv())["type"] == "ack"
        before = refusals("too_many_sessions")
        async with connect(url(gw), local_addr=("127.0.0.4", 0)) as second:
            await second.send(START)
            events, code = await events_until_close(second)
        assert [e["code"] for e in events] == ["too_many_sessions"] and code == 1013
        assert refusals("too_many_sessions") - before == 1


async def test_pending_sockets_leave_after_the_start_timeout(gateway: GatewayFactory) -> None:
    gw = await gateway(start_timeout_s=0.3)
    async with connect(url(gw), local_addr=(ATTACKER, 0)) as ws:
        events, code = await events_until_close(ws)
    assert [e["code"] for e in events] == ["start_timeout"] and code == 1008
    await until(lambda: gw.limits.pending == 0, 5)


async def test_sessions_per_address_and_start_rate(gateway: GatewayFactory) -> None:
    gw = await gateway(LimitsConfig(max_sessions_per_ip=1, session_rate_per_s=0.001, session_burst=2))
    async with connect(url(gw), local_addr=(CLIENT, 0)) as first:
        await first.send(START)
        assert json.loads(await first.recv())["type"] == "ack"
        async with connect(url(gw), local_addr=(CLIENT, 0)) as second:
            await second.send(START)
            events, code = await events_until_close(second)
        assert [e["code"] for e in events] == ["ip_session_limit"] and code == 1008
    await until(lambda: gw.limits.live == 0, 5)
    assert (await stream_one_session(gw))[1] == 1000  # the second token of the burst
    events, code = await stream_one_session(gw)  # the bucket is empty: 0.001 starts per second
    assert [e["code"] for e in events] == ["session_rate_limited"] and code == 1013


async def test_connections_per_address(gateway: GatewayFactory) -> None:
    gw = await gateway(LimitsConfig(max_connections_per_ip=2), start_timeout_s=60.0)
    kept, closed = await open_idle(gw, 3)
    assert len(kept) == 2 and closed == [1008]
    assert refusals("ip_connection_limit") >= 1
    await close_all(kept)


@pytest.mark.parametrize(
    ("allowed", "origin", "status"),
    [
        ((), "https://evil.example", 403),  # the finding: any origin streamed
        (("https://app.example.com",), "https://evil.example", 403),
        (("https://app.example.com",), "https://app.example.com", None),
        ((), None, None),  # not a browser
    ],
)
async def test_origin_allow_list_before_the_upgrade(
    gateway: GatewayFactory, allowed: tuple[str, ...], origin: str | None, status: int | None
) -> None:
    gw = await gateway(LimitsConfig(allowed_origins=allowed))
    before = refusals("origin_not_allowed")
    if status is None:
        async with connect(url(gw), origin=origin) as ws:  # type: ignore[arg-type]
            await ws.send(START)
            assert json.loads(await ws.recv())["type"] == "ack"
        return
    with pytest.raises(InvalidStatus) as refused:
        await connect(url(gw), origin=origin)  # type: ignore[arg-type]
    assert refused.value.response.status_code == status
    assert json.loads(refused.value.response.body)["code"] == "origin_not_allowed"
    assert refusals("origin_not_allowed") - before == 1


async def test_invalid_utf8_text_closes_1007_and_keeps_the_accepted_audio(gateway: GatewayFactory) -> None:
    gw = await gateway()
    archive = gw._stages[0]
    assert isinstance(archive, FakeStage)
    async with connect(url(gw)) as ws:
        await ws.send(START)
        assert json.loads(await ws.recv())["type"] == "ack"  # else the library's close may overtake it
        await ws.send(SECOND)
        await ws.send(b'{"type":"flush\xff"}', text=True)
        _events, code = await events_until_close(ws)
    assert code == 1007
    await until(lambda: archive.audio_bytes == len(SECOND), 5, "the accepted second to reach the archive")


async def test_refusal_reasons_are_exported_at_zero() -> None:
    from prometheus_client import generate_latest

    text = generate_latest(metrics.REGISTRY).decode()
    for reason in ("origin_not_allowed", "too_many_pending", "session_rate_limited", "tenant_session_limit"):
        assert f'orchestrator_refusals_total{{reason="{reason}"}}' in text


async def test_event_loop_tasks_gauge_counts_connections_and_returns_to_its_baseline(gateway: GatewayFactory) -> None:
    """orchestrator_event_loop_tasks is read at scrape: each open connection holds tasks, and once they
    have closed the count is back where it was (the soak's leak check, docs/performance.md#soak)."""
    gw = await gateway(start_timeout_s=60.0)

    async def tasks() -> float:
        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{gw.port}/metrics", timeout=seconds(5)) as resp:
                return resp.read().decode()

        text = await asyncio.to_thread(scrape)
        return next(float(ln.split()[1]) for ln in text.splitlines() if ln.startswith("orchestrator_event_loop_tasks "))

    base = await tasks()
    sockets = [await connect(url(gw), local_addr=(CLIENT, 0)) for _ in range(5)]
    await until(lambda: gw.limits.pending == 5, 20, "five pending connections")
    assert await tasks() >= base + 5
    await close_all(sockets)

    async def back_to_base() -> bool:
        return await tasks() <= base

    await until(back_to_base, 20, "the tasks of the closed connections to end")
