"""Archive adapter: the session's PCM to `compress.v1.Compress/Archive`, `record_url` back (SPEC §4)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from orchestrator.core.events import RecordReady, StageLatency, StageName
from orchestrator.stages.base import AudioSource, StageContext, frames
from proto import common_pb2, compress_pb2_grpc

TENANT_METADATA = "speechgw-tenant-bin"  # binary metadata: a `sub` may hold any UTF-8


class CompressStage:
    name = StageName.COMPRESS
    source = AudioSource.CLEAN

    def __init__(self, channel: grpc.aio.Channel, batch_ms: int) -> None:
        self._stub = compress_pb2_grpc.CompressStub(channel)
        self.batch_ms = batch_ms

    async def run(self, ctx: StageContext) -> None:
        ended_at = time.monotonic()
        audio = frames(ctx)
        first = await anext(audio)
        if first.last and not first.pcm:
            return  # the session accepted no audio: there is nothing to archive

        async def requests() -> AsyncIterator[common_pb2.AudioFrame]:
            nonlocal ended_at
            frame = first
            while True:
                if frame.last:
                    ended_at = time.monotonic()
                yield frame
                if frame.last:
                    return
                frame = await anext(audio)

        # The owner travels as call metadata: the archive keeps each tenant's objects apart (docs/storage.md).
        metadata = ((TENANT_METADATA, ctx.tenant.encode()),) if ctx.tenant else None
        result = await self._stub.Archive(requests(), metadata=metadata)
        ctx.report(StageLatency(self.name, (time.monotonic() - ended_at) * 1000))
        ctx.report(
            RecordReady(result.record_url, result.duration_s, result.bytes, result.codec, result.status or "stored")
        )
