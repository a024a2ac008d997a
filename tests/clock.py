"""The one fake clock of the test suite: time stands still until the test moves it."""

from __future__ import annotations

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z: an epoch time, for code that formats its clock as a date


class FakeClock:
    """A `() -> float` clock for code that takes one (`now`, `clock`): returns `t`, which only the test
    changes, by `advance(s)` or by setting `t`."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> float:
        """Move the clock `s` seconds on; returns the new time."""
        self.t += s
        return self.t
