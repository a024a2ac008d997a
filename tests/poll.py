"""Deadlines for tests, all scaled from one time unit (STYLE §8), and one poll-until helper in a sync and
an async form. Set SPEECHGW_TEST_TIME_UNIT (default 1.0) above 1 to give every deadline more room on a
loaded machine; nothing else changes.

Polling is for conditions no event announces (a process's metrics, a row in a store, a counter a thread
moves); when there is an event or a task to await, await it under `seconds(n)` instead.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable

TIME_UNIT = float(os.environ.get("SPEECHGW_TEST_TIME_UNIT", "1.0"))
POLL_S = 0.01  # the interval between two looks at the condition, not a wait of its own


def seconds(n: float) -> float:
    """A timeout of `n` time units."""
    return n * TIME_UNIT


def _timed_out(cond: Callable[[], object], timeout_s: float, what: str) -> AssertionError:
    name = what or getattr(cond, "__qualname__", repr(cond))
    return AssertionError(f"timed out after {seconds(timeout_s):g} s waiting for {name}")


def wait_for(cond: Callable[[], bool], timeout_s: float = 5.0, what: str = "") -> None:
    """Poll `cond` until it is true; fail after `timeout_s` units. Looks once more at the deadline."""
    deadline = time.monotonic() + seconds(timeout_s)
    while not cond():
        if time.monotonic() >= deadline:
            raise _timed_out(cond, timeout_s, what)
        time.sleep(POLL_S)


async def until(cond: Callable[[], bool | Awaitable[bool]], timeout_s: float = 5.0, what: str = "") -> None:
    """`wait_for` on the event loop: `cond` may be a plain or an async predicate."""
    deadline = time.monotonic() + seconds(timeout_s)
    while True:
        ok = cond()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return
        if time.monotonic() >= deadline:
            raise _timed_out(cond, timeout_s, what)
        await asyncio.sleep(POLL_S)
