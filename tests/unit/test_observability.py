"""deploy/observability/ is what devtools/observability.py generates; its expressions use only metrics that
docs/metrics.md lists; every alert has a runbook section and promtool cases that fire it and keep it quiet."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from devtools import observability as obs

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
METRICS_DOC = REPO / "docs" / "metrics.md"
RUNBOOK = REPO / "docs" / "runbook.md"
RULE_TESTS = REPO / "deploy" / "observability" / "tests" / "speechgw.rules.test.yml"

PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "and", "or", "unless", "on", "ignoring",
    "rate", "increase", "delta", "deriv", "histogram_quantile", "max_over_time", "min_over_time", "time",
    "label_values",
}  # fmt: skip


def test_committed_files_are_the_generated_ones() -> None:
    stale = [str(p.relative_to(REPO)) for p, text in obs.rendered().items() if not p.exists() or p.read_text() != text]
    assert not stale, f"run `python -m devtools.observability`: {stale}"


def test_dashboards_are_grafana_models_with_unique_ids_and_expressions() -> None:
    for d in obs.dashboards():
        model = json.loads((obs.DASHBOARD_DIR / f"{d.uid}.json").read_text())
        assert model["uid"] == d.uid
        ids = [p["id"] for p in model["panels"]]
        assert len(ids) == len(set(ids))
        for panel in model["panels"]:
            if panel["type"] != "row":
                assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
                assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


def documented_metrics() -> set[str]:
    names = set(re.findall(r"^\| `([a-z_:][a-z0-9_:]*)` \|", METRICS_DOC.read_text(), re.M))
    histograms = set(re.findall(r"^\| `([a-z_:][a-z0-9_:]*)` \| histogram \|", METRICS_DOC.read_text(), re.M))
    return names | {f"{h}_{s}" for h in histograms for s in ("bucket", "count", "sum")}


def metric_names(expr: str) -> set[str]:
    """The series names an expression reads: identifiers outside selectors, ranges, strings and groupings."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", bare)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhd]?|e", w)}


def test_every_expression_reads_documented_metrics_or_recorded_series() -> None:
    known = documented_metrics() | {r.record for r in obs.records()} | {"up"}
    unknown = {
        (e.source, name) for e in obs.expressions() for name in metric_names(e.expr) | metric_names(e.signal or "")
    }
    unknown = {(src, name) for src, name in unknown if name not in known}
    assert not unknown, sorted(unknown)


def test_metric_names_parser_sees_through_promql() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, pool) (rate(x_bucket{job="a", le=~"6(\\\\.0)?"}[5m]))) / y > 0'
    assert metric_names(expr) == {"x_bucket", "y"}


def test_every_alert_has_a_runbook_section() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)
    }
    missing = {a.name: a.anchor for a in obs.alerts() if a.anchor not in anchors}
    assert not missing, missing


def test_every_alert_has_promtool_cases_that_fire_it_and_keep_it_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a.name for a in obs.alerts()}
    assert names - fired == set(), "never fired"
    assert names - quiet == set(), "never shown quiet"
    assert (fired | quiet) - names == set(), "cases of alerts that do not exist"


def test_burn_rate_thresholds_follow_the_objectives() -> None:
    rules = {a.name: a for a in obs.alerts()}
    assert "> 0.0144 and" in rules["SpeechgwAvailabilityBudgetBurnFast"].expr  # 14.4 x 0.1 %
    assert "> 0.006 and" in rules["SpeechgwAvailabilityBudgetBurnSlow"].expr  # 6 x 0.1 %
    assert "> 0.72 and" in rules["SpeechgwFirstPartialBudgetBurnFast"].expr  # 14.4 x 5 %
    assert "ratio_rate1h > " in rules["SpeechgwFirstPartialBudgetBurnFast"].expr
    assert "ratio_rate5m > " in rules["SpeechgwFirstPartialBudgetBurnFast"].expr
    assert "ratio_rate6h > 0.3 and" in rules["SpeechgwFinalLagBudgetBurnSlow"].expr
    assert "ratio_rate30m > 0.3" in rules["SpeechgwFinalLagBudgetBurnSlow"].expr


def relabel(rule: dict[str, object], value: str) -> str | None:
    """One `replace` relabel rule of Prometheus (regex anchored at both ends), on one source value."""
    m = re.fullmatch(str(rule["regex"]), value)
    if m is None:
        return None
    return re.sub(r"\$(\d+)", lambda g: m.group(int(g.group(1))), str(rule.get("replacement", "$1")))


def test_kubernetes_scrape_labels_match_the_manifests_jobs_and_pools() -> None:
    """Every pod of deploy/k8s gets a job the rules know, and each ASR pod the pool of the routing file."""
    relabels = obs.k8s_scrape_document()["scrape_configs"][0]["relabel_configs"]
    rules = {r["target_label"]: r for r in relabels if "target_label" in r}
    components = set()
    for path in (REPO / "deploy" / "k8s" / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("Deployment", "StatefulSet"):
                meta = doc["spec"]["template"]["metadata"]
                components.add(meta["labels"]["app.kubernetes.io/component"])
                assert meta["annotations"]["prometheus.io/scrape"] == "true", path
    assert components
    jobs = {c: relabel(rules["job"], c) for c in components}
    assert set(jobs.values()) <= set(obs.JOBS), jobs
    pools = {relabel(rules["pool"], c) for c in components} - {None}
    routing = (REPO / "deploy" / "k8s" / "base" / "routing.toml").read_text()
    assert pools == set(re.findall(r"^\[pools\.(\w+)\]", routing, re.M)), pools
    assert relabel(rules["__address__"], "10.1.2.3:50051;8081") == "10.1.2.3:8081"
    assert relabel(rules["__address__"], "10.1.2.3;8080") == "10.1.2.3:8080"
