import pytest

from devtools.restarts import RestartBackoff, RestartPolicy

pytestmark = pytest.mark.unit


def test_backoff_doubles_up_to_the_cap_while_the_child_keeps_failing() -> None:
    backoff = RestartBackoff(RestartPolicy(first_s=0.5, factor=2.0, cap_s=4.0, stable_s=60.0))
    assert [backoff.on_exit(uptime_s=1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_child_that_stayed_up_starts_from_the_first_delay_again() -> None:
    backoff = RestartBackoff(RestartPolicy(first_s=0.5, factor=2.0, cap_s=30.0, stable_s=60.0))
    backoff.on_exit(1.0)
    backoff.on_exit(1.0)
    assert backoff.on_exit(59.9) == 2.0
    assert backoff.on_exit(60.0) == 0.5 and backoff.failures == 1


def test_a_policy_that_cannot_work_is_refused() -> None:
    with pytest.raises(ValueError):
        RestartPolicy(first_s=10.0, cap_s=1.0)
    with pytest.raises(ValueError):
        RestartPolicy(factor=0.5)
