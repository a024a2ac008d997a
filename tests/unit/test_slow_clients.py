"""Clients that stop reading, and the gateway's shutdown, as the session core and the driver decide
them (issue: slow and stuck clients, graceful drain). No sockets: the socket side is in
tests/integration/test_slow_clients.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from orchestrator.core.events import RecordReady, StageDone, StageName
from orchestrator.core.protocol import Close, ErrorCode
from orchestrator.core.session import Session, SessionConfig, State
from orchestrator.driver import SessionDriver
from orchestrator.stages.base import AudioSource, StageContext
from tests.fakes import SECOND, FakeConnection, FakeStage
from tests.poll import seconds, until
from tests.schemas import check_event

pytestmark = pytest.mark.unit
CFG = SessionConfig(stages=(StageName.VAD, StageName.COMPRESS), flush_idle_s=3.0, send_timeout_s=10.0)
FRAME = b"\x00\x01" * 320


def started(cfg: SessionConfig = CFG) -> Session:
    s = Session(cfg, 0.0, "gen")
    s.receive_text(json.dumps({"type": "start", "flowId": "f1", "return": ["record_url", "metrics"]}), 0.0)
    s.events_to_send()
    return s


def finish_stages(s: Session, now: float) -> None:
    s.stage_event(RecordReady("http://h/records/f1.ogg", s.audio_s, 100, "ogg/opus", "stored"), now)
    s.stage_event(StageDone(StageName.VAD), now)
    s.stage_event(StageDone(StageName.COMPRESS), now)


def test_zero_length_frames_are_no_activity() -> None:
    s = started()
    s.receive_binary(FRAME, 0.5)
    for t in (1.0, 2.0, 3.0, 3.4):
        s.receive_binary(b"", t)
    s.tick(3.4)
    assert s.state is State.STREAMING
    s.tick(3.5)
    assert s.state is State.DRAINING and s.end_reason == "idle"  # 3 s after the last real audio
    assert s.audio_s == pytest.approx(0.02)
    assert [e["type"] for e in s.events_to_send()] == []  # accepted silently: no error


def test_keepalive_still_holds_the_idle_flush() -> None:
    s = started()
    s.receive_text('{"type":"keepalive"}', 2.5)
    s.tick(3.4)
    assert s.state is State.STREAMING


def test_a_stalled_client_is_not_idle_until_the_send_timeout() -> None:
    s = started()
    s.receive_binary(FRAME * 50, 0.5)
    s.output_stalled(1.0, 1.0)
    s.tick(9.0)  # 8.5 s without audio: not idle, the gateway itself stopped reading
    assert s.state is State.STREAMING
    s.output_stalled(1.0, 10.9)
    assert not s.output_abandoned
    s.output_stalled(1.0, 11.0)
    assert s.output_abandoned and s.fatal_code is ErrorCode.SEND_TIMEOUT
    assert s.state is State.DRAINING and s.audio_ended  # the audio so far drains through the stages
    assert [b.pcm for b in s.audio_to_stages()] == [FRAME * 50]
    error = next(e for e in s.events_to_send() if e["type"] == "error")
    check_event(error)
    assert error["code"] == "send_timeout" and error["fatal"] is True
    finish_stages(s, 12.0)
    assert s.close == (Close.POLICY_VIOLATION, "send_timeout")
    assert [e["type"] for e in s.events_to_send()] == ["record_url", "metrics", "end"]


def test_a_stall_that_ends_restarts_the_idle_timer() -> None:
    s = started()
    s.output_stalled(1.0, 1.0)
    s.output_stalled(None, 8.0)
    s.tick(10.9)
    assert s.state is State.STREAMING and not s.output_abandoned
    s.tick(11.0)
    assert s.end_reason == "idle"


def test_a_stall_after_the_end_of_audio_is_counted_without_new_events() -> None:
    s = started()
    s.receive_text('{"type":"flush"}', 1.0)
    s.events_to_send()
    s.output_stalled(1.0, 11.0)
    assert s.output_abandoned and s.fatal_code is ErrorCode.SEND_TIMEOUT
    assert s.events_to_send() == []
    finish_stages(s, 12.0)
    assert s.close == (Close.POLICY_VIOLATION, "send_timeout")


def test_shutdown_ends_the_audio_with_reason_shutdown() -> None:
    s = started()
    s.receive_binary(FRAME * 10, 0.5)
    s.shutdown(1.0)
    assert s.state is State.DRAINING and s.end_reason == "shutdown"
    s.receive_binary(FRAME, 1.1)  # the client goes on sending: ignored, no error
    finish_stages(s, 2.0)
    events = s.events_to_send()
    assert [e["type"] for e in events] == ["record_url", "metrics", "end"]
    for e in events:
        check_event(e)
    assert events[-1]["reason"] == "shutdown" and events[-1]["audio_s"] == 0.2
    assert s.close == (Close.GOING_AWAY, "shutdown") and s.fatal_code is None


def test_shutdown_refuses_a_session_not_started_yet() -> None:
    s = Session(CFG, 0.0, "gen")
    s.shutdown(1.0)
    assert s.close == (Close.TRY_AGAIN_LATER, "server_draining")


def test_shutdown_leaves_a_draining_session_alone() -> None:
    s = started()
    s.receive_text('{"type":"flush"}', 1.0)
    s.shutdown(1.5)
    finish_stages(s, 2.0)
    assert s.events_to_send()[-1]["reason"] == "flush" and s.close == (Close.NORMAL, "flush")


class ArchiveStage(FakeStage):
    """Answers a record_url with the duration it took, once its audio has ended."""

    def __init__(self) -> None:
        super().__init__(StageName.COMPRESS)

    async def run(self, ctx: StageContext) -> None:
        await super().run(ctx)
        ctx.report(RecordReady("http://h/r.ogg", self.audio_bytes / 32000, self.audio_bytes, "ogg/opus", "stored"))


async def test_the_driver_cuts_a_stalled_client_after_its_audio_is_archived() -> None:
    conn, archive = FakeConnection(), ArchiveStage()
    vad = FakeStage(StageName.VAD, AudioSource.RAW)
    cfg = SessionConfig(stages=(StageName.VAD, StageName.COMPRESS), send_timeout_s=2.0)
    driver = SessionDriver(Session(cfg, 0.0, "gen"), conn, [vad, archive])
    task = asyncio.create_task(driver.run())
    conn.send_start()
    for _ in range(3):
        conn.incoming.put_nowait(SECOND)
    await until(lambda: conn.taken == 4, 5, "the audio read")
    sent_before = len(conn.sent)
    conn.stalled_at = 100.0
    driver.tick(101.0)
    assert not conn.aborted
    driver.tick(102.0)
    assert conn.aborted  # cut at once: no closing handshake with a client that reads nothing
    await asyncio.wait_for(task, seconds(5))
    assert archive.audio_bytes == 3 * len(SECOND)  # every accepted second reached the archive
    assert len(conn.sent) == sent_before  # nothing more went to the socket
    assert driver.session.fatal_code is ErrorCode.SEND_TIMEOUT


async def test_the_driver_shutdown_flushes_a_live_session() -> None:
    conn, archive = FakeConnection(), ArchiveStage()
    cfg = SessionConfig(stages=(StageName.COMPRESS,), flush_idle_s=60.0)
    driver = SessionDriver(Session(cfg, 0.0, "gen"), conn, [archive])
    task = asyncio.create_task(driver.run())
    conn.incoming.put_nowait(json.dumps({"type": "start", "flowId": "f1", "return": ["record_url"]}))
    conn.incoming.put_nowait(SECOND)
    await until(lambda: conn.taken == 2, 5, "the audio read")
    driver.shutdown(1.0)
    await asyncio.wait_for(task, seconds(5))
    assert conn.kinds()[-2:] == ["record_url", "end"]
    assert conn.sent[-1]["reason"] == "shutdown" and conn.sent[-2]["duration_s"] == 1.0
    assert conn.close_code == 1001


def test_giving_up_the_stages_at_shutdown_still_ends_the_session() -> None:
    s = started()
    s.receive_binary(FRAME * 10, 0.5)
    s.shutdown(1.0)
    s.stage_event(StageDone(StageName.COMPRESS), 1.5)  # the archive answered; the VAD is far behind
    s.events_to_send()
    s.give_up_stages("the gateway is shutting down", 20.0)
    events = s.events_to_send()
    assert [e["type"] for e in events] == ["error", "metrics", "end"]
    assert events[0]["code"] == "vad_unavailable" and events[0]["fatal"] is False
    assert events[-1]["reason"] == "shutdown" and s.close == (Close.GOING_AWAY, "shutdown")
    assert s.stages_to_stop() == [StageName.VAD]
