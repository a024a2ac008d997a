"""common.service.serve_grpc: while serving, a service gives its free heap back on a timer, off the loop,
and publishes the RSS it holds after each give-back."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from prometheus_client import REGISTRY

from common.server import ServerConfig
from common.service import Service, serve_grpc
from tests.poll import until


@contextlib.asynccontextmanager
async def empty_service() -> AsyncIterator[Service]:
    yield Service(lambda server: None)


async def test_a_serving_service_trims_on_its_timer_off_the_loop_and_stops_with_it() -> None:
    calls: list[int] = []
    stop = asyncio.Event()
    serving = asyncio.create_task(
        serve_grpc(
            "trim-test",
            ServerConfig(grace_s=0),
            empty_service(),
            stop,
            trim=lambda: calls.append(threading.get_ident()),
            trim_every_s=0.02,
        )
    )
    await until(lambda: len(calls) >= 3, what="three trims")
    assert threading.get_ident() not in calls
    floor = REGISTRY.get_sample_value("process_resident_memory_after_trim_bytes")
    assert floor is not None and floor > 10 * 2**20  # this interpreter's RSS, read after the give-back
    stop.set()
    await asyncio.wait_for(serving, 10)  # the timer ends with the service
