"""`speechgw-stack`: the whole stack on localhost, every service its own process (README, `make run`).

speechgw-stack run            # foreground; Ctrl-C stops everything
speechgw-stack demo [FILE]    # start, stream a sample clip in real time, print events, stop
speechgw-stack run --tls      # wss:// and mTLS everywhere, certificates from a throwaway CA in var/certs
speechgw-stack run --prometheus   # and a Prometheus scraping every process, with the rules (PROMETHEUS=1)

`run` supervises its children as Kubernetes would: one that exits is started again on the same ports,
after a backoff that grows while it keeps failing (devtools/restarts.py), and every exit and restart
is logged. On SIGTERM or Ctrl-C (which reaches only the stack: each child has its own process group)
the gateway drains first, then the services stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.devauth import keys_dir, mint, with_dev_keys
from devtools.launcher import LaunchError, RunningService, launch
from devtools.restarts import RestartBackoff, RestartPolicy

# Two ASR pools with different models (SPEC §4): English on Whisper tiny.en, the rest on the
# multilingual Whisper base; LID picks between them.
DEFAULT_SERVICES = ("vad", "lid", "asr.en", "asr.multi", "compress")
ADDR_ENV = {
    "vad": "VAD_ADDR",
    "denoise": "DENOISE_ADDR",
    "lid": "LID_ADDR",
    "asr": "ASR_ADDR",
    "compress": "COMPRESS_ADDR",
}
# The prefix of each service's ServerConfig variables (`VAD_GRPC_PORT`): a restart keeps its ports.
PORT_PREFIX = {"vad": "VAD_", "denoise": "DENOISE_", "lid": "LID_", "asr": "ASR_", "compress": "COMPRESS_"}
# Every client of the local stack is 127.0.0.1 (one address, one tenant until sessions are
# authenticated): the limits per client of docs/security.md would count the tests, benchmarks and
# demos of one machine as one client. The stack turns them off unless its environment sets them.
LOOPBACK_LIMITS = {
    "MAX_CONNECTIONS_PER_IP": "0",
    "MAX_PENDING_CONNECTIONS": "0",
    "MAX_PENDING_PER_IP": "0",
    "MAX_SESSIONS_PER_IP": "0",
    "MAX_SESSIONS_PER_TENANT": "0",
    "SESSION_START_RATE": "0",
}
# `make run` keeps the archive's HTTP port fixed, so record URLs (and the deferred jobs that hold them)
# stay valid when the archive restarts (docs/storage.md); PUBLIC_BASE, when set, wins over it.
ARCHIVE_HTTP_PORT = "8081"
PAGE_TOKEN_TTL_S = 12 * 3600.0  # the token in the browser page's link that `make run` prints
POOL_ENV = {
    "en": {"ASR_ENGINE": "whisper", "ASR_MODEL": "tiny.en", "ASR_LANG": "en"},
    "multi": {"ASR_ENGINE": "whisper", "ASR_MODEL": "base"},
}


def sample_clip() -> Path:
    from common.models import package_dir

    return package_dir("pytest_audioeval") / "samples" / "audio" / "en" / "quick_brown_fox.wav"


def routing_toml(pools: Mapping[str, list[str]]) -> str:
    """The local stack's routing table: English to `en`, everything else to `multi`."""
    default = "multi" if "multi" in pools else next(iter(pools))
    lines = [f'default_pool = "{default}"', ""]
    for name, addrs in pools.items():
        lines += [f"[pools.{name}]", "addrs = [" + ", ".join(f'"{a}"' for a in addrs) + "]", ""]
    if "en" in pools:
        lines += ["[[routes]]", 'lang = "en"', 'domain = "*"', 'pool = "en"', ""]
    return "\n".join(lines)


