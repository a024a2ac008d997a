"""A real PostgreSQL server on loopback (Debian `postgresql`), for the shared job store in tests and in
the local multi-gateway setup: `initdb` and `postgres` from /usr/lib/postgresql/<version>/bin on a
fresh directory and a free port, trust authentication, 127.0.0.1 only.

PostgreSQL refuses to run as root. Under root (CI) both programs run as the `postgres` system user the
Debian package creates, on a directory of its own under the system temp dir (a pytest tmp dir under
root's 0700 directory is out of its reach). Durability settings are off (`fsync=off`): this server
holds test data, and the tests kill gateways, not it.

`running_postgres()` yields a started server; `url` is the `JOBS_STORE_URL` of its database, and
`schema_url(name)` one whose tables live in their own schema (one per test on one server).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from devtools.seaweed import free_ports

DB_USER = "speechgw"
DB_NAME = "speechgw"
SYSTEM_USER = "postgres"  # created by the Debian package; the server's user when we are root


def postgres_bin() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin that has `postgres` and `initdb`."""
    bins = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").is_file()]
    found = sorted(
        (p for p in bins if (p / "initdb").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise FileNotFoundError("PostgreSQL not found under /usr/lib/postgresql: install postgresql (make setup)")
    return found[-1]


@dataclass
class PostgresServer:
    """One `postgres` process; `start()` runs `initdb` first when its data directory is new."""

    port: int = field(default_factory=lambda: free_ports(1)[0])
    root: Path | None = None  # default: a fresh directory under the system temp dir, removed by `stop()`
    proc: subprocess.Popen[bytes] | None = None
    _own_root: bool = False

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"

    def schema_url(self, schema: str) -> str:
        """The URL with `search_path` set to `schema` (which `create_schema` made)."""
        return f"{self.url}?options={quote(f'-c search_path={schema}')}"

    def _as_server_user(self) -> dict[str, Any]:
        """Popen arguments that drop root to the server's user (nothing when not root)."""
        if os.geteuid() != 0:
            return {}
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError as exc:
            raise RuntimeError(f"running as root needs the '{SYSTEM_USER}' user (the postgresql package)") from exc
        return {"user": SYSTEM_USER, "group": SYSTEM_USER, "extra_groups": []}

    def _prepare_root(self) -> Path:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="speechgw-pg-"))
            self._own_root = True
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, SYSTEM_USER, SYSTEM_USER)
        return self.root

    def start(self, timeout_s: float = 60.0) -> None:
        """initdb (first time), then start `postgres` and wait until it accepts a query."""
        root = self._prepare_root()
        data, bindir, drop = root / "data", postgres_bin(), self._as_server_user()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "HOME": str(root)}
        if not (data / "PG_VERSION").exists():
            subprocess.run(
                [str(bindir / "initdb"), "-D", str(data), "-U", DB_USER, "--auth=trust", "-E", "UTF8", "--no-sync"],
                check=True,
                capture_output=True,
                env=env,
                cwd=root,
                **drop,
            )
        log = (root / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(root),  # its unix socket here, not in /var/run/postgresql
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            **drop,
        )
        log.close()
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        admin = f"postgresql://{DB_USER}@127.0.0.1:{self.port}/postgres"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}; see {self.root}/postgres.log")
            try:
                with psycopg.connect(admin, autocommit=True, connect_timeout=2) as conn:
                    if conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", (DB_NAME,)).fetchone() is None:
                        conn.execute(f"CREATE DATABASE {DB_NAME}")
                return
            except psycopg.OperationalError as exc:  # not accepting connections yet
                last = exc
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"PostgreSQL not ready within {timeout_s} s: {last}")

    def create_schema(self, schema: str) -> str:
        """A fresh schema in the database; returns its `schema_url`."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        return self.schema_url(schema)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Fast shutdown (SIGINT: running transactions are rolled back), then remove an own directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_postgres(root: Path | None = None) -> Iterator[PostgresServer]:
    server = PostgresServer(root=root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
