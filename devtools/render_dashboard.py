"""Render one dashboard of deploy/observability/ as a PNG from a Prometheus's data (no Grafana needed).

    python -m devtools.render_dashboard --prometheus http://127.0.0.1:9091 \\
        --dashboard speechgw-overview --minutes 15 --out docs/img/dashboard-overview.png

Every panel of the dashboard (devtools/observability.py) becomes one plot at its grid position: its
expressions are queried over the last `--minutes` with /api/v1/query_range, one line per series, named by
the panel's legend format; a stat panel shows its last value. Grafana is what an SRE uses; this is for
docs and for a look at a run without one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devtools.observability import VARIABLES, Dashboard, Panel, dashboards

UNITS = {"ms": "ms", "percentunit": "%", "ops": "/s", "Bps": "B/s", "bytes": "MB", "s": "s", "short": ""}


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as reply:
        body = json.load(reply)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def legend(fmt: str, labels: dict[str, str]) -> str:
    if fmt in ("", "__auto"):
        return ",".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def scale(unit: str, value: float) -> float:
    if unit == "percentunit":
        return value * 100
    if unit == "bytes":
        return value / 1e6
    return value


def render(base: str, dash: Dashboard, minutes: float, out: Path, step: float = 0.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    end = time.time()
    start = end - minutes * 60
    step = step or max(1.0, minutes * 60 / 240)
    rows: list[tuple[str, list[Panel]]] = [(r.title, list(r.panels)) for r in dash.rows]
    # One figure row per dashboard row chunk of up to 24 grid units, as Grafana lays them out.
    lines: list[tuple[str, list[Panel]]] = []
    for title, panels in rows:
        chunk: list[Panel] = []
        used = 0
        for p in panels:
            if used + p.width > 24:
                lines.append((title, chunk))
                chunk, used, title = [], 0, ""
            chunk.append(p)
            used += p.width
        lines.append((title, chunk))
    fig = plt.figure(figsize=(18, 3.1 * len(lines) + 0.6), facecolor="#111217")
    grid = fig.add_gridspec(len(lines), 24, hspace=0.75, wspace=1.2, left=0.04, right=0.99, top=0.95, bottom=0.03)
    stamp = dt.datetime.fromtimestamp(end, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    fig.suptitle(f"{dash.title}   (last {minutes:g} min to {stamp})", color="#d8d9da", fontsize=14, x=0.04, ha="left")
    for i, (row_title, chunk) in enumerate(lines):
        x = 0
        for p in chunk:
            ax = fig.add_subplot(grid[i, x : x + p.width])
            x += p.width
            ax.set_facecolor("#181b1f")
            ax.tick_params(colors="#9fa1a6", labelsize=7)
            for side in ax.spines.values():
                side.set_color("#2c3235")
            title = f"{row_title} / {p.title}" if row_title and p is chunk[0] else p.title
            ax.set_title(title, color="#d8d9da", fontsize=9, loc="left")
            unit = UNITS.get(p.unit, p.unit)
            last_values = []
            for t in p.targets:
                expr = t.expr
                for var, value in VARIABLES.items():
                    expr = expr.replace(var, value)
                for series in query_range(base, expr, start, end, step):
                    points = [(float(ts), scale(p.unit, float(v))) for ts, v in series["values"]]
                    points = [(ts, v) for ts, v in points if not math.isnan(v)]
                    if not points:
                        continue
                    name = legend(t.legend, series["metric"])
                    last_values.append((name, points[-1][1]))
                    if p.kind != "stat":
                        when = [dt.datetime.fromtimestamp(ts, dt.UTC) for ts, _ in points]
                        ax.plot(mdates.date2num(when), [v for _, v in points], linewidth=1.2, label=name)
            if p.kind == "stat":
                ax.set_xticks([])
                ax.set_yticks([])
                text = "\n".join(f"{v:.3f} {unit}" for _, v in last_values) or "no data"
                ax.text(0.5, 0.45, text, color="#73bf69", fontsize=20, ha="center", va="center", transform=ax.transAxes)
                continue
            if not last_values:
                ax.text(0.5, 0.5, "no data", color="#9fa1a6", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                continue
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
            if unit:
                ax.set_ylabel(unit, color="#9fa1a6", fontsize=7)
            ax.grid(color="#2c3235", linewidth=0.5)
            handles, _ = ax.get_legend_handles_labels()
            if len(handles) <= 10:
                ax.legend(fontsize=6, facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#d8d9da", loc="upper left")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72, facecolor=fig.get_facecolor())
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prometheus", default="http://127.0.0.1:9091")
    p.add_argument("--dashboard", default="speechgw-overview", choices=[d.uid for d in dashboards()])
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--step", type=float, default=0.0, help="seconds between points (default: 240 points)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    dash = next(d for d in dashboards() if d.uid == args.dashboard)
    render(args.prometheus.rstrip("/"), dash, args.minutes, args.out, args.step)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
