"""SessionDriver with fake stages over an in-memory connection: no sockets, no processes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.core.events import LangDetected, LanguageDecided, SpeechBoundary, StageName, Transcript
from orchestrator.core.session import Session, SessionConfig
from orchestrator.driver import SessionDriver
from orchestrator.stages.base import AudioSource, StageContext
from tests.fakes import SECOND, FakeConnection, FakeStage
from tests.poll import seconds

pytestmark = pytest.mark.unit


class FakeLid(FakeStage):
    def __init__(self) -> None:
        super().__init__(StageName.LID)

    async def answer(self, ctx: StageContext) -> None:
        if self.audio_bytes == len(SECOND):  # answers after one second, once
            ctx.report(LangDetected("zh", 0.97))


class FakeAsr(FakeStage):
    """Hears its inputs like the real ASR stage; says a final with the language it was given."""

    def __init__(self) -> None:
        super().__init__(StageName.ASR)
        self.inputs: list[object] = []

    async def run(self, ctx: StageContext) -> None:
        await super().run(ctx)
        lang = None
        while lang is None:  # like the real stage: the final comes from the routed stream
            item = await ctx.inputs.get()
            self.inputs.append(item)
            lang = item.lang if isinstance(item, LanguageDecided) else None
        while not ctx.inputs.empty():
            self.inputs.append(ctx.inputs.get_nowait())
        ctx.report(Transcript(True, f"text in {lang}", 0.0, self.audio_bytes / 32000, lang))


class BrokenAsr(FakeStage):
    """Its producer task fails inside the stage's own task group."""

    def __init__(self) -> None:
        super().__init__(StageName.ASR)

    async def run(self, ctx: StageContext) -> None:
        async def producer() -> None:
            raise ValueError("opus frame of 7 bytes")

        async with asyncio.TaskGroup() as tg:
            tg.create_task(producer())
            await asyncio.Event().wait()  # the reader: waits for results that never come


def route(lang: str, domain: str) -> str:
    return {"zh": "asr.multi"}.get(lang, "asr.default")


async def drive(conn: FakeConnection, stages: list[FakeStage], **cfg: Any) -> SessionDriver:
    config = SessionConfig(stages=tuple(s.name for s in stages), **cfg)
    driver = SessionDriver(Session(config, 0.0, "gen", route), conn, stages)
    task = asyncio.create_task(driver.run())
    await asyncio.wait_for(task, seconds(5))
    return driver


async def test_lid_answer_routes_the_asr_and_boundaries_reach_it() -> None:
    conn, lid, asr = FakeConnection(), FakeLid(), FakeAsr()
    vad = FakeStage(StageName.VAD, AudioSource.RAW)

    async def boundary(ctx: StageContext) -> None:
        if vad.audio_bytes == len(SECOND):  # found in the first second: speech starts at 100 ms
            ctx.report(SpeechBoundary("start", 100_000_000))

    vad.answer = boundary  # type: ignore[method-assign]
    conn.send_start()
    for _ in range(2):
        conn.incoming.put_nowait(SECOND)
    conn.incoming.put_nowait('{"type":"flush"}')
    await drive(conn, [vad, lid, asr])
    lid_event = next(e for e in conn.sent if e["type"] == "lid")
    assert (lid_event["lang"], lid_event["pool"]) == ("zh", "asr.multi")
    assert SpeechBoundary("start", 100_000_000) in asr.inputs
    assert LanguageDecided("zh", "asr.multi") in asr.inputs
    final = next(e for e in conn.sent if e["type"] == "asr_final")
    assert final["text"] == "text in zh" and final["ts"] == [0.0, 2.0]
    assert conn.kinds()[-1] == "end" and conn.close_code == 1000


async def test_an_error_inside_a_stage_task_group_reaches_the_client_as_itself() -> None:
    conn = FakeConnection()
    conn.send_start(pref="en")
    conn.incoming.put_nowait(SECOND)
    conn.incoming.put_nowait('{"type":"flush"}')
    await drive(conn, [BrokenAsr()])
    error = next(e for e in conn.sent if e["type"] == "error")
    assert error["code"] == "asr_unavailable"
    assert error["message"] == "asr: ValueError: opus frame of 7 bytes"
    assert conn.kinds()[-1] == "end"


async def test_a_stage_behind_stops_the_reading_until_it_catches_up() -> None:
    conn, slow = FakeConnection(), FakeStage(StageName.COMPRESS)
    slow.gate.clear()  # the stage takes one block and then stalls
    conn.send_start(pref="en")
    for _ in range(6):
        conn.incoming.put_nowait(SECOND)
    conn.incoming.put_nowait('{"type":"flush"}')
    task = asyncio.create_task(drive(conn, [slow], stage_backlog_s=2.0, stage_timeout_s=60.0, flush_idle_s=60.0))
    for _ in range(50):  # give the driver every chance to read on if it would
        await asyncio.sleep(0.01)
    # start + 4 s of audio: the stage holds 1 s, 3 s wait in its feed (over the 2 s limit), and
    # the rest waits on the socket
    assert conn.taken == 5 and slow.audio_bytes == 0
    slow.gate.set()
    await asyncio.wait_for(task, seconds(5))
    assert conn.taken == 8 and slow.audio_bytes == 6 * len(SECOND)  # everything came through
    assert "error" not in conn.kinds() and conn.kinds()[-1] == "end"
