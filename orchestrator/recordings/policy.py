"""Decisions of the gateway's archive spool, without I/O: how much it may hold, when to try again."""

from __future__ import annotations

from dataclasses import dataclass


class SpoolBudget:
    """The bytes the spool may hold (`ARCHIVE_SPOOL_MAX_BYTES`). A writer reserves before it writes;
    a refused reservation means that session's audio is no longer kept (its spool is dropped)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def reserve(self, n: int) -> bool:
        if self.used + n > self.max_bytes:
            return False
        self.used += n
        return True

    def release(self, n: int) -> None:
        self.used = max(0, self.used - n)


@dataclass(frozen=True)
class RetrySchedule:
    """Delay before the next upload try after `failures` failed ones: base doubling up to max."""

    base_s: float = 1.0
    max_s: float = 30.0

    def delay_s(self, failures: int) -> float:
        return float(min(self.max_s, self.base_s * 2.0 ** max(0, min(failures - 1, 32))))
