"""Every metric each process exports: name, type and label names, read from the process's registry.

    python -m devtools.metric_inventory            # JSON: {process: [{name, type, labels, help}]}
    python -m devtools.metric_inventory --one vad  # one process (what the test runs in a child)

Each process is inspected in a child interpreter that imports the process's entry module (which
imports everything that defines its metrics) and reads the registry its /metrics serves: the
gateway's own registry, or prometheus_client's default one in a service. A child per process,
because the services share the default registry: one import of all of them would mix their lists.
docs/metrics.md lists the same; tests/unit/test_metrics_doc.py compares the two.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from typing import Any

# process -> (entry module, registry: "gateway" or "default")
PROCESSES: dict[str, str] = {
    "gateway": "orchestrator.gateway",
    "vad": "services.vad.__main__",
    "denoise": "services.denoise.__main__",
    "lid": "services.lid.__main__",
    "asr": "services.asr.__main__",
    "compress": "services.compress.__main__",
}


def _exposed_name(name: str, kind: str) -> str:
    """The name a query uses: a counter family `x` is exposed as `x_total`, an info `x` as `x_info`."""
    if kind == "counter":
        return f"{name}_total"
    if kind == "info":
        return f"{name}_info"
    return name


def inspect(process: str) -> list[dict[str, Any]]:
    """The metrics of `process`, read in this interpreter (import its entry module first)."""
    importlib.import_module(PROCESSES[process])
    if process == "gateway":
        from orchestrator.metrics import REGISTRY as registry
    else:
        from prometheus_client import REGISTRY as registry
    found: dict[str, dict[str, Any]] = {}
    # Label names come from the metric objects (a labelled metric with no child yet has no sample);
    # collectors without them (process, platform, gc) show theirs on their samples.
    collectors = registry._collector_to_names
    for collector in list(collectors):
        label_names = getattr(collector, "_labelnames", None)
        for family in collector.collect():
            labels = set(label_names) if label_names is not None else set()
            if label_names is None:
                for sample in family.samples:
                    labels.update(k for k in sample.labels if k not in ("le", "quantile"))
            name = _exposed_name(family.name, family.type)
            found[name] = {"name": name, "type": family.type, "labels": sorted(labels), "help": family.documentation}
    return [found[k] for k in sorted(found)]


def inventory() -> dict[str, list[dict[str, Any]]]:
    """Every process's metrics, each read in its own child interpreter."""
    out: dict[str, list[dict[str, Any]]] = {}
    for process in PROCESSES:
        child = subprocess.run(
            [sys.executable, "-m", "devtools.metric_inventory", "--one", process],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        out[process] = json.loads(child.stdout)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", choices=sorted(PROCESSES), help="one process, read in this interpreter")
    args = p.parse_args()
    result: Any = inspect(args.one) if args.one else inventory()
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
