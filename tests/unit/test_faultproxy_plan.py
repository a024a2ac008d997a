"""The fault proxy's decisions (tests/faultproxy.py): a seed replays the same delays and stalls."""

from __future__ import annotations

import pytest

from tests.faultproxy import FaultPlan, Faults

pytestmark = pytest.mark.unit


def delays(seed: int, faults: Faults, n: int) -> list[float]:
    plan = FaultPlan(seed)
    return [plan.delay_s(faults) for _ in range(n)]


def test_no_faults_no_delay() -> None:
    assert delays(1, Faults(), 100) == [0.0] * 100


def test_a_seed_replays_the_same_faults_and_another_does_not() -> None:
    faults = Faults(latency_ms=20, jitter_ms=10, stall_rate=0.05, stall_ms=300)
    assert delays(7, faults, 500) == delays(7, faults, 500)
    assert delays(7, faults, 500) != delays(8, faults, 500)


def test_latency_and_jitter_stay_in_their_band() -> None:
    got = delays(3, Faults(latency_ms=50, jitter_ms=20), 2000)
    assert min(got) >= 0.030 and max(got) <= 0.070
    assert max(got) - min(got) > 0.035  # the jitter is used, not a constant
    assert sum(got) / len(got) == pytest.approx(0.050, abs=0.002)


def test_jitter_larger_than_latency_never_goes_negative() -> None:
    assert min(delays(5, Faults(latency_ms=5, jitter_ms=50), 1000)) == 0.0


def test_one_percent_stalls_hold_one_chunk_in_a_hundred() -> None:
    plan = FaultPlan(11)
    faults = Faults(stall_rate=0.01, stall_ms=250)
    got = [plan.delay_s(faults) for _ in range(20000)]
    assert plan.chunks == 20000
    assert set(got) == {0.0, 0.25}
    assert got.count(0.25) == plan.stalls
    assert 150 <= plan.stalls <= 250  # 1 % of 20000, well within binomial spread


@pytest.mark.parametrize("bad", [{"latency_ms": -1}, {"stall_rate": 1.5}, {"jitter_ms": -0.1}])
def test_bad_faults_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Faults(**bad)
