"""The gateway's background work never dies silently, and one session cannot stop the others' timers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.config import GatewayConfig, ListenConfig
from orchestrator.gateway import Gateway
from orchestrator.supervisor import RESTARTS, Supervisor
from tests.conftest import seconds

pytestmark = pytest.mark.unit


async def until(cond: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds(2)
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_a_failing_loop_is_restarted_and_stop_awaits_it() -> None:
    runs: list[int] = []
    stopped = asyncio.Event()

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError("store locked")
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    before = RESTARTS.labels("flaky")._value.get()
    sup = Supervisor(restart_delay_s=0.001)
    sup.start("flaky", loop)
    await until(lambda: len(runs) == 3, "the third run")
    assert sup.running() == ["flaky"]
    assert RESTARTS.labels("flaky")._value.get() - before == 2
    await sup.stop()
    assert stopped.is_set() and sup.running() == []


class TickingDriver:
    def __init__(self, fail: bool) -> None:
        self.fail, self.ticks = fail, 0
        self.session = type("S", (), {"flow_id": "f-bad" if fail else "f-good"})()

    def tick(self, now: float) -> None:
        self.ticks += 1
        if self.fail:
            raise KeyError("broken session")


async def test_a_failing_tick_does_not_stop_other_sessions_timers() -> None:
    gateway = Gateway(GatewayConfig(listen=ListenConfig(tick_s=0.001)))
    bad, good = TickingDriver(fail=True), TickingDriver(fail=False)
    gateway.drivers.update({bad, good})  # type: ignore[arg-type]
    sweeper = asyncio.create_task(gateway._sweep())
    try:
        await until(lambda: good.ticks >= 5 and bad.ticks >= 5, "five rounds of ticks")
        assert not sweeper.done()
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
