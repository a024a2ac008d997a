"""Pool health and retries against real grpc.aio servers on 127.0.0.1:0, in process (SPEC §4)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from orchestrator.metrics import REGISTRY
from orchestrator.routing.pool import Member, PoolExhausted, PoolSet, open_with_retries
from orchestrator.routing.table import RoutingTable
from proto import asr_pb2, asr_pb2_grpc
from tests.conftest import seconds

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FakeRecognize(asr_pb2_grpc.RecognizeServicer):
    """Answers a Start with one `partial`, or refuses with RESOURCE_EXHAUSTED when busy."""

    def __init__(self, busy: bool) -> None:
        self.busy = busy

    async def Stream(
        self, request_iterator: AsyncIterator[asr_pb2.ClientFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[asr_pb2.AsrEvent]:
        first = await anext(aiter(request_iterator))
        if self.busy:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "ASR busy: fake")
        yield asr_pb2.AsrEvent(type="partial", flow_id=first.start.flow_id, text="hello")


class FakeAsr:
    """A grpc.aio server with grpc.health.v1 and a FakeRecognize, on 127.0.0.1."""

    def __init__(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType, busy: bool = False) -> None:
        self.status, self.busy = status, busy
        self.port = 0
        self.server: grpc.aio.Server | None = None

    async def start(self) -> FakeAsr:
        self.server = grpc.aio.server()
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self.server)
        asr_pb2_grpc.add_RecognizeServicer_to_server(FakeRecognize(self.busy), self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()
        await servicer.set("", self.status)
        self.health = servicer
        return self

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None


@contextlib.asynccontextmanager
async def fake_asrs(*specs: FakeAsr) -> AsyncIterator[list[FakeAsr]]:
    started = [await s.start() for s in specs]
    try:
        yield started
    finally:
        for s in started:
            await s.stop()


@contextlib.asynccontextmanager
async def pool_set(name: str, addrs: list[str], **sections: dict[str, float]) -> AsyncIterator[PoolSet]:
    health_cfg = {"interval_s": 0.05, "timeout_s": 0.5, "max_reconnect_backoff_ms": 300}
    table = RoutingTable.from_dict(
        {"default_pool": name, "pools": {name: {"addrs": addrs}}, "health": health_cfg, **sections}
    )
    pools = PoolSet(table)
    try:
        yield pools
    finally:
        await pools.close()


async def until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `cond` on the loop until true, or fail after `timeout_s` (scaled)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds(timeout_s)
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_watcher_marks_members_and_pick_follows() -> None:
    async with (
        fake_asrs(FakeAsr(SERVING), FakeAsr(NOT_SERVING)) as (up, down),
        pool_set("it_health", [down.addr, up.addr]) as pools,
    ):
        pool = pools.pool("it_health")
        m_up, m_down = pool.member(up.addr), pool.member(down.addr)
        pools.start_health_watch()
        await until(lambda: m_up.last_check_at is not None and not m_down.healthy, 5, "first probe round")
        assert m_up.healthy and m_down.last_check_error == "NOT_SERVING"
        assert {pool.pick(0.0) for _ in range(5)} == {m_up}
        assert REGISTRY.get_sample_value("orchestrator_asr_pool_members_healthy", {"pool": "it_health"}) == 1

        await up.stop()
        await until(lambda: not m_up.healthy, 5, "the stopped member to turn unhealthy")
        assert m_up.last_check_error in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
        assert pool.pick(0.0) is None and pool.why_none(0.0) == "unhealthy"
        assert REGISTRY.get_sample_value("orchestrator_asr_pool_members_healthy", {"pool": "it_health"}) == 0

        await down.health.set("", SERVING)
        await until(lambda: m_down.healthy, 5, "the NOT_SERVING member to recover")
        assert pool.pick(0.0) is m_down


async def test_restarted_member_is_seen_again() -> None:
    async with fake_asrs(FakeAsr(SERVING)) as (asr,), pool_set("it_restart", [asr.addr]) as pools:
        member = pools.pool("it_restart").members[0]
        pools.start_health_watch()
        await until(lambda: member.last_check_at is not None, 5, "first probe")
        await asr.stop()
        await until(lambda: not member.healthy, 5, "unhealthy after stop")
        await asr.start()  # same port
        await until(lambda: member.healthy, 10, "healthy after restart")


async def open_first_event(member: Member) -> grpc.aio.StreamStreamCall:
    """What the ASR stage gives open_with_retries: open the stream, wait for its first answer."""
    start = asr_pb2.ClientFrame(start=asr_pb2.Start(flow_id="f-pool", codec="pcm", sr=16000, channels=1))
    call = asr_pb2_grpc.RecognizeStub(member.channel()).Stream(iter([start]), timeout=seconds(5))
    try:
        event = await call.read()
    except BaseException:
        call.cancel()
        raise
    assert event.type == "partial"
    return call


async def test_open_with_retries_on_real_status_codes() -> None:
    async with (
        fake_asrs(FakeAsr(SERVING, busy=True), FakeAsr(SERVING), FakeAsr(SERVING)) as (busy, gone, ok),
        pool_set("it_open", [busy.addr, gone.addr, ok.addr], breaker={"failure_threshold": 1}) as pools,
    ):
        pool = pools.pool("it_open")
        await gone.stop()
        loop = asyncio.get_running_loop()
        lease = await open_with_retries(pool, open_first_event, loop.time, 3)
        with lease:
            assert lease.member.addr == ok.addr
            assert dict(lease.attempts) == {busy.addr: "RESOURCE_EXHAUSTED", gone.addr: "UNAVAILABLE"}
            lease.value.cancel()
        assert pool.member(busy.addr).breaker.consecutive_failures == 0
        assert not pool.member(gone.addr).breaker.available(loop.time())  # threshold 1: open

        await ok.stop()
        with pytest.raises(PoolExhausted) as err:
            await open_with_retries(pool, open_first_event, loop.time, 3)
        assert err.value.reason == "busy"
        assert dict(err.value.attempts) == {busy.addr: "RESOURCE_EXHAUSTED", ok.addr: "UNAVAILABLE"}
