"""LID adapter: the session's clean audio to `lid.v1.Lid/Detect` until the service answers; the
answer settles the session's language and so its ASR pool (SPEC §4, core/language.py).

The service decides when it knows: it listens to speech only and answers after LID_FIRST_N_SECONDS
of speech (earlier when sure), or `und` at the end of the audio if it heard none. So the stream has
no deadline of its own: a long silent lead-in is not a failure. The session's stage timeout still
bounds the wait after the end of audio.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from orchestrator.core.events import LangDetected, StageLatency, StageName
from orchestrator.stages.base import AudioSource, StageContext, frames
from proto import lid_pb2_grpc


class LidStage:
    name = StageName.LID
    source = AudioSource.CLEAN

    def __init__(self, channel: grpc.aio.Channel, batch_ms: int) -> None:
        self._stub = lid_pb2_grpc.LidStub(channel)
        self.batch_ms = batch_ms

    async def run(self, ctx: StageContext) -> None:
        call = self._stub.Detect()
        last_sent: float | None = None

        async def send() -> None:
            nonlocal last_sent
            try:
                async for frame in frames(ctx):
                    last_sent = time.monotonic()
                    await call.write(frame)
                await call.done_writing()
            except asyncio.InvalidStateError:
                return  # the service answered before the audio ended: it stopped listening

        # The writer is ours, in the stage's task group: once the answer is in, it is cancelled and
        # awaited, so no request task outlives the call.
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(send())
            result = await call
            writer.cancel()
        if last_sent is not None:
            # From the audio that made it answer to the answer.
            ctx.report(StageLatency(self.name, (time.monotonic() - last_sent) * 1000))
        ctx.report(LangDetected(result.lang, result.score))
