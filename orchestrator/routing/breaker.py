"""A circuit breaker per ASR pool member, as a pure state machine with injected time (SPEC §4
"circuit breaking and degradation"; STYLE §1). Nothing here reads a clock or awaits.

CLOSED --(failure_threshold consecutive failures)--> OPEN --(open period elapsed)--> HALF_OPEN
HALF_OPEN lets exactly one trial through: success -> CLOSED, failure -> OPEN with a longer period
(times `backoff_factor`, capped at `max_open_s`). A "busy" answer is no verdict (`record_busy`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from common.envconf import ConfigError


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    """Breaker parameters; see docs/routing.md."""

    failure_threshold: int = 3
    open_s: float = 10.0
    max_open_s: float = 60.0
    backoff_factor: float = 2.0  # 1.0 keeps every open period at open_s

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ConfigError("breaker failure_threshold must be at least 1")
        if self.open_s <= 0:
            raise ConfigError("breaker open_s must be positive")
        if self.max_open_s < self.open_s:
            raise ConfigError("breaker max_open_s must be at least open_s")
        if self.backoff_factor < 1.0:
            raise ConfigError("breaker backoff_factor must be at least 1.0")


class CircuitBreaker:
    """Decides whether a member may take a new stream. Times are monotonic seconds from the caller."""

    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config or BreakerConfig()
        self._state = BreakerState.CLOSED
        self._failures = 0  # consecutive, while CLOSED
        self._opened_at = 0.0
        self._open_s = self.config.open_s  # the current open period; grows on failed trials
        self._trial_since: float | None = None  # HALF_OPEN: when the one trial was let through

    @property
    def state(self) -> BreakerState:
        """The recorded state. An OPEN breaker whose period elapsed shows HALF_OPEN only after the
        next `available`/`allow` call; use `state_at(now)` for the effective state."""
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def open_period_s(self) -> float:
        """How long the current (or next) OPEN period lasts."""
        return self._open_s

    def state_at(self, now: float) -> BreakerState:
        self._advance(now)
        return self._state

    def available(self, now: float) -> bool:
        """Would `allow(now)` say yes? Takes no trial slot."""
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            return True
        return self._state is BreakerState.HALF_OPEN and self._trial_since is None

    def allow(self, now: float) -> bool:
        """May a new stream go to this member now? In HALF_OPEN the first yes takes the only trial
        slot; every later call says no until that trial is recorded."""
        if not self.available(now):
            return False
        if self._state is BreakerState.HALF_OPEN:
            self._trial_since = now
        return True

    def record_success(self, now: float) -> None:
        """A stream opened (or ran) fine. Closes a HALF_OPEN breaker; ignored while OPEN (a late
        answer from before the breaker opened says nothing about now)."""
        self._advance(now)
        if self._state is BreakerState.OPEN:
            return
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._open_s = self.config.open_s
        self._trial_since = None

    def record_failure(self, now: float) -> bool:
        """A stream failed (unavailable, deadline, internal). Returns True when this call opened
        the breaker, so the caller can count it."""
        self._advance(now)
        if self._state is BreakerState.OPEN:
            return False  # late failure of a stream started before the breaker opened
        if self._state is BreakerState.HALF_OPEN:
            self._open_s = min(self._open_s * self.config.backoff_factor, self.config.max_open_s)
            self._open(now)
            return True
        self._failures += 1
        if self._failures >= self.config.failure_threshold:
            self._open(now)
            return True
        return False

    def record_busy(self, now: float) -> None:
        """The member answered but refused for load (RESOURCE_EXHAUSTED): no verdict on its health.
        Frees a HALF_OPEN trial slot so a later stream can try; the failure count is unchanged."""
        self._advance(now)
        self._trial_since = None

    def release(self, now: float) -> None:
        """The stream ended with no verdict (cancelled, bad request): free a trial slot."""
        self.record_busy(now)

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._failures = 0
        self._trial_since = None

    def _advance(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now - self._opened_at >= self._open_s:
            self._state = BreakerState.HALF_OPEN
            self._trial_since = None
        elif (
            self._state is BreakerState.HALF_OPEN
            and self._trial_since is not None
            and now - self._trial_since >= self._open_s
        ):
            # A trial that never reported within an open period is taken as failed, so a lost
            # verdict cannot hold the breaker half-open forever.
            failed_at = self._trial_since + self._open_s
            self._open_s = min(self._open_s * self.config.backoff_factor, self.config.max_open_s)
            self._open(failed_at)
            self._advance(now)
