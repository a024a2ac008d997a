"""nginx (Debian) in front of several gateways on loopback, as a load balancer in a cluster would be:
WebSockets proxied with their Upgrade and Connection headers, long read timeouts, and a gateway that
refuses connections retried on the next one (`proxy_next_upstream`) and left out for `fail_timeout_s`.

The access log writes one line per request: the URI, every upstream nginx tried (`a, b` when the
first refused), and the status, so a test can tell which gateway served which session.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devtools.seaweed import free_ports

LOG_FORMAT = "$request_uri|$upstream_addr|$status"


def nginx_config(root: Path, port: int, upstreams: Sequence[str], fail_timeout_s: int = 30) -> str:
    servers = "\n".join(f"    server {u} max_fails=1 fail_timeout={fail_timeout_s}s;" for u in upstreams)
    user = "user root;\n" if os.geteuid() == 0 else ""  # its workers reach the temp dirs under root's tmp
    return f"""{user}worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 1024; }}
http {{
  log_format gateways '{LOG_FORMAT}';
  access_log {root}/access.log gateways;
  client_body_temp_path {root}/tmp/body;
  proxy_temp_path {root}/tmp/proxy;
  fastcgi_temp_path {root}/tmp/fastcgi;
  uwsgi_temp_path {root}/tmp/uwsgi;
  scgi_temp_path {root}/tmp/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream gateways {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header Authorization $http_authorization;
      proxy_connect_timeout 2s;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
      proxy_buffering off;
      proxy_next_upstream error timeout http_502 http_503;
    }}
  }}
}}
"""


@dataclass
class NginxProxy:
    """One nginx master (and worker) in the foreground on `port`, state under `root`."""

    root: Path
    upstreams: Sequence[str]
    port: int = field(default_factory=lambda: free_ports(1)[0])
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/stream"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).is_file():
            raise FileNotFoundError("nginx not found: install nginx (make setup)")
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.root / "nginx.conf"
        conf.write_text(nginx_config(self.root, self.port, self.upstreams))
        out = (self.root / "nginx.out").open("wb")
        cmd = [binary, "-c", str(conf), "-p", str(self.root), "-e", str(self.root / "error.log")]
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}; see {self.root}/error.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nginx not listening within {timeout_s} s")

    def access_log(self) -> list[tuple[str, list[str], str]]:
        """(URI, upstreams tried in order, status) per request so far."""
        path = self.root / "access.log"
        rows = []
        for line in path.read_text().splitlines() if path.exists() else []:
            uri, upstreams, status = line.rsplit("|", 2)
            rows.append((uri, [u.strip() for u in upstreams.split(",") if u.strip()], status))
        return rows

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (nginx's fast shutdown: open connections are closed); SIGKILL after `timeout_s`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
