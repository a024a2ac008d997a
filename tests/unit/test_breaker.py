"""The circuit breaker as a pure state machine with injected time (SPEC §4, STYLE §1)."""

from __future__ import annotations

import pytest

from common.envconf import ConfigError
from orchestrator.routing.breaker import BreakerConfig, BreakerState, CircuitBreaker

pytestmark = pytest.mark.unit

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
CFG = BreakerConfig(failure_threshold=3, open_s=10.0, max_open_s=35.0, backoff_factor=2.0)


def opened(at: float = 0.0, cfg: BreakerConfig = CFG) -> CircuitBreaker:
    b = CircuitBreaker(cfg)
    for _ in range(cfg.failure_threshold):
        b.record_failure(at)
    assert b.state is OPEN
    return b


def test_defaults_match_the_docs() -> None:
    cfg = BreakerConfig()
    assert (cfg.failure_threshold, cfg.open_s, cfg.max_open_s, cfg.backoff_factor) == (3, 10.0, 60.0, 2.0)
    b = CircuitBreaker()
    assert b.state is CLOSED and b.allow(0.0)


def test_opens_after_threshold_consecutive_failures() -> None:
    b = CircuitBreaker(CFG)
    assert b.record_failure(1.0) is False
    assert b.record_failure(2.0) is False
    assert b.state is CLOSED and b.allow(2.0)
    assert b.record_failure(3.0) is True  # the call that opens says so
    assert b.state is OPEN
    assert not b.allow(3.0)


def test_success_resets_the_consecutive_count() -> None:
    b = CircuitBreaker(CFG)
    b.record_failure(0.0)
    b.record_failure(0.0)
    b.record_success(0.0)
    assert b.consecutive_failures == 0
    b.record_failure(0.0)
    b.record_failure(0.0)
    assert b.state is CLOSED


def test_busy_is_no_verdict_in_closed() -> None:
    b = CircuitBreaker(CFG)
    b.record_failure(0.0)
    b.record_failure(0.0)
    for _ in range(10):
        b.record_busy(0.0)
    assert b.state is CLOSED and b.consecutive_failures == 2
    assert b.record_failure(0.0) is True


def test_open_refuses_until_open_s_then_half_opens() -> None:
    b = opened(at=100.0)
    assert not b.available(109.999) and not b.allow(109.999)
    assert b.state_at(109.999) is OPEN
    assert b.state_at(110.0) is HALF_OPEN
    assert b.available(110.0)


def test_half_open_allows_exactly_one_trial() -> None:
    b = opened(at=0.0)
    assert b.allow(10.0) is True
    assert b.state is HALF_OPEN
    assert not b.available(10.0)
    assert [b.allow(10.0 + i * 0.1) for i in range(20)] == [False] * 20


def test_trial_success_closes() -> None:
    b = opened(at=0.0)
    assert b.allow(10.0)
    b.record_success(11.0)
    assert b.state is CLOSED
    assert all(b.allow(11.0) for _ in range(5))
    assert b.open_period_s == CFG.open_s


def test_trial_failure_reopens_with_a_longer_period_capped() -> None:
    b = opened(at=0.0)
    periods = []
    now = 0.0
    for _ in range(4):
        now += b.open_period_s
        assert b.allow(now), f"trial expected at {now}"
        assert b.record_failure(now) is True  # one failed trial is enough
        assert b.state is OPEN
        periods.append(b.open_period_s)
        assert not b.allow(now + b.open_period_s - 0.001)
    assert periods == [20.0, 35.0, 35.0, 35.0]


def test_constant_period_when_backoff_factor_is_one() -> None:
    cfg = BreakerConfig(failure_threshold=1, open_s=5.0, max_open_s=5.0, backoff_factor=1.0)
    b = opened(at=0.0, cfg=cfg)
    assert b.allow(5.0)
    b.record_failure(5.0)
    assert b.open_period_s == 5.0 and b.allow(10.0)


def test_success_after_reopen_resets_the_period() -> None:
    b = opened(at=0.0)
    assert b.allow(10.0)
    b.record_failure(10.0)
    assert b.allow(30.0)
    b.record_success(30.0)
    assert b.state is CLOSED and b.open_period_s == 10.0
    for _ in range(3):
        b.record_failure(31.0)
    assert not b.allow(40.9) and b.allow(41.0)


def test_busy_trial_frees_the_slot_without_closing() -> None:
    b = opened(at=0.0)
    assert b.allow(10.0)
    b.record_busy(10.5)
    assert b.state is HALF_OPEN
    assert b.allow(10.5)  # a new trial may go
    assert not b.allow(10.5)


def test_release_frees_the_trial_slot() -> None:
    b = opened(at=0.0)
    assert b.allow(10.0)
    b.release(10.1)
    assert b.state is HALF_OPEN and b.allow(10.2)


def test_late_answers_while_open_are_ignored() -> None:
    b = opened(at=0.0)
    b.record_success(1.0)  # a stream started before the breaker opened
    assert b.state is OPEN
    assert b.record_failure(2.0) is False
    assert b.state is OPEN and b.open_period_s == 10.0
    assert b.allow(10.0)  # the period still counts from the opening


def test_a_trial_that_never_reports_counts_as_failed() -> None:
    b = opened(at=0.0)
    assert b.allow(10.0)
    assert not b.allow(19.9)
    # The lost trial failed at 20.0; the next period (20 s) runs from there.
    assert b.state_at(20.0) is OPEN and b.open_period_s == 20.0
    assert not b.allow(39.9)
    assert b.allow(40.0)


def test_a_lost_trial_noticed_late_half_opens_at_once() -> None:
    b = opened(at=0.0)
    assert b.allow(10.0)
    assert b.state_at(100.0) is HALF_OPEN
    assert b.allow(100.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"open_s": 0.0},
        {"open_s": 10.0, "max_open_s": 5.0},
        {"backoff_factor": 0.5},
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        BreakerConfig(**kwargs)  # type: ignore[arg-type]
