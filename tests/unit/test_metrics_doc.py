"""docs/metrics.md lists exactly the metrics each process exports: name, type and label names.

Each process's registry is read in a child interpreter (devtools/metric_inventory.py) after importing
the process's entry module, so a metric added anywhere without a line in the doc, or a line left
behind by a removed or renamed metric, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devtools.metric_inventory import PROCESSES, inventory

pytestmark = pytest.mark.unit
DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
Entry = tuple[str, str, str, tuple[str, ...]]  # process, metric, type, label names

_HEADING = re.compile(r"^## .*\((`[a-z]+`(?:, `[a-z]+`)*)\)\s*$")
_ROW = re.compile(r"^\| `([a-z0-9_]+)` \| ([a-z]+) \| ([^|]*) \| (.+) \|\s*$")


def documented(text: str) -> set[Entry]:
    """The (process, metric, type, labels) of every table row, under the processes its heading names."""
    entries: set[Entry] = set()
    processes: list[str] = []
    for line in text.splitlines():
        if line.startswith("## "):
            heading = _HEADING.match(line)
            processes = re.findall(r"`([a-z]+)`", heading.group(1)) if heading else []
            continue
        row = _ROW.match(line)
        if row is None or not processes:  # other tables (label values, notes) are not listings
            continue
        name, kind, labels, meaning = row.groups()
        assert meaning.strip() and meaning.strip() != "-", f"no meaning for {name}"
        label_names = tuple(sorted(re.findall(r"`([a-z_]+)`", labels)))
        entries.update((p, name, kind, label_names) for p in processes)
    return entries


def exported() -> set[Entry]:
    return {
        (process, m["name"], m["type"], tuple(m["labels"])) for process, metrics in inventory().items() for m in metrics
    }


def test_the_doc_lists_every_metric_of_every_process_and_nothing_else() -> None:
    doc, real = documented(DOC.read_text()), exported()
    assert {p for p, *_ in real} == set(PROCESSES)
    undocumented = sorted(real - doc)
    stale = sorted(doc - real)
    assert not undocumented, f"exported but not in docs/metrics.md (or with other type/labels): {undocumented}"
    assert not stale, f"in docs/metrics.md but not exported: {stale}"


def test_the_parser_sees_rows_sections_and_labels() -> None:
    text = (
        "## Gateway (`gateway`)\n\n| metric | type | labels | meaning |\n|---|---|---|---|\n"
        "| `a_total` | counter | `x`, `y` | something |\n"
        "## Every service (`vad`, `lid`)\n\n| `b` | gauge | - | other |\n"
        "## Notes\n\n| `c` | gauge | - | not a metric section |\n"
    )
    assert documented(text) == {
        ("gateway", "a_total", "counter", ("x", "y")),
        ("vad", "b", "gauge", ()),
        ("lid", "b", "gauge", ()),
    }
