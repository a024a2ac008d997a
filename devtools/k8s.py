"""Writes the Kubernetes manifests that repeat per process (`deploy/k8s/base/<name>.yaml`, the
disruption budgets, the network policies, the prod overlay's mTLS patch).

The services differ only in name, command, environment and size; one template keeps their
Deployments, Services and probes alike. `python -m devtools.k8s` rewrites the files;
`tests/unit/test_deploy.py` fails when a committed file differs from what this writes.
The gateway's manifest (`gateway.yaml`) is kept by hand: it is the one with an Ingress, a drain and
a different port.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
GRPC_PORT = 50051
HTTP_PORT = 8081
LABEL = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # Deployment and Service name, the `component` label
    module: str  # python -m <module>
    cpu: str  # request; sizes: docs/deploy.md#sizing
    memory: str  # request; the limit is twice this
    replicas: int = 1
    env: Mapping[str, str] = field(default_factory=dict)
    headless: bool = False  # an ASR pool: its members are the Service's A records (docs/routing.md)
    startup_s: int = 60  # model load and warm-up allowed before liveness counts
    data_volume: bool = False  # writes under /data (the archive's spool)


SERVICES = (
    # Silero VAD: ~0.025 CPU s per session-second, two executor threads (VAD_WORKERS).
    ServiceSpec("vad", "services.vad", cpu="2", memory="512Mi", replicas=2, env={"VAD_WORKERS": "2"}),
    # Whisper base language ID: ~0.06 CPU s per session-second in its first seconds, then idle.
    ServiceSpec("lid", "services.lid", cpu="1", memory="512Mi", replicas=2),
    # One ASR pool per language and model; a pod decodes ASR_DECODE_WORKERS utterances at once.
    ServiceSpec(
        "asr-en",
        "services.asr",
        cpu="2",
        memory="1Gi",
        replicas=2,
        env={"ASR_ENGINE": "whisper", "ASR_MODEL": "tiny.en", "ASR_LANG": "en", "ASR_DECODE_WORKERS": "2"},
        headless=True,
    ),
    ServiceSpec(
        "asr-multi",
        "services.asr",
        cpu="2",
        memory="1Gi",
        replicas=2,
        env={"ASR_ENGINE": "whisper", "ASR_MODEL": "base", "ASR_LANG": "", "ASR_DECODE_WORKERS": "2"},
        headless=True,
    ),
    # Encoding and upload: ~0.0015 CPU s per session-second; its spool outlives a store outage.
    ServiceSpec("compress", "services.compress", cpu="250m", memory="256Mi", replicas=2, data_volume=True),
)


def _labels(spec: ServiceSpec) -> dict[str, str]:
    return {LABEL: "speechgw", COMPONENT: spec.name}


def _http_probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period_s, "failureThreshold": failures}


def deployment(spec: ServiceSpec) -> dict[str, Any]:
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}]
    if spec.data_volume:
        mounts.insert(0, {"name": "data", "mountPath": "/data"})
        volumes.insert(0, {"name": "data", "emptyDir": {"sizeLimit": "10Gi"}})
    startup = _http_probe("/healthz", 5, max(1, spec.startup_s // 5))
    container: dict[str, Any] = {
        "name": spec.name,
        "image": "speechgw",
        "args": [spec.module],
        "ports": [{"name": "grpc", "containerPort": GRPC_PORT}, {"name": "http", "containerPort": HTTP_PORT}],
        "envFrom": [{"configMapRef": {"name": "speechgw-config"}}, {"secretRef": {"name": "speechgw-secrets"}}],
        "env": [{"name": k, "value": v} for k, v in spec.env.items()],
        # /healthz is 200 once the service is SERVING (models loaded, warmed up) and 503 while it drains.
        "startupProbe": startup,
        "readinessProbe": _http_probe("/healthz", 5, 2),
        "livenessProbe": _http_probe("/healthz", 10, 3),
        "resources": {"requests": {"cpu": spec.cpu, "memory": spec.memory}, "limits": {"memory": _double(spec.memory)}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    if not container["env"]:
        del container["env"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.name, "labels": _labels(spec)},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": _labels(spec)},
            "template": {
                "metadata": {
                    "labels": _labels(spec),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(HTTP_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    # The service's own grace (<PREFIX>_GRACE_S, 5 s) plus margin.
                    "terminationGracePeriodSeconds": 20,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def service(spec: ServiceSpec) -> dict[str, Any]:
    body: dict[str, Any] = {
        "selector": _labels(spec),
        "ports": [
            {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"},
            {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
        ],
    }
    if spec.headless:
        body = {"clusterIP": "None", **body}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "labels": _labels(spec)},
        "spec": body,
    }


def _double(quantity: str) -> str:
    digits = "".join(c for c in quantity if c.isdigit())
    return f"{2 * int(digits)}{quantity[len(digits) :]}"


def render(spec: ServiceSpec) -> str:
    docs = [deployment(spec), service(spec)]
    return _written(f"{spec.name}: python -m {spec.module}") + "---\n".join(_doc(d) for d in docs)


def _doc(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj, sort_keys=False, width=120)


def _written(what: str) -> str:
    return f"# {what}. Written by `python -m devtools.k8s`; edit it there.\n"


def disruption_budgets() -> str:
    """One PodDisruptionBudget per component: a node drain takes one pod of each at a time."""
    docs = []
    for name in ("gateway", *(s.name for s in SERVICES)):
        labels = {LABEL: "speechgw", COMPONENT: name}
        docs.append(
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": name, "labels": labels},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
            }
        )
    return _written("PodDisruptionBudgets") + "---\n".join(_doc(d) for d in docs)


def network_policies() -> str:
    """Nothing reaches a pod unless allowed: clients the gateway's port, the gateway the services' gRPC
    port, Prometheus (namespace `monitoring`) every HTTP port."""
    everyone = {LABEL: "speechgw"}
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "speechgw-default-deny"},
            "spec": {"podSelector": {"matchLabels": everyone}, "policyTypes": ["Ingress"]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "gateway-from-clients"},
            "spec": {
                "podSelector": {"matchLabels": {**everyone, COMPONENT: "gateway"}},
                "policyTypes": ["Ingress"],
                # The Ingress controller (any namespace) and Prometheus; narrow with a namespaceSelector.
                "ingress": [{"ports": [{"protocol": "TCP", "port": 8080}]}],
            },
        },
    ]
    for spec in SERVICES:
        docs.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": f"{spec.name}-from-gateway"},
                "spec": {
                    "podSelector": {"matchLabels": _labels(spec)},
                    "policyTypes": ["Ingress"],
                    "ingress": [
                        {
                            "from": [{"podSelector": {"matchLabels": {**everyone, COMPONENT: "gateway"}}}],
                            "ports": [{"protocol": "TCP", "port": GRPC_PORT}],
                        },
                        {"from": [monitoring], "ports": [{"protocol": "TCP", "port": HTTP_PORT}]},
                    ],
                },
            }
        )
    return _written("NetworkPolicies") + "---\n".join(_doc(d) for d in docs)


def internal_tls_patch() -> str:
    """The prod overlay's mTLS on every internal link (docs/security.md#tls): every Deployment mounts
    the `speechgw-internal-tls` Secret (cert-manager's `tls.crt`, `tls.key`, `ca.crt`) and its probes
    speak HTTPS, since a service's HTTP port is HTTPS under mTLS."""
    docs = []
    for name in ("gateway", *(s.name for s in SERVICES)):
        container: dict[str, Any] = {
            "name": name,
            "env": [
                {"name": "GRPC_TLS_MODE", "value": "on"},
                {"name": "GRPC_TLS_CERT_FILE", "value": "/etc/speechgw/tls/tls.crt"},
                {"name": "GRPC_TLS_KEY_FILE", "value": "/etc/speechgw/tls/tls.key"},
                {"name": "TLS_CA_FILE", "value": "/etc/speechgw/tls/ca.crt"},
            ],
            "volumeMounts": [{"name": "internal-tls", "mountPath": "/etc/speechgw/tls", "readOnly": True}],
        }
        if name != "gateway":  # the gateway's public port is plain behind the Ingress (TLS_MODE=off)
            https = {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTPS"}}
            container |= {"startupProbe": https, "readinessProbe": https, "livenessProbe": https}
        docs.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name},
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [container],
                            "volumes": [{"name": "internal-tls", "secret": {"secretName": "speechgw-internal-tls"}}],
                        }
                    }
                },
            }
        )
    return _written("mTLS between every process (prod overlay)") + "---\n".join(_doc(d) for d in docs)


def files() -> dict[Path, str]:
    """Every file this module writes, by path under deploy/k8s."""
    out = {Path("base") / f"{spec.name}.yaml": render(spec) for spec in SERVICES}
    out[Path("base") / "pdb.yaml"] = disruption_budgets()
    out[Path("base") / "network-policy.yaml"] = network_policies()
    out[Path("overlays") / "prod" / "internal-tls.yaml"] = internal_tls_patch()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="the deploy/k8s folder")
    args = parser.parse_args(argv)
    for rel, text in files().items():
        (args.out / rel).write_text(text)


if __name__ == "__main__":
    main()
