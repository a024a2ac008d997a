"""When the local stack restarts a child that exited (`make run`), as Kubernetes would: at once the
first time, then with exponential backoff while it keeps failing, and from the start again once it
has stayed up for a while (CrashLoopBackOff's rule). No I/O: the stack's watcher asks `on_exit` how
long to wait, and does the waiting and the restarting itself."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RestartPolicy:
    """Delays in seconds: `first_s` after the first exit, times `factor` after each further one, at
    most `cap_s`; a child up for `stable_s` or longer counts as healthy again (its next exit is a first)."""

    first_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 30.0
    stable_s: float = 60.0

    def __post_init__(self) -> None:
        if self.first_s < 0 or self.factor < 1 or self.cap_s < self.first_s or self.stable_s <= 0:
            raise ValueError("a restart policy needs 0 <= first_s <= cap_s, factor >= 1 and stable_s > 0")


@dataclass
class RestartBackoff:
    """One child's restarts under a policy."""

    policy: RestartPolicy = field(default_factory=RestartPolicy)
    failures: int = 0  # exits in a row, each within `stable_s` of its start

    def on_exit(self, uptime_s: float) -> float:
        """The child exited after `uptime_s` up: how long to wait before starting it again."""
        if uptime_s >= self.policy.stable_s:
            self.failures = 0
        delay = min(self.policy.cap_s, self.policy.first_s * self.policy.factor**self.failures)
        self.failures += 1
        return delay
