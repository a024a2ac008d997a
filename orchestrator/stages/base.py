"""What every stage adapter gets: the session's audio as it arrives, and a way to report back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from orchestrator.protocol import CHANNELS, SAMPLE_RATE, StartRequest
from orchestrator.reframer import BYTES_PER_SAMPLE, AudioBlock
from orchestrator.stage_events import StageEvent
from proto import common_pb2

NS_PER_SAMPLE = 1_000_000_000 // SAMPLE_RATE


class StageFeed:
    """The session's audio for one stage: an unbounded queue with a watched backlog.

    The backlog is bounded in audio seconds (STAGE_BACKLOG_SEC): a stage that falls that far
    behind is failed rather than let memory grow (SPEC §4 backpressure).
    """

    def __init__(self, max_backlog_bytes: int) -> None:
        self._queue: asyncio.Queue[AudioBlock | None] = asyncio.Queue()
        self._max = max_backlog_bytes
        self.backlog_bytes = 0
        self.closed = False
        self.overflowed = False

    def put(self, block: AudioBlock) -> None:
        if self.closed:
            return
        self.backlog_bytes += len(block.pcm)
        if self.backlog_bytes > self._max:
            self.overflowed = True
        self._queue.put_nowait(block)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)

    async def blocks(self) -> AsyncIterator[AudioBlock]:
        while True:
            block = await self._queue.get()
            if block is None:
                return
            self.backlog_bytes -= len(block.pcm)
            yield block


@dataclass
class StageContext:
    flow_id: str
    start: StartRequest
    feed: StageFeed
    report: Callable[[StageEvent], None]


class Stage(Protocol):
    name: str

    async def run(self, ctx: StageContext) -> None:
        """Consume ctx.feed until it ends, report results; return when the stage has answered
        everything (the driver then reports StageDone). Raise to fail the stage."""


async def batched_frames(ctx: StageContext, batch_ms: int) -> AsyncIterator[common_pb2.AudioFrame]:
    """Group the session's blocks into AudioFrames of about `batch_ms`; the last one has `last`."""
    target = SAMPLE_RATE * batch_ms // 1000 * BYTES_PER_SAMPLE
    buf = bytearray()
    seq = 0
    pts = 0
    async for block in ctx.feed.blocks():
        if not buf:
            seq, pts = block.seq, block.pts_ns
        buf += block.pcm
        if len(buf) >= target:
            yield make_frame(ctx.flow_id, seq, pts, bytes(buf), last=False)
            buf.clear()
    yield make_frame(ctx.flow_id, seq, pts, bytes(buf), last=True)


def make_frame(flow_id: str, seq: int, pts: int, pcm: bytes, last: bool) -> common_pb2.AudioFrame:
    return common_pb2.AudioFrame(
        flow_id=flow_id, seq=seq, sr=SAMPLE_RATE, channels=CHANNELS,
        ns=len(pcm) // BYTES_PER_SAMPLE * NS_PER_SAMPLE, pts=pts, pcm=pcm, last=last,
    )
