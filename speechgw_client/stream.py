"""Stream a whole buffer of audio in one call: `stream_pcm` paces it (real time, N x, or as fast as the
gateway takes it), sends `flush`, and returns every event with when it was read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechgw_client.audio import SAMPLE_RATE
from speechgw_client.events import AsrFinal, Event
from speechgw_client.session import Session, SessionClosed, TokenVia, connect

__all__ = ["StreamResult", "send_paced", "stream_pcm"]


@dataclass
class StreamResult:
    """What came back: `events` are the messages as received (decoded JSON), `typed` the same as
    event classes; `received_at[i]` is when `events[i]` was read (`time.monotonic()`)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    typed: list[Event] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    received_at: list[float] = field(default_factory=list)
    first_audio_at: float | None = None
    audio_s_sent: float = 0.0

    def add(self, event: Event) -> None:
        self.typed.append(event)
        self.events.append(event.raw)
        self.received_at.append(event.received_at if event.received_at is not None else time.monotonic())

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    @property
    def finals(self) -> list[AsrFinal]:
        return [e for e in self.typed if isinstance(e, AsrFinal)]

    @property
    def ok(self) -> bool:
        """The stream ended with `end` and no `error` came."""
        return bool(self.events) and self.events[-1].get("type") == "end" and not self.of_type("error")


async def send_paced(
    session: Session,
    pcm: bytes,
    *,
    chunk_ms: int = 20,
    speed: float = 1.0,
    finalize_at_s: Sequence[float] = (),
) -> float:
    """Send `pcm` in `chunk_ms` chunks at `speed` x real time (0: as fast as the gateway takes it), with a
    `finalize` after each audio position in `finalize_at_s`. Returns when the first chunk went out."""
    chunk = SAMPLE_RATE * chunk_ms // 1000 * 2
    finalize_after = sorted(int(s * SAMPLE_RATE) * 2 for s in finalize_at_s)  # byte offsets
    t0 = time.monotonic()
    for i, off in enumerate(range(0, len(pcm), chunk)):
        if speed > 0:
            delay = t0 + i * chunk_ms / 1000.0 / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await session.send(pcm[off : off + chunk])
        while finalize_after and finalize_after[0] <= off + chunk:
            finalize_after.pop(0)
            await session.finalize()
    return t0


async def stream_pcm(
    url: str,
    pcm: bytes,
    *,
    start: Mapping[str, Any] | None = None,
    chunk_ms: int = 20,
    speed: float = 1.0,
    flush: bool = True,
    on_event: Callable[[Event], None] | None = None,
    open_timeout_s: float = 10.0,
    token: str | None = None,
    token_via: TokenVia | str = "header",
    ca_file: str | Path | None = None,
    finalize_at_s: Sequence[float] = (),
) -> StreamResult:
    """Open a session (`start` fields as given), send the audio paced at `speed` (0 = as fast as
    possible), then `flush` unless told not to; collect events until the gateway closes."""
    result = StreamResult()
    async with connect(
        url,
        token=token,
        token_via=token_via,
        chunk_ms=chunk_ms,
        start=start,
        ca_file=ca_file,
        open_timeout_s=open_timeout_s,
    ) as session:

        async def collect() -> None:
            async for event in session.events():
                result.add(event)
                if on_event is not None:
                    on_event(event)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(collect())
            try:
                result.first_audio_at = time.monotonic()
                await send_paced(session, pcm, chunk_ms=chunk_ms, speed=speed, finalize_at_s=finalize_at_s)
                if flush:
                    await session.flush()
            except SessionClosed:
                pass  # the gateway ended the session; its events say why
        result.audio_s_sent = session.progress.audio_s_sent
    result.close_code = session.close_code
    result.close_reason = session.close_reason
    return result
