"""What every stage adapter gets: the session's audio as it arrives, and a way to report back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from common.audio import NS_PER_SAMPLE
from orchestrator.core.events import SpeechBoundary, StageEvent
from orchestrator.core.protocol import CHANNELS, SAMPLE_RATE, StartRequest
from orchestrator.core.reframer import BYTES_PER_SAMPLE, AudioBlock
from proto import common_pb2


class StageFeed:
    """The session's audio for one stage, already cut into the stage's message size.

    Blocks are gathered until `batch_bytes` and only then queued, so a stage's task wakes once per
    message it sends, not once per client chunk (the capacity benchmark shows why). The backlog
    is bounded in audio seconds (STAGE_BACKLOG_SEC): a stage that falls that far behind is failed
    rather than let memory grow (SPEC §4 backpressure).
    """

    def __init__(self, batch_bytes: int, max_backlog_bytes: int) -> None:
        self._queue: asyncio.Queue[AudioBlock | None] = asyncio.Queue()
        self._batch = batch_bytes
        self._max = max_backlog_bytes
        self._buf = bytearray()
        self._seq = 0
        self._pts = 0
        self.backlog_bytes = 0
        self.closed = False
        self.overflowed = False

    def put(self, block: AudioBlock) -> None:
        if self.closed:
            return
        if not self._buf:
            self._seq, self._pts = block.seq, block.pts_ns
        self._buf += block.pcm
        self.backlog_bytes += len(block.pcm)
        if self.backlog_bytes > self._max:
            self.overflowed = True
        if len(self._buf) >= self._batch:
            self._push()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._buf:
                self._push()
            self._queue.put_nowait(None)

    def _push(self) -> None:
        self._queue.put_nowait(AudioBlock(self._seq, self._pts, bytes(self._buf)))
        self._buf.clear()

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
    # Where a transform stage (denoise) sends the audio it produces.
    emit_audio: Callable[[AudioBlock], None] | None = None
    # The session's language once known (hint, LID answer, or "" for the default route).
    language: asyncio.Future[str] | None = None
    # Set by a stage that wants the VAD's speech boundaries (the ASR link's endpoints).
    on_boundary: Callable[[SpeechBoundary], None] | None = None


class Stage(Protocol):
    name: str
    batch_ms: int  # audio per message on this stage's link
    # "raw": the client's audio (VAD); "clean": after denoise (archive, LID, ASR);
    # "transform": produces the clean audio (denoise), through ctx.emit_audio.
    source: str

    async def run(self, ctx: StageContext) -> None:
        """Consume ctx.feed until it ends, report results; return when the stage has answered
        everything (the driver then reports StageDone). Raise to fail the stage."""


async def frames(ctx: StageContext) -> AsyncIterator[common_pb2.AudioFrame]:
    """The feed's blocks as AudioFrames; the last one carries `last` (empty if no audio came)."""
    held: AudioBlock | None = None
    async for block in ctx.feed.blocks():
        if held is not None:
            yield make_frame(ctx.flow_id, held.seq, held.pts_ns, held.pcm, last=False)
        held = block
    if held is None:
        yield make_frame(ctx.flow_id, 0, 0, b"", last=True)
    else:
        yield make_frame(ctx.flow_id, held.seq, held.pts_ns, held.pcm, last=True)


def make_frame(flow_id: str, seq: int, pts: int, pcm: bytes, last: bool) -> common_pb2.AudioFrame:
    return common_pb2.AudioFrame(
        flow_id=flow_id,
        seq=seq,
        sr=SAMPLE_RATE,
        channels=CHANNELS,
        ns=len(pcm) // BYTES_PER_SAMPLE * NS_PER_SAMPLE,
        pts=pts,
        pcm=pcm,
        last=last,
    )