@dataclass
class Stack:
    """The services and the gateway as real processes on loopback, on free ports by default.

    `services` names `vad`, `denoise`, `lid`, `compress`, `asr` (one pool at ASR_ADDR) or `asr.<pool>`
    (one process per pool; a routing file is written for the gateway)."""

    services: Sequence[str] = DEFAULT_SERVICES
    env: Mapping[str, str] = field(default_factory=dict)
    gateway_port: int = 0
    echo: bool = False
    running: dict[str, RunningService] = field(default_factory=dict)
    workdir: Path | None = None
    # wss:// at the gateway and mTLS on every internal link, with a throwaway CA (devtools/certs.py)
    # written to `certs_dir` (default: the workdir's `certs`, else var/certs).
    tls: bool = False
    certs_dir: Path | None = None
    # Restart a child that exits (`make run`); tests that kill a child on purpose leave it off.
    supervise: bool = False
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    # Every exit the supervisor saw: (child, exit code), in order; and the restarts per child.
    exits: list[tuple[str, int]] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    _identities: dict[str, Any] = field(default_factory=dict, repr=False)
    _seaweed: Any = field(default=None, repr=False)
    _launch_env: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _watcher: threading.Thread | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def url(self) -> str:
        gw = self.running["gateway"]
        return f"{'wss' if gw.tls else 'ws'}://{gw.host}:{gw.http_port}/ws/stream"

    @property
    def ca_file(self) -> Path | None:
        """The CA a client trusts for `url` (None without TLS)."""
        return self.certs_dir / "ca.pem" if self.tls and self.certs_dir is not None else None

    def _make_certs(self) -> None:
        """One identity per process, plus `edge` for the gateway's public port; all from one fresh CA."""
        if not self.tls:
            return
        from devtools.certs import dev_certs

        if self.certs_dir is None:
            self.certs_dir = self.workdir / "certs" if self.workdir is not None else Path("var/certs")
        self.certs_dir = self.certs_dir.resolve()
        # `prometheus`: the client identity a local Prometheus scrapes the /metrics ports with.
        self._identities = dev_certs(self.certs_dir, [*self.services, "gateway", "edge", "seaweed", "prometheus"])

    def identity(self, name: str) -> Any:
        """The certificate and key of one identity of this stack's CA (with TLS only)."""
        return self._identities[name]

    def tls_env(self, name: str) -> dict[str, str]:
        """The TLS variables of one process (empty without TLS)."""
        if not self.tls:
            return {}
        ident = self._identities[name]
        env = {"GRPC_TLS_CERT_FILE": str(ident.cert), "GRPC_TLS_KEY_FILE": str(ident.key)}
        env["TLS_CA_FILE"] = str(self.ca_file)
        if name == "gateway":
            edge = self._identities["edge"]
            env |= {"TLS_CERT_FILE": str(edge.cert), "TLS_KEY_FILE": str(edge.key)}
        return env

    @property
    def http_base(self) -> str:
        return self.running["gateway"].http_base

    def token(self, sub: str = "dev", ttl_s: float = 3600.0, **limits: Any) -> str | None:
        """A token for tenant `sub` that this stack's gateway accepts (None when authentication is off)."""
        secret = self.env.get("AUTH_JWT_SECRET", "")
        if not secret or self.env.get("AUTH_MODE") == "off":
            return None
        return mint(
            secret,
            sub,
            ttl_s,
            audience=self.env.get("AUTH_JWT_AUDIENCE", ""),
            issuer=self.env.get("AUTH_JWT_ISSUER", ""),
            **limits,
        )

    def gateway_env(self) -> dict[str, str]:
        """The environment that points a gateway at these services."""
        env = {**LOOPBACK_LIMITS, **self.env, **self.tls_env("gateway")}
        pools: dict[str, list[str]] = {}
        for name, svc in self.running.items():
            if name.startswith("asr."):
                pools.setdefault(name.split(".", 1)[1], []).append(svc.grpc_addr)
            elif name in ADDR_ENV:
                env[ADDR_ENV[name]] = svc.grpc_addr
        if pools:
            workdir = self.workdir or Path(tempfile.mkdtemp(prefix="speechgw-stack-"))
            self.workdir = workdir
            routing = workdir / "routing.toml"
            routing.write_text(routing_toml(pools))
            env["ROUTING_FILE"] = str(routing)
            if "en" in pools:
                # The provisional stream bets on English, the cheapest pool (docs/routing.md).
                env.setdefault("ASR_PROVISIONAL_LANG", "en")
        return env

    def _start_object_storage(self) -> None:
        """STORAGE_BACKEND=s3 without an S3_ENDPOINT_URL: run a local SeaweedFS (docs/storage.md)."""
        if self.env.get("STORAGE_BACKEND") != "s3" or self.env.get("S3_ENDPOINT_URL"):
            return
        from devtools.seaweed import SeaweedS3

        self.workdir = self.workdir or Path(tempfile.mkdtemp(prefix="speechgw-stack-"))
        tls = None
        if self.tls:  # HTTPS on the S3 port; no client certificate asked: record URLs are opened by clients
            ident, ca = self._identities["seaweed"], self.ca_file
            assert ca is not None
            tls = (ident.cert, ident.key, ca)
        self._seaweed = SeaweedS3(self.workdir / "seaweed", tls=tls)
        self._seaweed.start()
        self.env = {**self.env, **self._seaweed.env(self.env.get("S3_BUCKET", "speechgw-records"))}

    def start(self, timeout_s: float = 180.0) -> Stack:
        if self.workdir is not None:
            # All state of this stack under one folder (tests, benchmarks); `make run` uses ./var.
            self.env = {
                "COMPRESS_STORE_DIR": str(self.workdir / "records"),
                "COMPRESS_SPOOL_DIR": str(self.workdir / "spool"),
                "JOBS_DB": str(self.workdir / "jobs.sqlite"),
                "ARCHIVE_SPOOL_DIR": str(self.workdir / "archive-spool"),
                **self.env,
            }
        # Authentication on with the development keys unless the environment configures it (README).
        self.env = with_dev_keys(self.env)
        self._make_certs()
        self._start_object_storage()

        def one(name: str) -> RunningService:
            module, _, pool = name.partition(".")
            env = {**self.env, **POOL_ENV.get(pool, {})} if module == "asr" else dict(self.env)
            env |= self.tls_env(name)
            self._launch_env[name] = env
            return self._launch(name, env, timeout_s)

        self._stopping.clear()
        try:
            # Start the services side by side: model warm-ups overlap.
            with ThreadPoolExecutor(len(self.services) or 1) as pool:
                futures = {name: pool.submit(one, name) for name in self.services}
                errors = []
                for name, future in futures.items():
                    try:
                        self.running[name] = future.result()
                    except Exception as exc:
                        errors.append(exc)
                if errors:
                    raise errors[0]
            gw_env = self.gateway_env()
            gw_env["GATEWAY_PORT"] = str(self.gateway_port)
            self._launch_env["gateway"] = gw_env
            self.running["gateway"] = self._launch("gateway", gw_env, timeout_s)
        except BaseException:
            self.stop()
            raise
        if self.supervise:
            self._watcher = threading.Thread(target=self._watch, name="stack-supervisor", daemon=True)
            self._watcher.start()
        return self

    def _launch(self, name: str, env: Mapping[str, str], timeout_s: float = 180.0) -> RunningService:
        module = name.partition(".")[0]
        args = [sys.executable, "-m", "orchestrator" if name == "gateway" else f"services.{module}"]
        return launch(name, args, env=env, timeout_s=timeout_s, echo_stdout=self.echo, new_session=True)

    def _watch(self) -> None:
        """The supervisor: a child that exits is started again on its ports after its backoff."""
        backoffs: dict[str, RestartBackoff] = {}
        while not self._stopping.wait(0.2):
            with self._lock:
                gone = [(n, s) for n, s in self.running.items() if s.proc.poll() is not None]
            for name, svc in gone:
                code = svc.proc.returncode  # poll() reaped it: no zombie
                svc.kill()  # releases its stdout pump
                backoff = backoffs.setdefault(name, RestartBackoff(self.restart_policy))
                delay = backoff.on_exit(time.monotonic() - svc.started_at)
                self.exits.append((name, code))
                _log("child_exited", name, code=code, restart_in_s=round(delay, 2), exits_in_a_row=backoff.failures)
                if self._stopping.wait(delay):
                    return
                self._restart(name, svc)

    def restart(self, name: str) -> RunningService:
        """Stop `name` if it still runs and start it again on its ports, as the supervisor does for a
        child that exits (a test's kill-and-restart without `supervise`)."""
        old = self.running[name]
        if old.proc.poll() is None:
            old.stop()
        else:
            old.kill()  # already dead: only release its pipe
        self._restart(name, old)
        if self.running[name] is old:
            raise LaunchError(f"{name} did not start again")
        return self.running[name]

    def _restart(self, name: str, old: RunningService) -> None:
        env = dict(self._launch_env[name])
        if name == "gateway":
            env["GATEWAY_PORT"] = str(old.http_port)
        else:
            prefix = PORT_PREFIX[name.partition(".")[0]]
            env |= {f"{prefix}GRPC_PORT": str(old.grpc_port), f"{prefix}HTTP_PORT": str(old.http_port)}
        try:
            svc = self._launch(name, env)
        except LaunchError as exc:
            _log("child_restart_failed", name, error=str(exc))
            old.started_at = time.monotonic()  # seen as exited again at the next look: the backoff grows
            return
        with self._lock:
            if self._stopping.is_set():
                svc.stop()
                return
            self.running[name] = svc
        self.restarts[name] = self.restarts.get(name, 0) + 1
        if svc.proc.poll() is None:
            _log("child_restarted", name, pid=svc.proc.pid, restarts=self.restarts[name])

    def stop(self) -> None:
        """Gateway first (it drains), then the services; each SIGTERM with grace, SIGKILL last."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(200.0)
            self._watcher = None
        for name in ["gateway", *reversed(list(self.services))]:
            with self._lock:
                svc = self.running.pop(name, None)
            if svc is not None:
                svc.stop(self._drain_s() if name == "gateway" else 10.0)
        if self._seaweed is not None:
            self._seaweed.stop()
            self._seaweed = None

    def _drain_s(self) -> float:
        """How long the gateway may take to drain: DRAIN_GRACE_SEC, then its stages' answers."""
        grace = float(self.env.get("DRAIN_GRACE_SEC") or 30.0)
        stage_timeout = float(self.env.get("STAGE_TIMEOUT_SEC") or 15.0)
        return grace + stage_timeout + 5.0

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def page_link(http_base: str, token: str | None) -> str:
    """The browser page's address with the token in its fragment, which never reaches a server (docs/web.md)."""
    return f"{http_base}/" + (f"#token={token}" if token else "")


