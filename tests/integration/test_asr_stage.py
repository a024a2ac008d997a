"""The gateway's ASR stage against an in-process fake recogniser: what goes on the wire, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from orchestrator.core.events import LanguageDecided, SpeechBoundary, StageEvent, Transcript
from orchestrator.core.protocol import StartRequest
from orchestrator.core.reframer import AudioBlock
from orchestrator.driver import root_cause
from orchestrator.routing.pool import PoolSet
from orchestrator.routing.table import RoutingTable
from orchestrator.stages.asr import AsrStage, AsrUnavailable
from orchestrator.stages.base import StageContext, StageFeed
from orchestrator.stages.opus_link import OpusLinkConfig
from proto import asr_pb2, asr_pb2_grpc

pytestmark = pytest.mark.integration


class FakeRecognizer(asr_pb2_grpc.RecognizeServicer):
    """Admits every stream, records what it receives, answers one final `text` at the end."""

    def __init__(self, text: str = "fake") -> None:
        self.text = text
        self.streams: list[list[str]] = []  # what each stream received, in order
        self.lang_hints: list[str] = []

    async def Stream(
        self, request_iterator: AsyncIterator[asr_pb2.ClientFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[asr_pb2.AsrEvent]:
        first = True
        received: list[str] = []
        self.streams.append(received)
        async for frame in request_iterator:
            received.append(frame.WhichOneof("payload"))
            if first:
                first = False
                self.lang_hints.append(frame.start.lang_hint)
                yield asr_pb2.AsrEvent(type="ready")
        yield asr_pb2.AsrEvent(type="final", text=self.text, ts=[0.0, 0.5], lang="en")
        yield asr_pb2.AsrEvent(type="end")


async def serve(fake: FakeRecognizer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    asr_pb2_grpc.add_RecognizeServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_endpoints_found_while_the_language_is_pending_reach_the_asr() -> None:
    fake = FakeRecognizer()
    server, addr = await serve(fake)
    pools = PoolSet(RoutingTable.single_pool((addr,)))
    stage = AsrStage(pools, OpusLinkConfig(), 20, None, 250, open_timeout_s=5.0)
    events: list[StageEvent] = []
    feed = StageFeed(640)
    ctx = StageContext("f1", StartRequest("f1", frozenset({"asr"})), feed, events.append)
    try:
        task = asyncio.create_task(stage.run(ctx))
        for seq in range(3):
            feed.put(AudioBlock(seq, seq * 20_000_000, b"\x00\x01" * 320))
        await asyncio.sleep(0)  # the stage is now waiting for the language
        ctx.inputs.put_nowait(SpeechBoundary("start", 0))
        ctx.inputs.put_nowait(SpeechBoundary("end", 40_000_000))
        ctx.inputs.put_nowait(LanguageDecided("en"))
        feed.close()
        await asyncio.wait_for(task, 10)
    finally:
        await pools.close()
        await server.stop(None)
    # the provisional stream, then the language's stream with everything replayed
    assert fake.lang_hints == ["", "en"]
    assert fake.streams[-1] == ["start", "endpoint", "endpoint", "opus", "opus", "opus"]
    assert [e for e in events if isinstance(e, Transcript)] == [Transcript(True, "fake", 0.0, 0.5, "en")]


def two_pools(multi: str, en: str) -> RoutingTable:
    return RoutingTable.from_dict(
        {
            "default_pool": "multi",
            "pools": {"multi": {"addrs": [multi]}, "en": {"addrs": [en]}},
            "routes": [{"lang": "en", "domain": "*", "pool": "en"}],
        }
    )


async def run_session(stage: AsrStage, decide: str, blocks: int = 3) -> list[StageEvent]:
    """Audio arrives while LID listens; then the language `decide` is known; then the audio ends."""
    events: list[StageEvent] = []
    feed = StageFeed(640)
    ctx = StageContext("f1", StartRequest("f1", frozenset({"asr"})), feed, events.append)
    task = asyncio.create_task(stage.run(ctx))
    for seq in range(blocks):
        feed.put(AudioBlock(seq, seq * 20_000_000, b"\x00\x01" * 320))
    await asyncio.sleep(0)
    ctx.inputs.put_nowait(SpeechBoundary("start", 0))
    ctx.inputs.put_nowait(LanguageDecided(decide))
    feed.close()
    await asyncio.wait_for(task, 10)
    return events


def finals(events: list[StageEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, Transcript) and e.final]


async def two_fakes() -> tuple[FakeRecognizer, FakeRecognizer, PoolSet, list[grpc.aio.Server]]:
    multi, en = FakeRecognizer("from multi"), FakeRecognizer("from en")
    (s1, a1), (s2, a2) = await serve(multi), await serve(en)
    return multi, en, PoolSet(two_pools(a1, a2)), [s1, s2]


async def close(pools: PoolSet, servers: list[grpc.aio.Server]) -> None:
    await pools.close()
    for server in servers:
        await server.stop(None)


async def test_language_routes_elsewhere_the_chosen_pool_hears_everything() -> None:
    multi, en, pools, servers = await two_fakes()
    try:
        events = await run_session(AsrStage(pools, OpusLinkConfig(), 20, None, 250, 5.0), "en")
    finally:
        await close(pools, servers)
    assert multi.lang_hints == [""]  # the provisional stream, opened before LID answered
    assert en.lang_hints == ["en"] and en.streams == [["start", "endpoint", "opus", "opus", "opus"]]
    assert finals(events) == ["from en"]  # the provisional stream's final is dropped


async def test_language_on_the_provisional_pool_reopens_with_the_language() -> None:
    multi, en, pools, servers = await two_fakes()
    try:
        events = await run_session(AsrStage(pools, OpusLinkConfig(), 20, None, 250, 5.0), "zh")
    finally:
        await close(pools, servers)
    assert en.streams == [] and multi.lang_hints == ["", "zh"]
    assert multi.streams[-1] == ["start", "endpoint", "opus", "opus", "opus"]
    assert finals(events) == ["from multi"]


async def test_no_language_keeps_the_provisional_stream() -> None:
    multi, en, pools, servers = await two_fakes()
    try:
        events = await run_session(AsrStage(pools, OpusLinkConfig(), 20, None, 250, 5.0), "")
    finally:
        await close(pools, servers)
    assert en.streams == [] and multi.lang_hints == [""]
    assert multi.streams == [["start", "endpoint", "opus", "opus", "opus"]]
    assert finals(events) == ["from multi"]


async def test_chosen_pool_down_the_provisional_one_keeps_the_session() -> None:
    multi = FakeRecognizer("from multi")
    server, addr = await serve(multi)
    pools = PoolSet(two_pools(addr, "127.0.0.1:9"))  # nothing listens on the discard port
    try:
        events = await run_session(AsrStage(pools, OpusLinkConfig(), 20, None, 250, 5.0), "en")
    finally:
        await close(pools, [server])
    assert finals(events) == ["from multi"]


async def test_without_provisional_routing_the_stream_waits_for_the_language() -> None:
    multi, en, pools, servers = await two_fakes()
    try:
        stage = AsrStage(pools, OpusLinkConfig(), 20, None, 250, 5.0, provisional=False)
        events = await run_session(stage, "en")
    finally:
        await close(pools, servers)
    assert multi.streams == [] and en.lang_hints == ["en"] and finals(events) == ["from en"]


async def test_default_pool_down_the_session_waits_for_its_own_pool() -> None:
    en = FakeRecognizer("from en")
    server, addr = await serve(en)
    pools = PoolSet(two_pools("127.0.0.1:9", addr))  # the provisional (default) pool is down
    try:
        events = await run_session(AsrStage(pools, OpusLinkConfig(), 20, None, 250, 5.0), "en")
    finally:
        await close(pools, [server])
    assert en.lang_hints == ["en"] and en.streams == [["start", "endpoint", "opus", "opus", "opus"]]
    assert finals(events) == ["from en"]


class SeqRecorder(FakeRecognizer):
    """Records the seq of every packet each stream receives."""

    def __init__(self) -> None:
        super().__init__()
        self.seqs: list[list[int]] = []

    async def Stream(
        self, request_iterator: AsyncIterator[asr_pb2.ClientFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[asr_pb2.AsrEvent]:
        seqs: list[int] = []
        self.seqs.append(seqs)
        yield asr_pb2.AsrEvent(type="ready")
        async for frame in request_iterator:
            if frame.HasField("opus"):
                seqs.append(frame.opus.seq)
            elif frame.HasField("batch"):
                seqs.extend(p.seq for p in frame.batch.packets)
        yield asr_pb2.AsrEvent(type="end")


@pytest.mark.parametrize("frame_ms", [10, 20, 40, 60])
async def test_packets_land_on_the_session_timeline_at_any_link_frame(frame_ms: int) -> None:
    """Audio that starts 1.5 s into the session, in 100 ms blocks, then a stream reopened on the
    language: every packet n covers [n * frame_ms, (n + 1) * frame_ms) of the session timeline."""
    fake = SeqRecorder()
    server, addr = await serve(fake)
    pools = PoolSet(RoutingTable.single_pool((addr,)))
    stage = AsrStage(pools, OpusLinkConfig(frame_ms=frame_ms), 100, None, 250, open_timeout_s=5.0)
    feed = StageFeed(3200)
    ctx = StageContext("f1", StartRequest("f1", frozenset({"asr"})), feed, lambda e: None)
    start_ms, audio_ms = 1500, 1000
    try:
        task = asyncio.create_task(stage.run(ctx))
        for i in range(audio_ms // 20):
            ms = start_ms + 20 * i
            feed.put(AudioBlock(ms // 20, ms * 1_000_000, b"\x00\x01" * 320))
            if i == 25:
                await asyncio.sleep(0.05)
                ctx.inputs.put_nowait(LanguageDecided("en"))  # opens a second stream mid-session
        feed.close()
        await asyncio.wait_for(task, 10)
    finally:
        await pools.close()
        await server.stop(None)
    expected = list(range(start_ms // frame_ms, -(-(start_ms + audio_ms) // frame_ms)))
    assert len(fake.seqs) == 2 and fake.seqs[-1] == expected


class BusyFirst(FakeRecognizer):
    """Refuses its first `refusals` streams as busy, the way the ASR service does at its limit."""

    def __init__(self, refusals: int) -> None:
        super().__init__("admitted")
        self.refusals = refusals

    async def Stream(
        self, request_iterator: AsyncIterator[asr_pb2.ClientFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[asr_pb2.AsrEvent]:
        if self.refusals > 0:
            self.refusals -= 1
            yield asr_pb2.AsrEvent(type="error", code="busy", text="at its limit")
            return
        async for event in super().Stream(request_iterator, context):
            yield event


@pytest.mark.parametrize(("wait_s", "admitted"), [(5.0, True), (0.0, False)])
async def test_past_capacity_a_session_waits_in_line_then_is_refused(wait_s: float, admitted: bool) -> None:
    fake = BusyFirst(refusals=3)
    server, addr = await serve(fake)
    pools = PoolSet(RoutingTable.single_pool((addr,)))
    stage = AsrStage(pools, OpusLinkConfig(), 20, None, 250, 5.0, False, admission_wait_s=wait_s, admission_poll_s=0.01)
    events: list[StageEvent] = []
    feed = StageFeed(640)
    ctx = StageContext("f1", StartRequest("f1", frozenset({"asr"})), feed, events.append)
    ctx.inputs.put_nowait(LanguageDecided("en"))
    try:
        for seq in range(3):
            feed.put(AudioBlock(seq, seq * 20_000_000, b"\x00\x01" * 320))
        feed.close()
        if admitted:
            await asyncio.wait_for(stage.run(ctx), 10)
        else:
            with pytest.raises(ExceptionGroup) as refused:  # from the stage's task group
                await asyncio.wait_for(stage.run(ctx), 10)
            cause = root_cause(refused.value)
            assert isinstance(cause, AsrUnavailable) and "busy" in str(cause)
        (member,) = pools.members()
        assert member.breaker.state.name == "CLOSED"  # busy is never a failure
    finally:
        await pools.close()
        await server.stop(None)
    if admitted:
        assert finals(events) == ["admitted"] and fake.streams[-1][:1] == ["start"]
        assert fake.streams[-1].count("opus") == 3  # the audio sent while it waited was kept
