"""Pool health and retries against real grpc.aio servers on 127.0.0.1:0, in process (SPEC §4)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from orchestrator.metrics import REGISTRY
from orchestrator.routing.pool import Member, PoolExhausted, PoolSet, open_with_retries
from orchestrator.routing.table import RoutingTable
from proto import asr_pb2, asr_pb2_grpc
from tests.fakes import NOT_SERVING, SERVING, FakeAsrServer, FakeRecognizer
from tests.poll import seconds, until

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def fake_asrs(*specs: FakeAsrServer) -> AsyncIterator[list[FakeAsrServer]]:
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


async def next_round(member: Member) -> None:
    """Wait until `member` is probed again: the round before, which refreshes the healthy-members gauge
    once all its probes are in, has then ended."""
    seen = member.last_check_at
    await until(lambda: member.last_check_at != seen, 5, "another probe round")


async def test_watcher_marks_members_and_pick_follows() -> None:
    async with (
        fake_asrs(FakeAsrServer(), FakeAsrServer(status=NOT_SERVING)) as (up, down),
        pool_set("it_health", [down.addr, up.addr]) as pools,
    ):
        pool = pools.pool("it_health")
        m_up, m_down = pool.member(up.addr), pool.member(down.addr)
        pools.start_health_watch()
        await until(lambda: m_up.last_check_at is not None and not m_down.healthy, 5, "first probe round")
        await next_round(m_up)
        assert m_up.healthy and m_down.last_check_error == "NOT_SERVING"
        assert {pool.pick(0.0) for _ in range(5)} == {m_up}
        assert REGISTRY.get_sample_value("orchestrator_asr_pool_members_healthy", {"pool": "it_health"}) == 1

        await up.stop()
        await until(lambda: not m_up.healthy, 5, "the stopped member to turn unhealthy")
        await next_round(m_up)
        assert m_up.last_check_error in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
        assert pool.pick(0.0) is None and pool.why_none(0.0) == "unhealthy"
        assert REGISTRY.get_sample_value("orchestrator_asr_pool_members_healthy", {"pool": "it_health"}) == 0

        await down.health.set("", SERVING)
        await until(lambda: m_down.healthy, 5, "the NOT_SERVING member to recover")
        assert pool.pick(0.0) is m_down


async def test_restarted_member_is_seen_again() -> None:
    async with fake_asrs(FakeAsrServer()) as (asr,), pool_set("it_restart", [asr.addr]) as pools:
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
    assert event.type == "ready"
    return call


async def test_open_with_retries_on_real_status_codes() -> None:
    async with (
        fake_asrs(FakeAsrServer(FakeRecognizer(mode="busy")), FakeAsrServer(), FakeAsrServer()) as (busy, gone, ok),
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
