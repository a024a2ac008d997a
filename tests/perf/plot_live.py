"""The capacity curve of `bench_live`: first partial and final lag against concurrent sessions.

    python -m tests.perf.plot_live var/bench_live.json [--out docs/img/live_capacity.png]

Reads the `--json` file bench_live writes (medians of its runs per level and mode) and draws, per
language mode, first partial P50/P95 and final lag P95 against N, with the issue-9 targets as
dashed lines and the sessions degraded to record-only written above each point.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

FIRST_PARTIAL_P50_MS = 300
FIRST_PARTIAL_P95_MS = 600
FINAL_LAG_P95_MS = 1000


def curves(levels: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The levels of each mode, in order of N."""
    by_mode: dict[str, list[dict[str, Any]]] = {}
    for level in levels:
        by_mode.setdefault(level["mode"], []).append(level)
    return {mode: sorted(rows, key=lambda r: r["n"]) for mode, rows in by_mode.items()}


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = curves(result["levels"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    first, lag = axes
    for mode, rows in modes.items():
        n = [r["n"] for r in rows]
        first.plot(n, [r["first_partial_ms_p50"] for r in rows], "o-", label=f"{mode} P50")
        first.plot(n, [r["first_partial_ms_p95"] for r in rows], "s--", label=f"{mode} P95")
        lag.plot(n, [r["final_lag_ms_p95"] for r in rows], "s--", label=f"{mode} P95")
        for r in rows:
            if r["degraded"]:
                lag.annotate(f"{r['degraded']} degraded", (r["n"], r["final_lag_ms_p95"]), fontsize=7)
    first.axhline(FIRST_PARTIAL_P50_MS, color="grey", ls=":", label="target P50")
    first.axhline(FIRST_PARTIAL_P95_MS, color="black", ls=":", label="target P95")
    lag.axhline(FINAL_LAG_P95_MS, color="black", ls=":", label="target P95")
    first.set(title="first partial after the first speech sample", xlabel="concurrent sessions", ylabel="ms")
    lag.set(title="last final after the last audio", xlabel="concurrent sessions", ylabel="ms")
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"bench_live {result['date']}, medians of {result['args']['runs']} runs, 2 cores", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("json", type=Path, help="bench_live --json output")
    p.add_argument("--out", type=Path, default=Path("docs/img/live_capacity.png"))
    args = p.parse_args(argv)
    plot(json.loads(args.json.read_text()), args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
