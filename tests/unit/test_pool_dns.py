"""Pool members from DNS names: resolution, members added and drained, resolver failures (docs/routing.md)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from orchestrator.metrics import REGISTRY
from orchestrator.routing.pool import PoolSet, hosts_file_resolver, member_addr, parse_hosts
from orchestrator.routing.table import RoutingTable

pytestmark = pytest.mark.unit

_names = itertools.count()


class FakeResolver:
    """A resolver whose answers the test sets: host -> addresses, or an exception to raise."""

    def __init__(self, answers: dict[str, Sequence[str] | Exception]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str) -> Sequence[str]:
        self.asked.append(host)
        answer = self.answers[host]
        if isinstance(answer, Exception):
            raise answer
        return answer


def make_pools(resolver: FakeResolver, **pool: object) -> tuple[str, PoolSet]:
    name = f"dns{next(_names)}"
    table = RoutingTable.from_dict({"default_pool": name, "pools": {name: pool}})
    return name, PoolSet(table, resolver=resolver)


def sample(metric: str, pool: str) -> float | None:
    return REGISTRY.get_sample_value(metric, {"pool": pool})


def test_parse_hosts_reads_addresses_aliases_and_skips_the_rest() -> None:
    text = """
    # comment
    127.0.0.2  asr.test  alias.test
    127.0.0.3  ASR.test   # trailing comment
    ::1        asr.test
    not-an-ip  asr.test
    127.0.0.2  asr.test
    10.0.0.9
    """
    assert parse_hosts(text) == {"asr.test": ["127.0.0.2", "127.0.0.3", "::1"], "alias.test": ["127.0.0.2"]}


def test_member_addresses_bracket_ipv6() -> None:
    assert member_addr("10.1.2.3", "50051") == "10.1.2.3:50051"
    assert member_addr("fd00::5", "50051") == "[fd00::5]:50051"


async def test_every_address_of_the_name_is_a_member() -> None:
    resolver = FakeResolver({"asr-en": ["10.0.0.1", "10.0.0.2", "10.0.0.3"]})
    name, pools = make_pools(resolver, dns=["asr-en:50051"])
    pool = pools.pool(name)
    assert pool.members == () and pool.pick(0.0) is None  # nothing known before the first resolution
    assert await pools.refresh_dns() == []
    assert [m.addr for m in pool.members] == ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"]
    assert all(m.dns_name == "asr-en" for m in pool.members)
    assert sample("orchestrator_asr_pool_members", name) == 3
    picked = {pool.pick(0.0).addr for _ in range(3)}  # type: ignore[union-attr]
    assert len(picked) == 3


async def test_fixed_addresses_and_names_add_up_without_duplicates() -> None:
    resolver = FakeResolver({"asr-en": ["10.0.0.1", "10.0.0.2"]})
    name, pools = make_pools(resolver, addrs=["10.0.0.1:50051", "10.9.9.9:50051"], dns=["asr-en:50051"])
    await pools.refresh_dns()
    addrs = [m.addr for m in pools.pool(name).members]
    assert addrs == ["10.0.0.1:50051", "10.9.9.9:50051", "10.0.0.2:50051"]
    assert pools.pool(name).members[0].dns_name == ""  # the fixed one stays fixed


async def test_a_vanished_member_drains_and_a_new_one_joins() -> None:
    resolver = FakeResolver({"asr-en": ["10.0.0.1", "10.0.0.2"]})
    name, pools = make_pools(resolver, dns=["asr-en:50051"])
    pool = pools.pool(name)
    await pools.refresh_dns()
    first, second = pool.members
    held = pool.pick(0.0, exclude={second.addr})
    assert held is first
    first.acquire()  # a live stream on the member about to vanish
    resolver.answers["asr-en"] = ["10.0.0.2", "10.0.0.3"]
    removed = await pools.refresh_dns()
    assert removed == [first]
    assert [m.addr for m in pool.members] == ["10.0.0.2:50051", "10.0.0.3:50051"]
    assert pool.members[0] is second  # kept members keep their breaker and counts
    assert pool.leaving == [first]  # not picked, still open for its stream
    assert all(pool.pick(0.0) is not first for _ in range(4))
    first.release()
    await pools.refresh_dns()
    assert pool.leaving == []  # its last stream ended: closed


async def test_a_failed_resolution_keeps_the_members() -> None:
    resolver = FakeResolver({"asr-en": ["10.0.0.1"]})
    name, pools = make_pools(resolver, dns=["asr-en:50051"])
    await pools.refresh_dns()
    before = sample("orchestrator_asr_pool_dns_failures_total", name)
    resolver.answers["asr-en"] = OSError("no answer")
    await pools.refresh_dns()
    resolver.answers["asr-en"] = LookupError("not in hosts file")
    await pools.refresh_dns()
    assert [m.addr for m in pools.pool(name).members] == ["10.0.0.1:50051"]
    assert sample("orchestrator_asr_pool_dns_failures_total", name) == (before or 0) + 2


async def test_a_resolver_bug_is_not_a_dns_failure() -> None:
    resolver = FakeResolver({"asr-en": ZeroDivisionError("bug")})
    _, pools = make_pools(resolver, dns=["asr-en:50051"])
    with pytest.raises(ZeroDivisionError):
        await pools.refresh_dns()


async def test_hosts_file_resolver_reads_the_file_each_time(tmp_path: object) -> None:
    from pathlib import Path

    hosts = Path(str(tmp_path)) / "hosts"
    hosts.write_text("127.0.0.2 asr.test\n")
    resolve = hosts_file_resolver(hosts)
    assert await resolve("asr.test") == ["127.0.0.2"]
    hosts.write_text("127.0.0.2 asr.test\n127.0.0.3 asr.test\n")
    assert await resolve("ASR.TEST") == ["127.0.0.2", "127.0.0.3"]
    with pytest.raises(LookupError):
        await resolve("other.test")


async def test_the_table_picks_the_hosts_file_resolver(tmp_path: object) -> None:
    from pathlib import Path

    hosts = Path(str(tmp_path)) / "hosts"
    hosts.write_text("127.0.0.2 asr.test\n127.0.0.3 asr.test\n")
    table = RoutingTable.from_dict(
        {"default_pool": "p", "pools": {"p": {"dns": ["asr.test:50051"]}}, "dns": {"hosts_file": str(hosts)}}
    )
    pools = PoolSet(table)
    assert pools.uses_dns
    await pools.refresh_dns()
    assert [m.addr for m in pools.pool("p").members] == ["127.0.0.2:50051", "127.0.0.3:50051"]
    await pools.close()
