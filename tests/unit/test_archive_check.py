"""The chaos tests' archive check catches a lost second (tests/archive_check.py)."""

from __future__ import annotations

import pytest

from tests.archive_check import missing_s

pytestmark = pytest.mark.unit


def test_a_whole_archive_misses_nothing() -> None:
    assert missing_s(12.0, 12.0) == 0.0
    assert missing_s(11.99, 12.0) == 0.0  # one frame of rounding


def test_a_lost_second_or_frame_shows() -> None:
    assert missing_s(11.0, 12.0) == pytest.approx(1.0)
    assert missing_s(11.96, 12.0) == pytest.approx(0.04)
    assert missing_s(13.0, 12.0) == pytest.approx(-1.0)  # more than accepted is wrong too
