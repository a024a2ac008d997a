"""The one entry point of every process, services and gateway alike (SPEC §3, STYLE §6).

`main(name, Config, body)` loads the frozen config from the environment, sets up logging once, runs
`body(config, stop)` on the event loop and sets `stop` on SIGTERM/SIGINT. Exit codes:

- 0: stopped by a signal and drained;
- 2: bad configuration, one log line naming the variable (no traceback);
- 3: the process cannot start with a valid configuration (model missing or unusable, store refused);
- 1: anything else, with its traceback (a bug).

`grpc_main` adds what a gRPC service shares: a `ServiceRunner` (gRPC + grpc.health.v1 + `/healthz` +
`/metrics`), warm-up before SERVING, free heap given back to the kernel every minute while serving
(common/process.py), and the drain: NOT_SERVING, stop accepting, drain, stop with grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import NoReturn, Protocol, TypeVar

from aiohttp import web
from prometheus_client import Gauge

from common import process
from common.envconf import ConfigError, load_env, setting
from common.logs import setup_logging
from common.models import ModelMissing
from common.server import AddServicers, ServerConfig, ServiceRunner, run_main
from common.tls import TlsConfig
from common.tracing import TracingConfig, setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)

RSS_AFTER_TRIM = Gauge(
    "process_resident_memory_after_trim_bytes",
    "Resident memory right after the last give-back of free heap (every minute): the process's floor, "
    "which grows with a leak or a fragmented heap, while process_resident_memory_bytes swings with the work in flight",
)

EXIT_OK = 0
EXIT_BUG = 1
EXIT_CONFIG = 2
EXIT_CANNOT_START = 3
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

C = TypeVar("C")


class StartupError(RuntimeError):
    """A valid configuration the process still cannot start with (exit 3): a missing or broken model,
    an engine that does not load. `err_code` goes into the log line."""

    def __init__(self, message: str, err_code: str = "cannot_start") -> None:
        super().__init__(message)
        self.err_code = err_code


@dataclass(frozen=True)
class LogConfig:
    """Read by every process before its own config, so that a bad variable is logged as JSON."""

    level: str = setting("INFO", env="LOG_LEVEL", parse=lambda raw: raw.strip().upper())

    def __post_init__(self) -> None:
        if self.level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL={self.level!r}: expected one of {', '.join(LOG_LEVELS)}")


Body = Callable[[C, asyncio.Event], Awaitable[None]]


def main(name: str, config_cls: type[C], body: Body[C], env: Mapping[str, str] | None = None) -> NoReturn:
    """Run a process to its end and exit with its code (see the module docstring)."""
    raise SystemExit(run(name, config_cls, body, env))


def run(name: str, config_cls: type[C], body: Body[C], env: Mapping[str, str] | None = None) -> int:
    """`main` without the exit: returns the exit code."""
    env = os.environ if env is None else env
    extra = {"stage": name, "err_code": "config_invalid"}
    try:
        log_config = load_env(LogConfig, env)
    except ConfigError as exc:
        setup_logging("INFO")
        log.error("bad configuration: %s", exc, extra=extra)
        return EXIT_CONFIG
    setup_logging(log_config.level)
    try:
        tracing = load_env(TracingConfig, env)
        config = load_env(config_cls, env)
    except ConfigError as exc:
        log.error("bad configuration: %s", exc, extra=extra)
        return EXIT_CONFIG
    setup_tracing(name, tracing)  # before any channel or server is built: they take its interceptors
    try:
        run_main(lambda: _until_signalled(config, body))
    except ConfigError as exc:  # found while starting, e.g. a routing file or a language list the model refuses
        log.error("bad configuration: %s", exc, extra=extra)
        return EXIT_CONFIG
    except StartupError as exc:
        log.error("cannot start: %s", exc, extra={"stage": name, "err_code": exc.err_code})
        return EXIT_CANNOT_START
    except ModelMissing as exc:
        log.error("cannot start: %s", exc, extra={"stage": name, "err_code": "model_missing"})
        return EXIT_CANNOT_START
    finally:
        shutdown_tracing()  # the spans still queued go out before the process exits
    return EXIT_OK


async def _until_signalled(config: C, body: Body[C]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await body(config, stop)


async def _every(period_s: float, fn: Callable[[], object], stop: asyncio.Event) -> None:
    """Run `fn` in the default executor every `period_s` until `stop` is set."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            await asyncio.wait_for(stop.wait(), period_s)
            return
        except TimeoutError:
            await loop.run_in_executor(None, fn)


def give_back(trim: Callable[[], object] = process.trim) -> None:
    """Give the free heap back to the kernel, then publish what the process still holds. Blocks."""
    trim()
    RSS_AFTER_TRIM.set(process.rss_bytes())


@dataclass
class Service:
    """What one gRPC service puts on the runner."""

    add_servicers: AddServicers
    # Real inference before SERVING, off the loop (STYLE §7); it sees the bound ports.
    warmup: Callable[[ServiceRunner], Awaitable[None]] | None = None
    http_routes: list[web.RouteDef] | None = None


class ServiceConfig(Protocol):
    """A service's root config: its own settings, where it listens, and its TLS identity."""

    @property
    def server(self) -> ServerConfig: ...

    @property
    def tls(self) -> TlsConfig: ...


S = TypeVar("S", bound=ServiceConfig)
# Builds a service from its config; leaving the context frees what it built (executors, engines).
ServiceFactory = Callable[[S], AbstractAsyncContextManager[Service]]


def grpc_main(name: str, config_cls: type[S], factory: ServiceFactory[S]) -> NoReturn:
    """The `__main__` of a gRPC service."""

    async def body(config: S, stop: asyncio.Event) -> None:
        await serve_grpc(name, config.server, factory(config), stop, config.tls)

    main(name, config_cls, body)


async def serve_grpc(
    name: str,
    server: ServerConfig,
    service_cm: AbstractAsyncContextManager[Service],
    stop: asyncio.Event,
    tls: TlsConfig | None = None,
    trim: Callable[[], object] = process.trim,
    trim_every_s: float = process.TRIM_EVERY_S,
) -> None:
    """Start, warm up, report SERVING, call `trim` off the loop every `trim_every_s` until `stop`
    (publishing the RSS after it: `process_resident_memory_after_trim_bytes`), then drain with grace."""
    async with service_cm as service:
        runner = ServiceRunner(name, server, service.add_servicers, service.http_routes, tls)
        await runner.start()
        try:
            if service.warmup is not None:
                await service.warmup(runner)
            await runner.ready()
            log.info("serving", extra={"stage": name, "event": "serving"})
            await _every(trim_every_s, lambda: give_back(trim), stop)
            log.info("draining", extra={"stage": name, "event": "draining"})
        finally:
            await runner.stop()
