"""A live session for the chaos tests to break: streamed in real time in the background until it has
reached a given point (its first event of a kind, so much of its audio accepted by the gateway), then
the fault is injected while it goes on."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Mapping
from typing import Any

from devtools.client import StreamResult, stream_pcm
from tests.poll import seconds, until

BYTES_PER_S = 32000  # PCM16 at 16 kHz: what the client sends


async def stream_until(
    url: str, pcm: bytes, start: Mapping[str, Any], event_type: str, timeout_s: float = 10.0
) -> asyncio.Task[StreamResult]:
    """Stream `pcm` at real-time pace in a task; return the task once the session sent its first
    `event_type` event (within `timeout_s` time units; a session that ends before it fails here)."""
    seen = asyncio.Event()
    task = asyncio.create_task(
        stream_pcm(url, pcm, speed=1.0, start=start, on_event=lambda e: seen.set() if e.type == event_type else None)
    )
    waiter = asyncio.create_task(seen.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=seconds(timeout_s), return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        if task in done:
            raise AssertionError(f"the session ended before its first {event_type}: {task.result().events[-3:]}")
        task.cancel()
        raise AssertionError(f"no {event_type} within {seconds(timeout_s):g} s")
    return task


def ingress_bytes(http_base: str) -> float:
    """The gateway's `ingress_bytes_total`: the audio bytes it has received from clients."""
    with urllib.request.urlopen(f"{http_base}/metrics", timeout=seconds(5)) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("ingress_bytes_total "):
                return float(line.split()[-1])
    raise AssertionError("no ingress_bytes_total on the gateway's /metrics")


async def until_accepted(http_base: str, baseline: float, audio_s: float, timeout_s: float = 10.0) -> None:
    """Wait until the gateway has received `audio_s` of audio since its `ingress_bytes` was `baseline`
    (each look off the event loop: the streaming client goes on meanwhile)."""

    async def reached() -> bool:
        return await asyncio.to_thread(ingress_bytes, http_base) - baseline >= audio_s * BYTES_PER_S

    await until(reached, timeout_s, f"{audio_s:g} s of audio received by the gateway")