def _log(event: str, child: str, **fields: Any) -> None:
    """One JSON line on stderr, like the children's own logs (docs/runbook.md)."""
    line = {"ts": round(time.time(), 3), "level": "WARNING", "stage": "stack", "event": event, "child": child}
    print(json.dumps(line | fields), file=sys.stderr, flush=True)


def _services_from_env() -> tuple[str, ...]:
    raw = os.environ.get("STACK_SERVICES", "")
    return tuple(s for s in raw.split(",") if s) or DEFAULT_SERVICES


def _tls_from_env() -> bool:
    from common.envconf import parse_bool

    return parse_bool(os.environ.get("STACK_TLS", "") or "false")


def _prometheus_from_env() -> bool:
    from common.envconf import parse_bool

    return parse_bool(os.environ.get("PROMETHEUS", "") or "false")


def cmd_run(port: int, tls: bool, prometheus: bool) -> int:
    env = dict(os.environ)
    env.setdefault("COMPRESS_HTTP_PORT", ARCHIVE_HTTP_PORT)
    stack = Stack(_services_from_env(), env=env, gateway_port=port, echo=True, tls=tls, supervise=True)
    with stack, contextlib.ExitStack() as extras:
        ca = f"; clients trust {stack.ca_file} (speechgw-client --ca)" if stack.ca_file else ""
        print(f"stack up: {stack.url}{ca}  (Ctrl-C stops)", file=sys.stderr, flush=True)
        if prometheus:
            from devtools.prometheus import for_stack

            prom_port = int(os.environ.get("PROMETHEUS_PORT", "9091"))
            prom = extras.enter_context(for_stack(stack, Path("var/prometheus").resolve(), prom_port))
            print(
                f"prometheus: {prom.url} scrapes {len(stack.running)} processes every {prom.scrape_interval} "
                f"with the rules of deploy/observability (data in {prom.workdir})",
                file=sys.stderr,
                flush=True,
            )
        page_token = stack.token(ttl_s=PAGE_TOKEN_TTL_S)
        if page_token is not None:
            print(
                "authentication on: speechgw-client mints its token from the development key in "
                f"{keys_dir()} (another client: --token or SPEECHGW_TOKEN)",
                file=sys.stderr,
                flush=True,
            )
        print(f"browser page: {page_link(stack.http_base, page_token)}", file=sys.stderr, flush=True)
        # Wait for Ctrl-C or SIGTERM without a Python handler (an Event.set in a handler can deadlock
        # the main thread). The children are already started, so they keep the default mask.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        print("stopping the stack", file=sys.stderr, flush=True)
    return 0


