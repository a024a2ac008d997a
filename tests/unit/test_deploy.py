"""The deployment files: the Dockerfile's rules, the Kubernetes overlays rendered by `kubectl kustomize`
and validated against the Kubernetes schemas, and the rules every workload must follow (docs/deploy.md).

The images cannot be built on this machine (no container engine, no registry to pull a base image
from: docs/deploy.md#images), so the Dockerfile is checked here instead.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from devtools import k8s

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSION = "1.32.0"  # the oldest release the manifests are checked against


# --- the Dockerfile -----------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and heredoc bodies skipped."""
    out: list[tuple[str, str]] = []
    lines = iter(text.splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        heredoc = re.search(r"<<'?(\w+)'?", rest)
        if heredoc:
            for body in lines:
                if body.strip() == heredoc.group(1):
                    break
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text())


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1] :]


def test_dockerfile_is_multi_stage_from_a_pinned_base(dockerfile: list[tuple[str, str]]) -> None:
    froms = [rest for word, rest in dockerfile if word == "FROM"]
    assert len(froms) >= 2, "a build stage and a runtime stage"
    args = dict(rest.split("=", 1) for word, rest in dockerfile if word == "ARG" and "=" in rest)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), f"base image not pinned to a release: {base}"
    assert all("latest" not in f for f in froms)


def test_runtime_runs_as_a_numeric_non_root_user(dockerfile: list[tuple[str, str]]) -> None:
    users = [rest for word, rest in _final_stage(dockerfile) if word == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "numeric, so runAsNonRoot can check it"
    manifests_uid = {c["runAsUser"] for c in _pod_security_contexts()}
    assert manifests_uid == {int(uid)}


def test_models_are_baked_at_build_time_never_downloaded(dockerfile: list[tuple[str, str]]) -> None:
    runs = " ".join(rest for word, rest in dockerfile if word == "RUN")
    assert "make -s print-model-wheels" in runs, "the Makefile's one list of model wheels"
    assert "common.models prepare" in runs and "services.denoise.prepare" in runs
    final = _final_stage(dockerfile)
    assert any(word == "COPY" and "/opt/models" in rest for word, rest in final)
    assert not re.search(r"\b(curl|wget)\b", DOCKERFILE.read_text()), "nothing fetched outside the registries"
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "SPEECHGW_MODELS_DIR=/opt/models" in env


def test_model_wheels_exclude_the_development_tools() -> None:
    wheels = subprocess.run(["make", "-s", "print-model-wheels"], cwd=ROOT, capture_output=True, text=True, check=True)
    names = wheels.stdout.split()
    assert names and not any(n.startswith("seaweedfs") for n in names)


def test_health_check_signal_and_init(dockerfile: list[tuple[str, str]]) -> None:
    final = dict(_final_stage(dockerfile))
    assert "HEALTHCHECK_URL" in final["HEALTHCHECK"]
    assert final["STOPSIGNAL"] == "SIGTERM"
    entry = yaml.safe_load(final["ENTRYPOINT"])
    assert entry[:2] == ["tini", "--"], "tini forwards SIGTERM (the drain) and reaps children"
    assert yaml.safe_load(final["CMD"]) == ["orchestrator"]


def test_every_entry_the_manifests_run_is_a_module(dockerfile: list[tuple[str, str]]) -> None:
    modules = {c["args"][0] for c in _containers(_render("prod"))}
    assert modules == {"orchestrator", "services.vad", "services.lid", "services.asr", "services.compress"}
    for module in modules:
        assert importlib.util.find_spec(f"{module}.__main__") is not None, module


def test_image_ports_match_the_manifests(dockerfile: list[tuple[str, str]]) -> None:
    env = " ".join(rest for word, rest in _final_stage(dockerfile) if word == "ENV")
    for prefix in ("VAD", "DENOISE", "LID", "ASR", "COMPRESS"):
        assert f"{prefix}_GRPC_PORT={k8s.GRPC_PORT}" in env and f"{prefix}_HTTP_PORT={k8s.HTTP_PORT}" in env
        assert f"{prefix}_HOST=0.0.0.0" in env
    assert "GATEWAY_PORT=8080" in env and "GATEWAY_HOST=0.0.0.0" in env


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".venv", ".models", "var", ".git"):
        assert path in ignored


# --- Kubernetes ---------------------------------------------------------------------------------


