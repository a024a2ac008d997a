"""The gateway's ASR stage against an in-process fake recogniser: what goes on the wire, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from orchestrator.opus_link import OpusLinkConfig
from orchestrator.pool import PoolSet
from orchestrator.protocol import StartRequest
from orchestrator.reframer import AudioBlock
from orchestrator.routing import RoutingTable
from orchestrator.stage_events import SpeechBoundary, StageEvent, Transcript
from orchestrator.stages.asr import AsrStage
from orchestrator.stages.base import StageContext, StageFeed
from proto import asr_pb2, asr_pb2_grpc

pytestmark = pytest.mark.integration


class FakeRecognizer(asr_pb2_grpc.RecognizeServicer):
    """Admits every stream, records what it receives, answers one final at the end."""

    def __init__(self) -> None:
        self.received: list[str] = []

    async def Stream(
        self, request_iterator: AsyncIterator[asr_pb2.ClientFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[asr_pb2.AsrEvent]:
        first = True
        async for frame in request_iterator:
            self.received.append(frame.WhichOneof("payload"))
            if first:
                first = False
                yield asr_pb2.AsrEvent(type="ready")
        yield asr_pb2.AsrEvent(type="final", text="fake", ts=[0.0, 0.5], lang="en")
        yield asr_pb2.AsrEvent(type="end")


async def test_endpoints_found_while_the_language_is_pending_reach_the_asr() -> None:
    fake = FakeRecognizer()
    server = grpc.aio.server()
    asr_pb2_grpc.add_RecognizeServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pools = PoolSet(RoutingTable.single_pool((f"127.0.0.1:{port}",)))
    stage = AsrStage(pools, OpusLinkConfig(), 20, None, 250, open_timeout_s=5.0)
    events: list[StageEvent] = []
    language: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    feed = StageFeed(640, 10**9)
    ctx = StageContext("f1", StartRequest("f1", frozenset({"asr"})), feed, events.append, language=language)
    try:
        task = asyncio.create_task(stage.run(ctx))
        for seq in range(3):
            feed.put(AudioBlock(seq, seq * 20_000_000, b"\x00\x01" * 320))
        await asyncio.sleep(0)  # the stage is now waiting for the language
        assert ctx.on_boundary is not None
        ctx.on_boundary(SpeechBoundary("start", 0))
        ctx.on_boundary(SpeechBoundary("end", 40_000_000))
        language.set_result("en")
        feed.close()
        await asyncio.wait_for(task, 10)
    finally:
        await pools.close()
        await server.stop(None)
    assert fake.received == ["start", "endpoint", "endpoint", "opus", "opus", "opus"]
    assert [e for e in events if isinstance(e, Transcript)] == [Transcript(True, "fake", 0.0, 0.5, "en")]
