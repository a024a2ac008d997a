"""The capacity-curve plot reads bench_live's JSON as bench_live writes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.perf.plot_live import curves, plot

pytestmark = pytest.mark.unit


def level(n: int, mode: str, degraded: int = 0) -> dict[str, object]:
    return {
        "n": n,
        "mode": mode,
        "degraded": degraded,
        "first_partial_ms_p50": 300.0 + n,
        "first_partial_ms_p95": 600.0 + n,
        "final_lag_ms_p95": 900.0 + n,
    }


def test_levels_are_grouped_by_mode_in_order_of_sessions() -> None:
    levels = [level(16, "hint"), level(1, "auto"), level(4, "hint"), level(1, "hint")]
    assert {m: [r["n"] for r in rows] for m, rows in curves(levels).items()} == {"hint": [1, 4, 16], "auto": [1]}


def test_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "img" / "curve.png"
    result = {"date": "2026-12-01T15:00:00", "args": {"runs": 3}, "levels": [level(1, "hint"), level(16, "hint", 2)]}
    plot(result, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