def test_generated_manifests_are_current() -> None:
    for rel, text in k8s.files().items():
        assert (K8S / rel).read_text() == text, f"{rel} differs: run `python -m devtools.k8s`"


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def _render(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _RENDERED:
        kubectl = shutil.which("kubectl")
        assert kubectl, "kubectl is installed by `make setup` (Debian kubernetes-client)"
        out = subprocess.run(
            [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, check=True
        )
        _RENDERED[overlay] = [d for d in yaml.safe_load_all(out.stdout) if d]
    return _RENDERED[overlay]


def _kinds(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _containers(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for dep in _kinds(docs, "Deployment").values():
        yield from dep["spec"]["template"]["spec"]["containers"]


def _pod_security_contexts() -> Iterator[dict[str, Any]]:
    for overlay in OVERLAYS:
        for dep in _kinds(_render(overlay), "Deployment").values():
            yield dep["spec"]["template"]["spec"]["securityContext"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    docs = _render(overlay)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_is_locked_down_and_probed(overlay: str) -> None:
    docs = _render(overlay)
    deployments = _kinds(docs, "Deployment")
    assert set(deployments) == {"gateway", "vad", "lid", "asr-en", "asr-multi", "compress"}
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert c["readinessProbe"] and c["livenessProbe"], name
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], name
            assert ":" in c["image"] and not c["image"].endswith(":latest"), name
    # Every Deployment has its PodDisruptionBudget, and every Service selects pods that exist.
    assert set(_kinds(docs, "PodDisruptionBudget")) == set(deployments)
    for svc in _kinds(docs, "Service").values():
        selector = svc["spec"]["selector"]
        assert any(
            selector.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments.values()
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_drain_fits_the_grace_period(overlay: str) -> None:
    docs = _render(overlay)
    config = next(d for d in _kinds(docs, "ConfigMap").values() if "DRAIN_GRACE_SEC" in d.get("data", {}))
    drain_s = int(config["data"]["DRAIN_GRACE_SEC"])
    gateway = _kinds(docs, "Deployment")["gateway"]["spec"]["template"]["spec"]
    pre_stop = gateway["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # After the grace, the sessions still streaming end with `shutdown` and their stages get up to
    # STAGE_TIMEOUT_SEC (default 15 s) to answer (docs/runbook.md#shutdown-and-deploys).
    stage_s = int(config["data"].get("STAGE_TIMEOUT_SEC", 15))
    assert gateway["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain_s + stage_s + 2
    assert gateway["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_reaches_the_stages(overlay: str) -> None:
    docs = _render(overlay)
    policies = _kinds(docs, "NetworkPolicy")
    deny = policies["speechgw-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    for name in ("vad", "lid", "asr-en", "asr-multi", "compress"):
        rules = policies[f"{name}-from-gateway"]["spec"]["ingress"]
        grpc = [r for r in rules if {"protocol": "TCP", "port": k8s.GRPC_PORT} in r["ports"]]
        assert grpc and all(
            peer == {"podSelector": {"matchLabels": {k8s.LABEL: "speechgw", k8s.COMPONENT: "gateway"}}}
            for r in grpc
            for peer in r["from"]
        ), name


def test_routing_names_a_headless_service_per_pool() -> None:
    import tomllib

    docs = _render("prod")
    routing = next(d for d in _kinds(docs, "ConfigMap").values() if "routing.toml" in d.get("data", {}))
    table = tomllib.loads(routing["data"]["routing.toml"])
    services = _kinds(docs, "Service")
    for pool in table["pools"].values():
        for name in pool["dns"]:
            host, _, port = name.rpartition(":")
            assert services[host]["spec"].get("clusterIP") == "None", f"{host}: one A record per member"
            assert int(port) == k8s.GRPC_PORT


def test_prod_autoscales_on_exported_metrics() -> None:
    docs = _render("prod")
    hpas = _kinds(docs, "HorizontalPodAutoscaler")
    deployments = _kinds(docs, "Deployment")
    exported = (ROOT / "docs" / "metrics.md").read_text()
    assert {"gateway", "asr-en", "asr-multi"} <= set(hpas)
    for hpa in hpas.values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        for metric in hpa["spec"]["metrics"]:
            assert f"`{metric['pods']['metric']['name']}`" in exported


def test_prod_links_are_mutual_tls() -> None:
    for c in _containers(_render("prod")):
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env["GRPC_TLS_MODE"] == "on", c["name"]
        assert all(env[k] for k in ("GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE", "TLS_CA_FILE"))


def test_prod_ingress_is_sticky_by_flow_with_websocket_timeouts() -> None:
    ingress = _kinds(_render("prod"), "Ingress")["gateway"]
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$arg_flow"
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600


def test_dev_secrets_are_long_enough_for_the_gateway() -> None:
    secret = next(iter(_kinds(_render("dev"), "Secret").values()))
    import base64

    for key in ("AUTH_JWT_SECRET", "RECORD_URL_KEY"):
        assert len(base64.b64decode(secret["data"][key])) >= 32


def test_dockerfile_parser_sees_heredocs_and_continuations() -> None:
    text = "FROM a AS b\nRUN x \\\n  y\nRUN python - <<'PY'\nFROM fake\nPY\nUSER 1\n"
    assert _instructions(text) == [("FROM", "a AS b"), ("RUN", "x  y"), ("RUN", "python - <<'PY'"), ("USER", "1")]


def test_adapter_serves_every_metric_the_hpas_read() -> None:
    rules = yaml.safe_load((K8S / "prometheus-adapter-rules.yaml").read_text())["rules"]
    served = {r["name"]["as"] for r in rules}
    wanted = {
        m["pods"]["metric"]["name"]
        for hpa in _kinds(_render("prod"), "HorizontalPodAutoscaler").values()
        for m in hpa["spec"]["metrics"]
    }
    assert wanted <= served


def test_the_cluster_routing_table_loads_in_the_gateway() -> None:
    from orchestrator.routing.table import RoutingTable

    table = RoutingTable.load(K8S / "base" / "routing.toml")
    assert all(spec.dns and not spec.addrs for spec in table.pools)
