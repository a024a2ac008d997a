"""LID adapter: the session's clean audio to `lid.v1.Lid/Detect` until the service answers; the
answer settles the session's language and so its ASR pool (SPEC §4, core/language.py).

The service decides when it knows: it listens to speech only and answers after LID_FIRST_N_SECONDS
of speech (earlier when sure), or `und` at the end of the audio if it heard none. So the stream has
no deadline of its own: a long silent lead-in is not a failure. The session's stage timeout still
bounds the wait after the end of audio.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from orchestrator.core.events import LangDetected, StageLatency, StageName
from orchestrator.stages.base import AudioSource, StageContext, frames
from proto import common_pb2, lid_pb2_grpc


class LidStage:
    name = StageName.LID
    source = AudioSource.CLEAN

    def __init__(self, channel: grpc.aio.Channel, batch_ms: int) -> None:
        self._stub = lid_pb2_grpc.LidStub(channel)
        self.batch_ms = batch_ms

    async def run(self, ctx: StageContext) -> None:
        last_sent: float | None = None

        async def requests() -> AsyncIterator[common_pb2.AudioFrame]:
            nonlocal last_sent
            async for frame in frames(ctx):
                last_sent = time.monotonic()
                yield frame

        # The service may answer before the audio ends; the request iterator then ends when the
        # session closes this stage's feed (StageDone), so its writer task finishes too.
        result = await self._stub.Detect(requests())
        if last_sent is not None:
            # From the audio that made it answer to the answer.
            ctx.report(StageLatency(self.name, (time.monotonic() - last_sent) * 1000))
        ctx.report(LangDetected(result.lang, result.score))
