"""promtool (Debian `prometheus`) checks the rules of deploy/observability/, runs their unit tests (synthetic
series that fire each alert and that keep it quiet), and checks the configuration `make run` writes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from devtools.observability import K8S_SCRAPE_FILE, RULES_FILE
from devtools.prometheus import ScrapeTarget, binary, config

pytestmark = pytest.mark.integration

RULE_TESTS = RULES_FILE.parents[1] / "tests" / "speechgw.rules.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=120)


def test_rules_are_valid() -> None:
    run = promtool("check", "rules", str(RULES_FILE))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_rule_unit_tests_pass() -> None:
    run = promtool("test", "rules", str(RULE_TESTS))
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_broken_expectation_fails_the_rule_tests(tmp_path: Path) -> None:
    """The unit tests can fail: one alert expected at a time it is quiet."""
    doc = yaml.safe_load(RULE_TESTS.read_text())
    doc["rule_files"] = [str(RULES_FILE)]
    case = next(c for c in doc["tests"] if "alert_rule_test" in c)
    check = next(a for a in case["alert_rule_test"] if a.get("exp_alerts"))
    check["eval_time"] = "1m"
    broken = tmp_path / "broken.test.yml"
    broken.write_text(yaml.safe_dump({**doc, "tests": [case]}))
    run = promtool("test", "rules", str(broken))
    assert run.returncode != 0 and "FAILED" in run.stdout + run.stderr


def test_the_scrape_configuration_is_valid(tmp_path: Path) -> None:
    targets = [
        ScrapeTarget("gateway", "127.0.0.1:8080"),
        ScrapeTarget("asr", "127.0.0.1:9101", {"pool": "en"}),
        ScrapeTarget("asr", "127.0.0.1:9102", {"pool": "multi"}),
    ]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config(targets)))
    run = promtool("check", "config", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    jobs = {c["job_name"]: c for c in yaml.safe_load(path.read_text())["scrape_configs"]}
    assert [s["labels"] for s in jobs["asr"]["static_configs"]] == [{"pool": "en"}, {"pool": "multi"}]


def test_the_kubernetes_scrape_configuration_is_valid(tmp_path: Path) -> None:
    """deploy/observability/prometheus-k8s.yml with its pod discovery swapped for a static target (Debian's
    Prometheus is built without Kubernetes discovery): the relabelling and the rule files check."""
    doc = yaml.safe_load(K8S_SCRAPE_FILE.read_text())
    (job,) = doc["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["127.0.0.1:8081"]}]
    doc["rule_files"] = [str(K8S_SCRAPE_FILE.parent / f) for f in doc["rule_files"]]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(doc))
    run = promtool("check", "config", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
