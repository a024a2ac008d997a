"""Shared fixtures. Deadlines and polling live in tests/poll.py (every time value scales from one unit,
SPEECHGW_TEST_TIME_UNIT), fakes in tests/fakes.py, the fake clock in tests/clock.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.models import package_dir
from tests.poll import seconds, wait_for

__all__ = ["CLIPS", "seconds", "wait_for"]  # `from tests.conftest import seconds, wait_for` still works

CLIPS = package_dir("pytest_audioeval") / "samples" / "audio"


@pytest.fixture(scope="session")
def clips() -> Path:
    """The pytest-audioeval sample clips: <lang>/<name>.wav with <name>.txt reference text."""
    return CLIPS
