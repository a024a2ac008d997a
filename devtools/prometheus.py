"""A real Prometheus (the Debian `prometheus` package) scraping every process of a local stack, with the
rules of deploy/observability/ loaded: `PROMETHEUS=1 make run` and tests/e2e/test_prometheus.py.

Scrape jobs are named after the processes (`gateway`, `vad`, `denoise`, `lid`, `asr`, `compress`); each
ASR process of a pool carries that pool as the target label `pool`, as the dashboards expect.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from devtools.observability import RULES_FILE
from devtools.seaweed import free_ports

if TYPE_CHECKING:
    from devtools.stack import Stack


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not get ready, or answered a query with an error."""


def binary(name: str = "prometheus") -> str:
    found = shutil.which(name)
    if found is None:
        raise PrometheusError(f"{name} not found: install the Debian package prometheus (make setup)")
    return found


@dataclass(frozen=True)
class ScrapeTarget:
    job: str
    addr: str  # host:port of its /metrics
    labels: Mapping[str, str] = field(default_factory=dict)


def stack_targets(stack: Stack) -> list[ScrapeTarget]:
    """One target per running process: its job is the service name, an ASR process gets its pool."""
    out = []
    for name, svc in stack.running.items():
        job, _, pool = name.partition(".")
        out.append(ScrapeTarget(job, f"{svc.host}:{svc.http_port}", {"pool": pool} if pool else {}))
    return out


def config(
    targets: list[ScrapeTarget],
    scrape_interval: str = "5s",
    rule_files: tuple[Path, ...] = (RULES_FILE,),
    tls: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """prometheus.yml: one scrape job per process name. `tls`: ca_file, cert_file, key_file (mTLS)."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for t in targets:
        jobs.setdefault(t.job, []).append({"targets": [t.addr], "labels": dict(t.labels)})
    scrape_configs = []
    for job, static in jobs.items():
        entry: dict[str, Any] = {"job_name": job, "static_configs": static}
        if tls:
            entry |= {"scheme": "https", "tls_config": dict(tls)}
        scrape_configs.append(entry)
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": scrape_configs,
    }


@dataclass
class Prometheus:
    """`prometheus` on loopback with its own data directory; `query()` is the HTTP API."""

    workdir: Path
    targets: list[ScrapeTarget]
    port: int = 0  # 0: a free one
    scrape_interval: str = "5s"
    tls: Mapping[str, str] | None = None
    retention: str = "1d"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> Prometheus:
        exe = binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config(self.targets, self.scrape_interval, tls=self.tls), sort_keys=False))
        if self.port == 0:
            (self.port,) = free_ports(1)
        log = (self.workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--storage.tsdb.retention.time={self.retention}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as reply:
                    if reply.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise PrometheusError(f"prometheus not ready within {timeout_s:.0f} s: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, n: int = 2000) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a success, PrometheusError with the error text otherwise."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10.0) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query now: the result vector (a scalar comes back as one sample without labels)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def for_stack(stack: Stack, workdir: Path, port: int = 0, scrape_interval: str = "5s") -> Prometheus:
    """A Prometheus (not started) for the running `stack`; over mTLS when the stack runs with TLS."""
    tls = None
    if stack.tls:
        ident, ca = stack.identity("prometheus"), stack.ca_file
        tls = {"ca_file": str(ca), "cert_file": str(ident.cert), "key_file": str(ident.key)}
    return Prometheus(workdir, stack_targets(stack), port, scrape_interval, tls)
