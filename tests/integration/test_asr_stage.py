"""The gateway's ASR stage against an in-process fake recogniser: what goes on the wire, in order."""

from __future__ import annotations

import asyncio

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
from tests.fakes import FakeAsrServer, FakeRecognizer
from tests.poll import seconds, until

pytestmark = pytest.mark.integration


def recognizer(text: str = "fake") -> FakeRecognizer:
    return FakeRecognizer(text, final_ts=(0.0, 0.5))


async def test_endpoints_found_while_the_language_is_pending_reach_the_asr() -> None:
    server = await FakeAsrServer(recognizer()).start()
    fake = server.recognizer
    pools = PoolSet(RoutingTable.single_pool((server.addr,)))
    stage = AsrStage(pools, OpusLinkConfig(), 20, None, 250, open_timeout_s=5.0)
    events: list[StageEvent] = []
    feed = StageFeed(640)
    ctx = StageContext("f1", StartRequest("f1", frozenset({"asr"})), feed, events.append)
    try:
        task = asyncio.create_task(stage.run(ctx))
        for seq in range(3):
            feed.put(AudioBlock(seq, seq * 20_000_000, b"\x00\x01" * 320))
        # One turn of the loop, not a poll: the stage waits for the language but has sent no audio
        # yet, so the endpoints reach the ASR ahead of the audio.
        await asyncio.sleep(0)
        ctx.inputs.put_nowait(SpeechBoundary("start", 0))
        ctx.inputs.put_nowait(SpeechBoundary("end", 40_000_000))
        ctx.inputs.put_nowait(LanguageDecided("en"))
        feed.close()
        await asyncio.wait_for(task, seconds(10))
    finally:
        await pools.close()
        await server.stop()
    # the provisional stream, then the language's stream with everything replayed
    assert fake.lang_hints == ["", "en"]
    assert fake.streams[-1] == ["start", "endpoint", "endpoint", "opus", "opus", "opus"]
    assert [e for e in events if isinstance(e, Transcript)] == [Transcript(True, "fake", 0.0, 0.5, "en")]
    assert [e.pool for e in events if isinstance(e, Transcript)] == ["default"]  # for the gateway's metrics


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
    await asyncio.sleep(0)  # one turn: no audio sent yet (see the first test)
    ctx.inputs.put_nowait(SpeechBoundary("start", 0))
    ctx.inputs.put_nowait(LanguageDecided(decide))
    feed.close()
    await asyncio.wait_for(task, seconds(10))
    return events


def finals(events: list[StageEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, Transcript) and e.final]


async def two_fakes() -> tuple[FakeRecognizer, FakeRecognizer, PoolSet, list[FakeAsrServer]]:
    s1, s2 = await FakeAsrServer(recognizer("from multi")).start(), await FakeAsrServer(recognizer("from en")).start()
    return s1.recognizer, s2.recognizer, PoolSet(two_pools(s1.addr, s2.addr)), [s1, s2]


async def close(pools: PoolSet, servers: list[FakeAsrServer]) -> None:
    await pools.close()
    for server in servers:
        await server.stop()


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
    server = await FakeAsrServer(recognizer("from multi")).start()
    pools = PoolSet(two_pools(server.addr, "127.0.0.1:9"))  # nothing listens on the discard port
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


def english_first(pools: PoolSet) -> AsrStage:
    return AsrStage(pools, OpusLinkConfig(), 20, None, 250, 5.0, provisional_lang="en")


async def test_provisional_language_confirmed_keeps_its_stream_without_a_replay() -> None:
    multi, en, pools, servers = await two_fakes()
    try:
        events = await run_session(english_first(pools), "en")
    finally:
        await close(pools, servers)
    assert multi.streams == [] and en.lang_hints == ["en"]
    assert en.streams == [["start", "endpoint", "opus", "opus", "opus"]]  # one stream: nothing replayed
    assert finals(events) == ["from en"]  # its held finals are released, not dropped


async def test_provisional_language_overruled_moves_to_the_chosen_pool() -> None:
    multi, en, pools, servers = await two_fakes()
    try:
        events = await run_session(english_first(pools), "zh")
    finally:
        await close(pools, servers)
    assert en.lang_hints == ["en"] and multi.lang_hints == ["zh"]
    assert multi.streams == [["start", "endpoint", "opus", "opus", "opus"]]
    assert finals(events) == ["from multi"]  # the provisional stream's final is dropped


async def test_no_language_leaves_a_provisional_language_for_the_default_route() -> None:
    multi, en, pools, servers = await two_fakes()
    try:
        events = await run_session(english_first(pools), "")
    finally:
        await close(pools, servers)
    assert en.lang_hints == ["en"] and multi.lang_hints == [""]
    assert finals(events) == ["from multi"]


async def test_default_pool_down_the_session_waits_for_its_own_pool() -> None:
    server = await FakeAsrServer(recognizer("from en")).start()
    en = server.recognizer
    pools = PoolSet(two_pools("127.0.0.1:9", server.addr))  # the provisional (default) pool is down
    try:
        events = await run_session(AsrStage(pools, OpusLinkConfig(), 20, None, 250, 5.0), "en")
    finally:
        await close(pools, [server])
    assert en.lang_hints == ["en"] and en.streams == [["start", "endpoint", "opus", "opus", "opus"]]
    assert finals(events) == ["from en"]


@pytest.mark.parametrize("frame_ms", [10, 20, 40, 60])
async def test_packets_land_on_the_session_timeline_at_any_link_frame(frame_ms: int) -> None:
    """Audio that starts 1.5 s into the session, in 100 ms blocks, then a stream reopened on the
    language: every packet n covers [n * frame_ms, (n + 1) * frame_ms) of the session timeline."""
    server = await FakeAsrServer(recognizer()).start()
    fake = server.recognizer
    pools = PoolSet(RoutingTable.single_pool((server.addr,)))
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
                await until(lambda: fake.packets != [] and fake.packets[0] != [], what="audio on the first stream")
                ctx.inputs.put_nowait(LanguageDecided("en"))  # opens a second stream mid-session
        feed.close()
        await asyncio.wait_for(task, seconds(10))
    finally:
        await pools.close()
        await server.stop()
    expected = list(range(start_ms // frame_ms, -(-(start_ms + audio_ms) // frame_ms)))
    assert len(fake.packets) == 2 and [p.seq for p in fake.packets[-1]] == expected


@pytest.mark.parametrize(("wait_s", "admitted"), [(5.0, True), (0.0, False)])
async def test_past_capacity_a_session_waits_in_line_then_is_refused(wait_s: float, admitted: bool) -> None:
    server = await FakeAsrServer(FakeRecognizer("admitted", final_ts=(0.0, 0.5), refusals=3)).start()
    fake = server.recognizer
    pools = PoolSet(RoutingTable.single_pool((server.addr,)))
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
            await asyncio.wait_for(stage.run(ctx), seconds(10))
        else:
            with pytest.raises(ExceptionGroup) as refused:  # from the stage's task group
                await asyncio.wait_for(stage.run(ctx), seconds(10))
            cause = root_cause(refused.value)
            assert isinstance(cause, AsrUnavailable) and "busy" in str(cause)
        (member,) = pools.members()
        assert member.breaker.state.name == "CLOSED"  # busy is never a failure
    finally:
        await pools.close()
        await server.stop()
    if admitted:
        assert finals(events) == ["admitted"] and fake.streams[-1][:1] == ["start"]
        assert fake.streams[-1].count("opus") == 3  # the audio sent while it waited was kept
