"""Shared fixtures. Time values scale from one unit (STYLE §8): set SPEECHGW_TEST_TIME_UNIT to slow
everything down on a loaded machine."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from common.models import package_dir

POLL_S = 0.02
TIME_UNIT = float(os.environ.get("SPEECHGW_TEST_TIME_UNIT", "1.0"))
CLIPS = package_dir("pytest_audioeval") / "samples" / "audio"


def seconds(n: float) -> float:
    """A timeout of `n` units."""
    return n * TIME_UNIT


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str = "condition") -> None:
    """Poll `cond` until true or fail after `timeout_s` (scaled)."""
    deadline = time.monotonic() + seconds(timeout_s)
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(POLL_S)  # the poll interval of a deadline wait, not a fixed wait
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="session")
def clips() -> Path:
    """The pytest-audioeval sample clips: <lang>/<name>.wav with <name>.txt reference text."""
    return CLIPS
