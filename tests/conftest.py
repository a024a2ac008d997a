"""Shared fixtures. Deadlines and polling live in tests/poll.py (every time value scales from one unit,
SPEECHGW_TEST_TIME_UNIT), fakes in tests/fakes.py, the fake clock in tests/clock.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.models import package_dir
from devtools.postgres import PostgresServer, running_postgres
from tests.poll import seconds, wait_for

__all__ = ["CLIPS", "seconds", "wait_for"]  # `from tests.conftest import seconds, wait_for` still works

CLIPS = package_dir("pytest_audioeval") / "samples" / "audio"


@pytest.fixture(scope="session")
def clips() -> Path:
    """The pytest-audioeval sample clips: <lang>/<name>.wav with <name>.txt reference text."""
    return CLIPS


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (devtools/postgres.py); a test takes a schema of its own."""
    with running_postgres() as server:
        yield server
