"""LID adapter: the first LID_FIRST_N_SECONDS of clean audio to `lid.v1.Lid/Detect`; the answer
picks the ASR pool (SPEC §4). The service may answer early, before all of it is sent."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from orchestrator.core.events import LangDetected, StageLatency
from orchestrator.stages.base import StageContext, frames
from proto import common_pb2, lid_pb2_grpc


class LidStage:
    name = "lid"
    source = "clean"

    def __init__(self, channel: grpc.aio.Channel, batch_ms: int, first_n_s: float, timeout_s: float) -> None:
        self._stub = lid_pb2_grpc.LidStub(channel)
        self.batch_ms = batch_ms
        self._first_ns = int(first_n_s * 1e9)
        self._timeout_s = timeout_s

    async def run(self, ctx: StageContext) -> None:
        first_sent: float | None = None

        async def requests() -> AsyncIterator[common_pb2.AudioFrame]:
            nonlocal first_sent
            async for frame in frames(ctx):
                first_sent = first_sent or time.monotonic()
                last = frame.last or frame.pts + frame.ns >= self._first_ns
                frame.last = last
                yield frame
                if last:
                    return

        result = await self._stub.Detect(requests(), timeout=self._timeout_s)
        if first_sent is not None:
            ctx.report(StageLatency(self.name, (time.monotonic() - first_sent) * 1000))
        ctx.report(LangDetected(result.lang, result.score))
