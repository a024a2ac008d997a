"""The packet impairment of tests/perf/bench_opus_loss.py does what its figures claim."""

from __future__ import annotations

import itertools
import random

import pytest

from tests.perf.bench_opus_loss import impair

pytestmark = pytest.mark.unit

PACKETS = [(i, bytes([i % 256])) for i in range(20000)]


def test_clean_is_the_same_sequence() -> None:
    assert impair(PACKETS, 0.0, 0.0, random.Random(1)) == PACKETS


def test_loss_drops_about_p_and_keeps_order() -> None:
    out = impair(PACKETS, 0.01, 0.0, random.Random(1))
    assert 150 <= len(PACKETS) - len(out) <= 250
    assert [s for s, _ in out] == sorted(s for s, _ in out)


def test_reorder_delivers_every_packet_a_little_late() -> None:
    out = impair(PACKETS, 0.0, 0.01, random.Random(1))
    assert sorted(out) == PACKETS  # nothing lost or duplicated
    late = [(a, b) for a, b in itertools.pairwise(out) if b[0] < a[0]]
    assert 150 <= len(late) <= 250
    assert all(a[0] - b[0] <= 2 for a, b in late)  # inside the service's reorder window of 3
