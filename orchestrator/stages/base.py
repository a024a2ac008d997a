"""What every stage adapter gets: the session's audio as it arrives, and a way to report back."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from common.audio import CHANNELS, NS_PER_SAMPLE, SAMPLE_RATE
from orchestrator.core.events import StageEvent, StageInput, StageName
from orchestrator.core.protocol import StartRequest
from orchestrator.core.reframer import BYTES_PER_SAMPLE, AudioBlock
from proto import common_pb2


class StageFeed:
    """The session's audio for one stage, already cut into the stage's message size.

    Blocks are gathered until `batch_bytes` and only then queued, so a stage's task wakes once per
    message it sends, not once per client chunk (the capacity benchmark shows why). The backlog
    is reported to `on_backlog` whenever it changes; the session decides what a large one means
    (backpressure on the client, then failing the stage: SPEC §4). A `tap` sees every block as it is
    put, before any batching (the archive spool keeps the audio the moment the session accepts it).
    """

    def __init__(self, batch_bytes: int, on_backlog: Callable[[int], None] | None = None) -> None:
        self._queue: asyncio.Queue[AudioBlock | None] = asyncio.Queue()
        self._batch = batch_bytes
        self._on_backlog = on_backlog
        self._buf = bytearray()
        self._seq = 0
        self._pts = 0
        self.backlog_bytes = 0
        self.bytes_total = 0  # every byte put, for the stage's log line
        self.last_seq = -1  # the last frame's seq put (-1: none yet)
        self.closed = False
        self._tap: Callable[[bytes], None] | None = None

    def tap(self, fn: Callable[[bytes], None]) -> None:
        """Hand `fn` each block's PCM as it is put. Call it before reading the feed: the audio put
        before the tap is handed over at once (the stage's task may start after the first blocks)."""
        queued = []
        while not self._queue.empty():
            queued.append(self._queue.get_nowait())
        for item in queued:
            self._queue.put_nowait(item)
            if item is not None:
                fn(item.pcm)
        if self._buf:
            fn(bytes(self._buf))
        self._tap = fn

    def put(self, block: AudioBlock) -> None:
        if self.closed:
            return
        if self._tap is not None:
            self._tap(block.pcm)
        if not self._buf:
            self._seq, self._pts = block.seq, block.pts_ns
        self._buf += block.pcm
        self.backlog_bytes += len(block.pcm)
        self.bytes_total += len(block.pcm)
        self.last_seq = block.seq
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
            if self._on_backlog is not None:
                self._on_backlog(self.backlog_bytes)
            yield block


class AudioSource(StrEnum):
    """Which audio a stage reads (SPEC §1: VAD -> Denoise -> (Compress tap) -> LID -> ASR)."""

    RAW = "raw"  # the client's audio (VAD)
    CLEAN = "clean"  # after denoise (archive, LID, ASR)
    TRANSFORM = "transform"  # produces the clean audio (denoise), through ctx.emit_audio


@dataclass
class StageContext:
    flow_id: str
    start: StartRequest
    feed: StageFeed
    report: Callable[[StageEvent], None]
    # Where a transform stage (denoise) sends the audio it produces.
    emit_audio: Callable[[AudioBlock], None] | None = None
    # What the session tells the running stage (the ASR hears its endpoints and language here).
    inputs: asyncio.Queue[StageInput] = field(default_factory=asyncio.Queue)
    tenant: str = ""  # the owner of the flow (the token's `sub`); the archive keys its objects by it


class Stage(Protocol):
    name: StageName
    batch_ms: int  # audio per message on this stage's link
    source: AudioSource

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


class SendTimes:
    """When each message of a stream was sent, for latency figures; bounded, whatever the service
    answers. Keys increase with time (seq or pts); `take(key)` answers when the message holding
    `key` went out (the last one sent at or before it) and forgets it and everything before."""

    def __init__(self, limit: int = 512) -> None:
        self._sent: OrderedDict[int, float] = OrderedDict()
        self._limit = limit

    def mark(self, key: int, at: float) -> None:
        self._sent[key] = at
        while len(self._sent) > self._limit:
            self._sent.popitem(last=False)

    def take(self, key: int) -> float | None:
        at = None
        while self._sent and next(iter(self._sent)) <= key:
            at = self._sent.popitem(last=False)[1]
        return at

    def __len__(self) -> int:
        return len(self._sent)
