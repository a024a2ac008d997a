"""Runs one service process: a gRPC aio server with grpc.health.v1, and an HTTP side port with
`/healthz` and `/metrics` (SPEC §3). Shutdown is an API (STYLE §6): NOT_SERVING, stop accepting,
drain with grace, exit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.envconf import env_float, env_int, env_str

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
    """Where a service listens. Port 0 picks a free port; the bound ports are announced on stdout."""

    host: str = "127.0.0.1"
    grpc_port: int = 0
    http_port: int = 0
    grace_s: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefix: str) -> ServerConfig:
        return cls(
            host=env_str(env, f"{prefix}_HOST", cls.host),
            grpc_port=env_int(env, f"{prefix}_GRPC_PORT", cls.grpc_port),
            http_port=env_int(env, f"{prefix}_HTTP_PORT", cls.http_port),
            grace_s=env_float(env, f"{prefix}_GRACE_S", cls.grace_s),
        )


AddServicers = Callable[[grpc.aio.Server], None]


class ServiceRunner:
    """Owns the servers of one service process. `ready()` flips health to SERVING."""

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        add_servicers: AddServicers,
        http_routes: list[web.RouteDef] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.health = health.aio.HealthServicer()
        self.grpc_server = grpc.aio.server(options=GRPC_OPTIONS)
        add_servicers(self.grpc_server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        self.grpc_port = self.grpc_server.add_insecure_port(f"{config.host}:{config.grpc_port}")
        self.app = web.Application()
        self.app.add_routes([web.get("/healthz", self._healthz), web.get("/metrics", self._metrics)])
        if http_routes:
            self.app.add_routes(http_routes)
        self._runner = web.AppRunner(self.app, access_log=None)
        self.http_port = 0
        self.serving = False

    async def start(self) -> None:
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc_server.start()
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.http_port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        assert sockets, "HTTP site did not bind"
        self.http_port = sockets[0].getsockname()[1]

    async def ready(self) -> None:
        self.serving = True
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        announce(self.name, self.config.host, self.grpc_port, self.http_port)

    async def stop(self) -> None:
        self.serving = False
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(self.config.grace_s)
        await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.serving:
            return web.json_response({"status": "ok", "service": self.name})
        return web.json_response({"status": "starting", "service": self.name}, status=503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def announce(name: str, host: str, grpc_port: int, http_port: int) -> None:
    """One JSON line on stdout that launchers read to learn the bound ports."""
    line = {"event": "listening", "service": name, "host": host, "grpc_port": grpc_port, "http_port": http_port}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def run_until_signalled(runner: ServiceRunner, warmup: Callable[[], Awaitable[None]] | None = None) -> None:
    """Start, warm up, report SERVING, then wait for SIGTERM/SIGINT and stop with grace."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await runner.start()
    if warmup is not None:
        await warmup()
    await runner.ready()
    log.info("serving", extra={"stage": runner.name, "event": "serving"})
    await stop.wait()
    log.info("draining", extra={"stage": runner.name, "event": "draining"})
    await runner.stop()


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
