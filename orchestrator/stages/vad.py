"""VAD adapter: PCM batches to `vad.v1.Vad/Stream`, speech boundaries back (SPEC §1, §3)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from orchestrator.core.events import SpeechBoundary, StageLatency, StageName
from orchestrator.stages.base import AudioSource, SendTimes, StageContext, frames
from proto import common_pb2, vad_pb2_grpc

# The call's metadata key for the session's `endpointing` (proto/vad.proto, services/vad/core.py).
MIN_SILENCE_KEY = "vad-min-silence-ms"


class VadStage:
    name = StageName.VAD
    source = AudioSource.RAW

    def __init__(self, channel: grpc.aio.Channel, batch_ms: int) -> None:
        self._stub = vad_pb2_grpc.VadStub(channel)
        self.batch_ms = batch_ms

    async def run(self, ctx: StageContext) -> None:
        sent_at = SendTimes()

        async def requests() -> AsyncIterator[common_pb2.AudioFrame]:
            async for frame in frames(ctx):
                sent_at.mark(frame.seq, time.monotonic())
                yield frame

        ms = ctx.start.endpointing_ms
        metadata = ((MIN_SILENCE_KEY, str(ms)),) if ms is not None else None
        call = self._stub.Stream(requests(), metadata=metadata)
        async for out in call:
            if out.activity in (common_pb2.SPEECH_START, common_pb2.SPEECH_END):
                start = out.activity == common_pb2.SPEECH_START
                ctx.report(SpeechBoundary("start" if start else "end", out.pts))
                sent = sent_at.take(out.seq)
                if sent is not None:
                    ctx.report(StageLatency(self.name, (time.monotonic() - sent) * 1000))
            if out.last:
                break
        call.cancel()
