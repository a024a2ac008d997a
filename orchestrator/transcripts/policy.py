"""What the runner does after a failed attempt (sans-I/O: no store, no clock, no awaits).

Three answers, by what the failure says about the job (docs/transcripts.md):
- `wait`: the service it needs is busy or down (`CapacityUnavailable`); the attempt is given back
  and the job tries again after `Backoff.wait_s`, however many times that takes;
- `fail`: retrying cannot help (`PermanentJobError`), or the job used its `JOBS_MAX_ATTEMPTS`;
- `retry`: any other failure, after `Backoff.delay_s`, counted against the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.transcripts.store import Backoff, CapacityUnavailable, Job, JobsConfig, PermanentJobError


@dataclass(frozen=True)
class Verdict:
    action: str  # "retry" | "wait" | "fail"
    delay_s: float = 0.0


def after_failure(job: Job, exc: BaseException, config: JobsConfig, backoff: Backoff) -> Verdict:
    """The verdict on `job` (as claimed: `attempts` counts the one that failed) after `exc`."""
    if isinstance(exc, CapacityUnavailable):
        return Verdict("wait", backoff.wait_s(job.waits + 1))
    if isinstance(exc, PermanentJobError) or job.attempts >= config.max_attempts:
        return Verdict("fail")
    return Verdict("retry", backoff.delay_s(job.attempts))


def describe(exc: BaseException) -> str:
    """`Type: message` (or the type alone), as `last_error` keeps it."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
