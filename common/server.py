"""Runs one service process: a gRPC aio server with grpc.health.v1, and an HTTP side port with
`/healthz` and `/metrics` (SPEC §3). Shutdown is an API (STYLE §6): NOT_SERVING, stop accepting,
drain with grace, exit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.envconf import ConfigError, setting
from common.tls import TlsConfig, grpc_server_credentials, server_http_context
from common.tracing import server_interceptors

log = logging.getLogger(__name__)

# Large enough for a second of PCM per message plus headroom.
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass(frozen=True)
class ServerConfig:
    """Where a service listens. Port 0 picks a free port; the bound ports are announced on stdout.
    Variable names are relative: a service nests this with its prefix (`VAD_HOST`, `ASR_GRPC_PORT`)."""

    host: str = setting("127.0.0.1", env="HOST")
    grpc_port: int = setting(0, env="GRPC_PORT")
    http_port: int = setting(0, env="HTTP_PORT")
    grace_s: float = setting(5.0, env="GRACE_S")

    def __post_init__(self) -> None:
        for name in ("grpc_port", "http_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name}={getattr(self, name)} must be a port number (0 = free port)")
        if self.grace_s < 0:
            raise ConfigError(f"grace_s={self.grace_s} must be >= 0")


AddServicers = Callable[[grpc.aio.Server], None]


class ServiceRunner:
    """Owns the servers of one service process. `ready()` flips health to SERVING. With `tls` enabled,
    gRPC is mTLS and the HTTP port HTTPS, both with certificates reloaded from disk (common/tls.py)."""

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        add_servicers: AddServicers,
        http_routes: list[web.RouteDef] | None = None,
        tls: TlsConfig | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.tls = tls or TlsConfig()
        self.tls.check_plaintext(f"{name} listens", [config.host])
        self.health = health.aio.HealthServicer()
        self.grpc_server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=server_interceptors())
        add_servicers(self.grpc_server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        addr = f"{config.host}:{config.grpc_port}"
        if self.tls.enabled:
            self.grpc_port = self.grpc_server.add_secure_port(addr, grpc_server_credentials(self.tls))
        else:
            self.grpc_port = self.grpc_server.add_insecure_port(addr)
        self._http_tls = server_http_context(self.tls)
        self._tls_watch: asyncio.Task[None] | None = None
        self.app = web.Application()
        self.app.add_routes([web.get("/healthz", self._healthz), web.get("/metrics", self._metrics)])
        if http_routes:
            self.app.add_routes(http_routes)
        self._runner = web.AppRunner(self.app, access_log=None)
        self.http_port = 0
        self.serving = False
        self.draining = False

    async def start(self) -> None:
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc_server.start()
        await self._runner.setup()
        ssl_context = self._http_tls.context if self._http_tls is not None else None
        site = web.TCPSite(self._runner, self.config.host, self.config.http_port, ssl_context=ssl_context)
        await site.start()
        if self._http_tls is not None:
            self._tls_watch = asyncio.create_task(self._http_tls.watch(self.tls.reload_s), name="tls-reload")
        sockets = getattr(site._server, "sockets", None)
        assert sockets, "HTTP site did not bind"
        self.http_port = sockets[0].getsockname()[1]

    async def ready(self) -> None:
        self.serving = True
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        announce(self.name, self.config.host, self.grpc_port, self.http_port, tls=self.tls.enabled)

    async def stop(self) -> None:
        """The drain (STYLE §6): NOT_SERVING (the gateway's health watch sees it), no new calls, the open
        streams finish within `grace_s` (`<PREFIX>_GRACE_S`), then whatever is left is cancelled."""
        self.serving = False
        self.draining = True
        if self._tls_watch is not None:
            self._tls_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tls_watch
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(self.config.grace_s)
        await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.serving:
            return web.json_response({"status": "ok", "service": self.name})
        status = "draining" if self.draining else "starting"
        return web.json_response({"status": status, "service": self.name}, status=503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def announce(name: str, host: str, grpc_port: int, http_port: int, tls: bool = False) -> None:
    """One JSON line on stdout that launchers read to learn the bound ports (and whether they speak TLS)."""
    line = {
        "event": "listening",
        "service": name,
        "host": host,
        "grpc_port": grpc_port,
        "http_port": http_port,
        "tls": tls,
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def run_main(coro_factory: Callable[[], Awaitable[None]]) -> None:
    """asyncio.run with uvloop when it is installed. `coro_factory` is called inside the running
    loop, so objects it builds (grpc.aio servers, channels) bind to that loop."""

    async def _main() -> None:
        await coro_factory()

    try:
        import uvloop
    except ImportError:
        asyncio.run(_main())
    else:
        uvloop.run(_main())
