"""The gateway's background work under one owner (STYLE §6): the session sweeper, health watches,
the deferred-job runner. A loop that raises is logged loudly, counted and restarted after a pause;
none dies silently, and `stop()` cancels and awaits every one of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from orchestrator.metrics import REGISTRY

log = logging.getLogger(__name__)

RESTARTS = Counter(
    "orchestrator_background_restarts_total",
    "Background loops of the gateway restarted after an error or an unexpected return",
    ["loop"],
    registry=REGISTRY,
)


class Supervisor:
    def __init__(self, restart_delay_s: float = 1.0) -> None:
        self._restart_delay_s = restart_delay_s
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run `loop()` until `stop()`; `loop` is meant to run forever."""
        if name in self._tasks:
            raise ValueError(f"background loop {name!r} already runs")
        RESTARTS.labels(name)  # the series exists at 0 from the start
        self._tasks[name] = asyncio.create_task(self._keep(name, loop), name=name)

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def running(self) -> list[str]:
        return sorted(name for name, task in self._tasks.items() if not task.done())

    async def _keep(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await loop()
                log.error("background loop returned; restarting", extra={"stage": "gateway", "event": name})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "background loop failed; restarting",
                    extra={"stage": "gateway", "event": name, "err_code": "background_failed"},
                )
            RESTARTS.labels(name).inc()
            await asyncio.sleep(self._restart_delay_s)
