"""The soak's samples over time: RSS per stack process, open fds, gateway tasks and sessions, latency.

    python -m tests.perf.plot_soak var/soak.json [--out docs/img/soak.png] [--table 10]

Reads the `--json` file tests/perf/soak.py writes and draws four panels against minutes: RSS of each
process (its peak in each sample interval, and a service's floor after its minute give-back, dashed), open
fds of each process, the gateway's event-loop tasks and open sessions, and the per-minute P50/P95 of the
gateway's SLO histograms with the client's medians; the verdict goes in the title. `--table N` also prints
a Markdown table of every N-th minute (docs/performance.md#soak).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def rss_peak_mb(proc_sample: dict[str, float]) -> float:
    """A sample's peak RSS; RSS at the sample in a run recorded before peaks were sampled."""
    return proc_sample.get("rss_peak_mb", proc_sample["rss_mb"])


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t"] / 60 for s in samples]
    names = list(samples[0]["procs"])
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharex=True)
    rss, fds, tasks, lat = axes.flat
    for name in names:
        (line,) = rss.plot(t, [rss_peak_mb(s["procs"][name]) for s in samples], marker=".", label=name)
        floors = [s.get("floors", {}).get(name, float("nan")) for s in samples]
        if any(f == f for f in floors):  # the service's RSS after its give-back, in the peak's colour
            rss.plot(t, floors, linestyle="--", color=line.get_color(), label=f"{name} floor")
        fds.plot(t, [s["procs"][name]["fds"] for s in samples], marker=".", label=name)
    rss.set_ylabel("RSS MB: peak per interval; dashed: after the give-back")
    rss.legend(fontsize=7, ncol=2)
    fds.set_ylabel("open fds")
    fds.legend(fontsize=7, ncol=2)

    def gauge(name: str) -> list[float | None]:
        return [s["gauges"].get(name) for s in samples]

    tasks.plot(t, gauge("orchestrator_event_loop_tasks"), marker=".", label="gateway asyncio tasks")
    tasks.plot(t, gauge("orchestrator_active_sessions"), marker=".", label="open sessions (at sample)")
    tasks.plot(t, [s["procs"]["gateway"]["threads"] for s in samples], marker=".", label="gateway threads")
    tasks.set_ylabel("count")
    tasks.legend(fontsize=7)

    def series(key: str) -> list[float]:
        return [float("nan") if s.get(key) is None else s[key] for s in samples]

    def client(key: str) -> list[float]:
        return [float("nan") if s["client"].get(key) is None else s["client"][key] for s in samples]

    lat.plot(t, series("first_partial_p50"), marker=".", label="first partial P50 (gateway)")
    lat.plot(t, series("first_partial_p95"), marker=".", label="first partial P95 (gateway)")
    lat.plot(t, series("final_lag_p50"), marker=".", label="final lag P50 (gateway)")
    lat.plot(t, series("final_lag_p95"), marker=".", label="final lag P95 (gateway)")
    lat.plot(t, client("first_partial_ms_p50"), ls="--", label="first partial median (client)")
    lat.plot(t, client("final_lag_ms_p50"), ls="--", label="final lag median (client)")
    lat.set_ylabel("ms, per minute")
    lat.legend(fontsize=7)
    for ax in (tasks, lat):
        ax.set_xlabel("minutes")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    a = result["args"]
    la = result.get("load_avg_1m", {})
    flat = result.get("verdict", {}).get("flat")
    cut = f" (load cut at {result['truncated']['loaded_until_min']:g})" if "truncated" in result else ""
    fig.suptitle(
        f"soak {result['date'][:16]}: {a['minutes']:g} min{cut}, {a['sessions']} live loops, "
        f"{a['reconnects']} reconnect, "
        f"a bad client every {a['bad_every_s']:g} s; {result.get('cores')} cores, load avg "
        f"{la.get('median', float('nan')):.1f} median; verdict {'flat' if flat else 'NOT flat'}",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def table(result: dict[str, Any], every_min: float) -> str:
    """One row per `every_min` minutes (and the idle samples): RSS per process, gateway fds, tasks and
    threads, the minute's gateway P50/P95 and client medians, the load average."""
    samples = result["samples"]
    names = list(samples[0]["procs"])
    with_floor = {n for s in samples for n in s.get("floors", {})}  # the services that publish one
    head = ["min", *[f"{'peak / floor' if n in with_floor else 'peak'} RSS {n} MB" for n in names]]
    head += ["gw fds", "gw tasks", "gw threads"]
    head += ["first partial P50/P95 ms", "final lag P50/P95 ms", "client first partial / final lag ms", "load 1m"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    next_t = 0.0
    for s in samples:
        if not s.get("idle") and s["t"] + 1 < next_t:
            continue
        next_t = s["t"] + every_min * 60
        c = s.get("client", {})
        cells = [f"{s['t'] / 60:.0f}" + (" (idle)" if s.get("idle") else "")]
        floor = s.get("floors", {})
        cells += [
            f"{rss_peak_mb(s['procs'][n]):.0f}" + (f" / {_f(floor.get(n))}" if n in with_floor else "") for n in names
        ]
        g = s["procs"]["gateway"]
        cells += [f"{g['fds']:.0f}", _f(s["gauges"].get("orchestrator_event_loop_tasks")), f"{g['threads']:.0f}"]
        cells += [f"{_f(s.get('first_partial_p50'))} / {_f(s.get('first_partial_p95'))}"]
        cells += [f"{_f(s.get('final_lag_p50'))} / {_f(s.get('final_lag_p95'))}"]
        cells += [f"{_f(c.get('first_partial_ms_p50'))} / {_f(c.get('final_lag_ms_p50'))}", f"{s['load'][0]:.1f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", type=Path)
    p.add_argument("--out", type=Path, help="the PNG (default: beside the JSON, e.g. var/soak.png)")
    p.add_argument("--table", type=float, default=0.0, help="print a row every this many minutes")
    args = p.parse_args(argv)
    result = json.loads(args.json.read_text())
    out = args.out or args.json.with_suffix(".png")
    plot(result, out)
    print(out)
    if args.table > 0:
        print(table(result, args.table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
