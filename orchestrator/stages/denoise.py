"""Denoise adapter: raw PCM to `denoise.v1.Denoise/Stream`, clean PCM back on the same timeline;
the clean audio feeds the archive, LID and ASR (SPEC §1)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from orchestrator.core.events import StageLatency, StageName
from orchestrator.core.reframer import AudioBlock
from orchestrator.stages.base import AudioSource, SendTimes, StageContext, frames
from proto import common_pb2, denoise_pb2_grpc


class DenoiseStage:
    name = StageName.DENOISE
    source = AudioSource.TRANSFORM

    def __init__(self, channel: grpc.aio.Channel, batch_ms: int) -> None:
        self._stub = denoise_pb2_grpc.DenoiseStub(channel)
        self.batch_ms = batch_ms

    async def run(self, ctx: StageContext) -> None:
        assert ctx.emit_audio is not None
        sent_at = SendTimes()

        async def requests() -> AsyncIterator[common_pb2.AudioFrame]:
            async for frame in frames(ctx):
                sent_at.mark(frame.pts, time.monotonic())
                yield frame

        call = self._stub.Stream(requests())
        async for out in call:
            if out.pcm:
                ctx.emit_audio(AudioBlock(out.seq, out.pts, out.pcm))
                sent = sent_at.take(out.pts)
                if sent is not None:
                    ctx.report(StageLatency(self.name, (time.monotonic() - sent) * 1000))
            if out.last:
                break
        call.cancel()