def cmd_demo(clip: Path, speed: float, tls: bool) -> int:
    from devtools.client import stream_pcm
    from speechgw_client import load_audio

    env = {**os.environ, "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING")}
    with Stack(_services_from_env(), env=env, tls=tls) as stack:
        print(f"# stack up at {stack.url}; streaming {clip.name} at {speed:g}x real time", file=sys.stderr)
        result = asyncio.run(
            stream_pcm(
                stack.url,
                load_audio(clip),
                speed=speed,
                token=stack.token(),
                start={
                    "flowId": "demo-" + clip.stem,
                    "return": ["lid", "asr", "record_url", "metrics", "vad"],
                },
                on_event=lambda e: print(json.dumps(e.raw, ensure_ascii=False), flush=True),
                ca_file=stack.ca_file,
            )
        )
    finals = " ".join(e["text"].strip() for e in result.of_type("asr_final"))
    if finals:
        print(f"# transcript: {finals}", file=sys.stderr)
    return 0 if result.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="speechgw-stack")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the stack in the foreground")
    run.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8080")))
    demo = sub.add_parser("demo", help="stream a sample clip through the stack and print the events")
    demo.add_argument("clip", nargs="?", type=Path, default=None)
    demo.add_argument("--speed", type=float, default=1.0)
    for cmd in (run, demo):
        cmd.add_argument(
            "--tls",
            action="store_true",
            default=_tls_from_env(),
            help="wss:// and mTLS with a throwaway CA in var/certs (or STACK_TLS=1)",
        )
    run.add_argument(
        "--prometheus",
        action="store_true",
        default=_prometheus_from_env(),
        help="also run Prometheus with the rules of deploy/observability on PROMETHEUS_PORT (or PROMETHEUS=1)",
    )
    args = p.parse_args(argv)
    if args.cmd == "run":
        return cmd_run(args.port, args.tls, args.prometheus)
    return cmd_demo(args.clip or sample_clip(), args.speed, args.tls)


if __name__ == "__main__":
    raise SystemExit(main())
