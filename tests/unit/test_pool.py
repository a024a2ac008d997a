"""Client-side load balancing and the open-with-retries policy, without sockets (SPEC §4)."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable

import grpc
import pytest

from orchestrator.metrics import REGISTRY
from orchestrator.routing.breaker import BreakerConfig, BreakerState
from orchestrator.routing.pool import AsrPool, Lease, Member, PoolExhausted, PoolSet, open_with_retries
from orchestrator.routing.table import PoolSpec, RoutingTable
from tests.clock import FakeClock
from tests.poll import until

pytestmark = pytest.mark.unit

BREAKER = BreakerConfig(failure_threshold=2, open_s=10.0, max_open_s=40.0)
_names = itertools.count()


def make_pool(n: int = 3, max_inflight: int = 0) -> AsrPool:
    """A pool with a fresh name, so metric samples are its own."""
    name = f"unit{next(_names)}"
    return AsrPool(PoolSpec(name, tuple(f"10.0.0.{i}:50051" for i in range(1, n + 1)), max_inflight), BREAKER)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=f"fake {code.name}")


def scripted(outcomes: dict[str, list[object]], calls: list[str]) -> Callable[[Member], Awaitable[str]]:
    """An open_fn: for each address, the next outcome is an exception to raise or a value to return."""

    async def open_fn(member: Member) -> str:
        calls.append(member.addr)
        await asyncio.sleep(0)
        outcome = outcomes[member.addr].pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return str(outcome)

    return open_fn


# --- pick ---------------------------------------------------------------------------------------


def test_equal_load_is_round_robin() -> None:
    pool = make_pool(3)
    picks = [pool.pick(0.0) for _ in range(6)]
    assert [m.addr[-7] for m in picks if m] == list("123123")


def test_least_inflight_wins() -> None:
    pool = make_pool(3)
    a, b, c = pool.members
    a.inflight, b.inflight, c.inflight = 2, 0, 1
    assert pool.pick(0.0) is b
    b.acquire()
    b.acquire()  # a=2 b=2 c=1
    assert pool.pick(0.0) is c


def test_acquire_release_balance_sessions() -> None:
    pool = make_pool(2)
    held = []
    for _ in range(6):
        m = pool.pick(0.0)
        assert m is not None
        m.acquire()
        held.append(m)
    assert Counter(m.addr for m in held) == {pool.members[0].addr: 3, pool.members[1].addr: 3}
    with held[0].lease() as m:
        assert m.inflight == 4
    assert held[0].inflight == 3
    for m in held:
        m.release()
    assert [m.inflight for m in pool.members] == [0, 0]
    pool.members[0].release()
    assert pool.members[0].inflight == 0  # never negative


def test_unhealthy_excluded_and_full_members_are_skipped() -> None:
    pool = make_pool(3, max_inflight=1)
    a, b, c = pool.members
    a.healthy = False
    assert pool.pick(0.0, exclude={b.addr}) is c
    c.acquire()
    assert c.full
    assert pool.pick(0.0, exclude={b.addr}) is None
    assert pool.why_none(0.0, exclude={b.addr}) == "full"
    assert pool.pick(0.0) is b


def test_none_reasons_are_counted() -> None:
    pool = make_pool(2)
    a, b = pool.members
    assert pool.pick(0.0, exclude={a.addr, b.addr}) is None
    a.healthy = b.healthy = False
    assert pool.pick(0.0) is None
    a.healthy = True
    for _ in range(2):
        a.record_failure(0.0)
    assert pool.pick(0.0) is None
    name = pool.name
    assert metric("orchestrator_asr_pool_picks_total", pool=name, result="tried_all") == 1
    assert metric("orchestrator_asr_pool_picks_total", pool=name, result="unhealthy") == 1
    assert metric("orchestrator_asr_pool_picks_total", pool=name, result="breaker_open") == 1
    assert metric("orchestrator_asr_pool_picks_total", pool=name, result="ok") == 0


def test_open_breaker_skips_then_half_open_gives_one_trial() -> None:
    pool = make_pool(2)
    a, b = pool.members
    a.record_failure(0.0)
    a.record_failure(0.0)
    assert metric("orchestrator_asr_pool_breaker_open_total", pool=pool.name, addr=a.addr) == 1
    assert {pool.pick(5.0) for _ in range(4)} == {b}
    b.healthy = False
    assert pool.pick(10.0) is a  # the trial
    assert a.breaker.state is BreakerState.HALF_OPEN
    assert pool.pick(10.0) is None  # no second trial while the first is out
    a.record_success(10.5)
    assert pool.pick(10.5) is a and pool.pick(10.5) is a


def test_unknown_member_address_is_a_clear_key_error() -> None:
    pool = make_pool(1)
    assert pool.member(pool.members[0].addr) is pool.members[0]
    with pytest.raises(KeyError, match="nope"):
        pool.member("nope")


# --- open_with_retries ---------------------------------------------------------------------------


async def test_first_member_opens() -> None:
    pool, calls = make_pool(2), list[str]()
    a = pool.members[0]
    lease = await open_with_retries(pool, scripted({a.addr: ["stream-a"]}, calls), FakeClock(), 3)
    assert isinstance(lease, Lease) and lease.member is a and lease.value == "stream-a"
    assert a.inflight == 1 and lease.attempts == ()
    with lease:
        pass
    lease.release()
    assert a.inflight == 0  # released once


async def test_failure_retries_next_member_and_counts_for_breaker() -> None:
    pool, calls, clock = make_pool(3), list[str](), FakeClock()
    a, b, c = pool.members
    fn = scripted({a.addr: [rpc_error(grpc.StatusCode.UNAVAILABLE)], b.addr: [TimeoutError()], c.addr: ["ok"]}, calls)
    lease = await open_with_retries(pool, fn, clock, 3)
    assert lease.member is c and calls == [a.addr, b.addr, c.addr]
    assert lease.attempts == ((a.addr, "UNAVAILABLE"), (b.addr, "timeout"))
    assert a.breaker.consecutive_failures == 1 and b.breaker.consecutive_failures == 1
    assert (a.inflight, b.inflight, c.inflight) == (0, 0, 1)


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL]
)
async def test_repeated_failures_open_the_breaker(code: grpc.StatusCode) -> None:
    pool, calls, clock = make_pool(1), list[str](), FakeClock()
    a = pool.members[0]
    fn = scripted({a.addr: [rpc_error(code), rpc_error(code), "never"]}, calls)
    for _ in range(2):
        with pytest.raises(PoolExhausted) as err:
            await open_with_retries(pool, fn, clock, 3)
        assert err.value.reason == "unavailable" and err.value.attempts == ((a.addr, code.name),)
    assert a.breaker.state is BreakerState.OPEN
    with pytest.raises(PoolExhausted, match="no member tried; others: breaker_open"):
        await open_with_retries(pool, fn, clock, 3)
    assert calls == [a.addr, a.addr]  # the open breaker kept the third call away


async def test_busy_tries_next_but_keeps_breaker_closed() -> None:
    pool, calls, clock = make_pool(2), list[str](), FakeClock()
    a, b = pool.members
    busy = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED)
    fn = scripted({a.addr: [busy] * 5, b.addr: [busy] * 5}, calls)
    for _ in range(4):
        with pytest.raises(PoolExhausted) as err:
            await open_with_retries(pool, fn, clock, 3)
        assert err.value.reason == "busy"
        assert {addr for addr, _ in err.value.attempts} == {a.addr, b.addr}
    assert a.breaker.state is BreakerState.CLOSED and a.breaker.consecutive_failures == 0
    assert a.inflight == b.inflight == 0
    assert metric("orchestrator_asr_pool_breaker_open_total", pool=pool.name, addr=a.addr) == 0


async def test_busy_and_down_members_report_busy() -> None:
    pool, calls, clock = make_pool(2), list[str](), FakeClock()
    a, b = pool.members
    fn = scripted(
        {
            a.addr: [rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED)],
            b.addr: [rpc_error(grpc.StatusCode.UNAVAILABLE)],
        },
        calls,
    )
    with pytest.raises(PoolExhausted) as err:
        await open_with_retries(pool, fn, clock, 3)
    assert err.value.reason == "busy" and err.value.pool == pool.name


async def test_client_side_cap_reports_busy_without_calling() -> None:
    pool, calls, clock = make_pool(1, max_inflight=1), list[str](), FakeClock()
    pool.members[0].acquire()
    with pytest.raises(PoolExhausted) as err:
        await open_with_retries(pool, scripted({}, calls), clock, 3)
    assert err.value.reason == "busy" and calls == []


async def test_max_attempts_bounds_the_members_tried() -> None:
    pool, calls, clock = make_pool(3), list[str](), FakeClock()
    fn = scripted({m.addr: [rpc_error(grpc.StatusCode.UNAVAILABLE)] for m in pool.members}, calls)
    with pytest.raises(PoolExhausted):
        await open_with_retries(pool, fn, clock, 2)
    assert len(calls) == 2


async def test_request_errors_propagate_without_verdict() -> None:
    pool, calls, clock = make_pool(2), list[str](), FakeClock()
    a = pool.members[0]
    fn = scripted({a.addr: [rpc_error(grpc.StatusCode.INVALID_ARGUMENT)]}, calls)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await open_with_retries(pool, fn, clock, 3)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert calls == [a.addr] and a.inflight == 0 and a.breaker.consecutive_failures == 0


async def test_half_open_trial_success_closes_and_failure_reopens() -> None:
    pool, calls, clock = make_pool(1), list[str](), FakeClock()
    a = pool.members[0]
    down = rpc_error(grpc.StatusCode.UNAVAILABLE)
    fn = scripted({a.addr: [down, down, down, "ok"]}, calls)
    for _ in range(2):
        with pytest.raises(PoolExhausted):
            await open_with_retries(pool, fn, clock, 1)
    clock.t += 10.0
    with pytest.raises(PoolExhausted):
        await open_with_retries(pool, fn, clock, 1)  # the failed trial
    assert a.breaker.state is BreakerState.OPEN and a.breaker.open_period_s == 20.0
    clock.t += 20.0
    lease = await open_with_retries(pool, fn, clock, 1)
    assert lease.member is a and a.breaker.state is BreakerState.CLOSED


async def test_cancelled_open_frees_the_member_and_its_trial() -> None:
    pool, clock = make_pool(1), FakeClock()
    a = pool.members[0]
    a.record_failure(clock.t)
    a.record_failure(clock.t)
    clock.t += 10.0
    started = asyncio.Event()

    async def hangs(member: Member) -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(open_with_retries(pool, hangs, clock, 3))
    await started.wait()
    assert a.inflight == 1 and not a.breaker.available(clock.t)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert a.inflight == 0 and a.breaker.available(clock.t)


async def test_concurrent_opens_spread_over_members() -> None:
    pool, clock = make_pool(2), FakeClock()
    gate, opening = asyncio.Event(), 0

    async def slow(member: Member) -> str:
        nonlocal opening
        opening += 1
        await gate.wait()
        return member.addr

    tasks = [asyncio.create_task(open_with_retries(pool, slow, clock, 3)) for _ in range(4)]
    await until(lambda: opening == 4, what="all four opens to be under way")
    assert [m.inflight for m in pool.members] == [2, 2]  # in flight while still opening
    gate.set()
    leases = await asyncio.gather(*tasks)
    assert Counter(lease.value for lease in leases) == {m.addr: 2 for m in pool.members}


# --- PoolSet (no channel is created without a health check) -------------------------------------


async def test_pool_set_routes_and_closes() -> None:
    table = RoutingTable.from_dict(
        {
            "default_pool": "ps_multi",
            "pools": {
                "ps_en": {"addrs": ["127.0.0.1:1", "127.0.0.1:2"]},
                "ps_multi": {"addrs": ["127.0.0.1:3"]},
            },
            "routes": [{"lang": "en", "pool": "ps_en"}],
        }
    )
    pools = PoolSet(table)
    assert pools.route("en-GB", "default") is pools.pool("ps_en")
    assert pools.route("zh", "default").name == "ps_multi"
    assert [m.addr for m in pools.members()] == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    assert metric("orchestrator_asr_pool_members_healthy", pool="ps_en") == 2
    with pytest.raises(KeyError, match="ps_en"):
        pools.pool("asr.fr")
    await pools.close()


def test_pick_serving_falls_back_to_another_pool_of_the_language() -> None:
    table = RoutingTable.from_dict(
        {
            "default_pool": "fb_multi",
            "pools": {
                "fb_en": {"addrs": ["127.0.0.1:11"]},
                "fb_multi": {"addrs": ["127.0.0.1:12"]},
                "fb_de": {"addrs": ["127.0.0.1:13"]},
            },
            "routes": [{"lang": "en", "pool": "fb_en"}, {"lang": "de", "pool": "fb_de"}],
        }
    )
    pools = PoolSet(table)
    for m in pools.members():
        m.healthy = True
    assert pools.pick_serving("en", "", 0.0) is pools.pool("fb_en").members[0]
    pools.pool("fb_en").members[0].healthy = False  # the English pool is gone
    assert pools.pick_serving("en", "", 0.0) is pools.pool("fb_multi").members[0]
    pools.pool("fb_multi").members[0].healthy = False
    assert pools.pick_serving("en", "", 0.0) is None  # never the German pool
    assert pools.pick_serving("de", "", 0.0) is pools.pool("fb_de").members[0]
