"""Starts a service as its own process and learns its ports from the `listening` line it prints.

Used by the local stack (`make run`) and by integration tests; both get real processes.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class LaunchError(RuntimeError):
    """A service process exited or stayed silent before it reported SERVING."""


@dataclass
class RunningService:
    name: str
    proc: subprocess.Popen[bytes]
    host: str
    grpc_port: int
    http_port: int
    tls: bool = False  # its HTTP port (and, for the gateway, its WebSocket) speaks TLS
    started_at: float = field(default_factory=time.monotonic)
    _lines: queue.Queue[bytes] = field(repr=False, default_factory=queue.Queue)
    _pump: threading.Thread | None = field(repr=False, default=None)

    @property
    def grpc_addr(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.http_port}"

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, wait for the graceful drain, SIGKILL as the last resort."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._release()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._release()

    def _release(self) -> None:
        """Join the stdout pump and close the pipe (no ResourceWarning after a stop)."""
        if self._pump is not None:
            self._pump.join(5.0)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()


def _pump(stream: object, lines: queue.Queue[bytes], echo: bool) -> None:
    for line in iter(stream.readline, b""):  # type: ignore[attr-defined]
        lines.put(line)
        if echo:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()


def launch(
    name: str,
    args: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
    echo_stdout: bool = False,
    new_session: bool = False,
) -> RunningService:
    """Run `python -m services.<name>` (or `args`) and wait for its `listening` line. `new_session`: in a
    process group of its own, so a Ctrl-C at the terminal reaches only the launcher, which stops its
    children in order (the gateway drains while the services still serve)."""
    cmd = list(args) if args else [sys.executable, "-m", f"services.{name}"]
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, start_new_session=new_session)
    lines: queue.Queue[bytes] = queue.Queue()
    pump = threading.Thread(target=_pump, args=(proc.stdout, lines, echo_stdout), daemon=True)
    pump.start()
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if proc.poll() is not None and lines.empty():
            pump.join(5.0)
            if proc.stdout is not None:
                proc.stdout.close()
            raise LaunchError(f"{name} exited with {proc.returncode} before it was ready")
        if remaining <= 0:
            proc.kill()
            proc.wait()
            pump.join(5.0)
            if proc.stdout is not None:
                proc.stdout.close()
            raise LaunchError(f"{name} was not ready within {timeout_s:.0f} s")
        try:
            raw = lines.get(timeout=min(remaining, 0.2))
        except queue.Empty:
            continue
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("event") == "listening":
            return RunningService(
                name,
                proc,
                msg["host"],
                int(msg["grpc_port"]),
                int(msg["http_port"]),
                bool(msg.get("tls", False)),
                _lines=lines,
                _pump=pump,
            )
