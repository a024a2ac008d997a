"""Admission (docs/security.md): between `start` and `ack` the session waits for the gateway's verdict
(token, ownership, limits); nothing is acknowledged and no audio is read or accepted meanwhile."""

from __future__ import annotations

import asyncio
import json

import pytest

from orchestrator.core.events import StageName
from orchestrator.core.protocol import Close, ErrorCode
from orchestrator.core.session import Session, SessionConfig, State
from orchestrator.driver import SessionDriver
from tests.fakes import FakeConnection, FakeStage
from tests.poll import seconds
from tests.schemas import check_event

pytestmark = pytest.mark.unit
CFG = SessionConfig(stages=(StageName.VAD,), admission=True, start_timeout_s=10.0)
START = json.dumps({"type": "start", "flowId": "f1", "return": ["record_url"]})
AUDIO = b"\x01\x00" * 320


def admitting() -> Session:
    s = Session(CFG, 0.0, "gen")
    s.receive_text(START, 0.0)
    return s


def test_a_started_session_waits_for_admission_without_ack_or_audio() -> None:
    s = admitting()
    assert s.state is State.ADMITTING and s.awaiting_admission
    assert s.events_to_send() == [] and not s.accepts_audio and not s.acknowledged
    s.receive_binary(AUDIO, 0.1)  # a driver must not read it; if one does, nothing is accepted
    events = s.events_to_send()
    assert [e["code"] for e in events] == ["audio_before_start"] and s.close == (
        Close.PROTOCOL_ERROR,
        "audio_before_start",
    )
    assert s.audio_to_stages() == [] and s.audio_s == 0


def test_admit_acknowledges_for_the_tenant() -> None:
    s = admitting()
    s.admit("tenant-a", 0.2)
    assert s.tenant == "tenant-a" and s.state is State.STREAMING and s.accepts_audio
    assert [e["type"] for e in s.events_to_send()] == ["ack"]


@pytest.mark.parametrize(
    "code",
    [
        ErrorCode.AUTH_REQUIRED,
        ErrorCode.AUTH_INVALID,
        ErrorCode.AUTH_EXPIRED,
        ErrorCode.AUTH_FORBIDDEN,
        ErrorCode.FLOW_IN_USE,
    ],
)
def test_a_refusal_at_admission_is_an_error_then_1008(code: ErrorCode) -> None:
    s = admitting()
    s.refuse(code, "no")
    events = s.events_to_send()
    for e in events:
        check_event(e)
    assert [(e["type"], e["code"], e["fatal"], e["flowId"]) for e in events] == [("error", code.value, True, "f1")]
    assert s.close == (Close.POLICY_VIOLATION, code.value) and s.state is State.CLOSED
    s.admit("late", 1.0)  # a verdict after the close changes nothing
    assert s.state is State.CLOSED and s.tenant == ""


def test_admission_counts_against_the_start_timeout() -> None:
    s = admitting()
    s.tick(9.9)
    assert s.state is State.ADMITTING
    s.tick(10.0)
    assert [e["code"] for e in s.events_to_send()] == ["start_timeout"]
    assert s.close == (Close.POLICY_VIOLATION, "start_timeout")


def test_without_admission_the_ack_comes_at_once() -> None:
    s = Session(SessionConfig(stages=(StageName.VAD,)), 0.0, "gen")
    s.receive_text(START, 0.0)
    assert s.state is State.STREAMING and s.tenant == ""


async def test_the_driver_reads_no_audio_until_admitted_and_starts_stages_after() -> None:
    conn, stage = FakeConnection(), FakeStage(StageName.VAD)
    verdict: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    asked = asyncio.Event()

    async def admit(session: Session) -> str:
        asked.set()
        return await verdict

    driver = SessionDriver(Session(CFG, 0.0, "gen"), conn, [stage], admit=admit)
    conn.incoming.put_nowait(START)
    conn.incoming.put_nowait(AUDIO)  # a client that sends audio right after `start`
    task = asyncio.create_task(driver.run())
    await asyncio.wait_for(asked.wait(), seconds(5))
    for _ in range(20):
        await asyncio.sleep(0)
    assert conn.taken == 1 and conn.sent == []  # the audio waits in the socket
    verdict.set_result("tenant-a")
    conn.incoming.put_nowait(json.dumps({"type": "flush"}))
    await asyncio.wait_for(task, seconds(5))
    assert conn.kinds()[0] == "ack" and conn.kinds()[-1] == "end"
    assert stage.audio_bytes == len(AUDIO) and driver.session.tenant == "tenant-a"


async def test_the_driver_closes_1008_on_a_refusal_and_reads_nothing_more() -> None:
    conn, stage = FakeConnection(), FakeStage(StageName.VAD)

    async def admit(session: Session) -> tuple[ErrorCode, str]:
        return ErrorCode.AUTH_REQUIRED, "a token is required"

    driver = SessionDriver(Session(CFG, 0.0, "gen"), conn, [stage], admit=admit)
    conn.incoming.put_nowait(START)
    conn.incoming.put_nowait(AUDIO)
    await asyncio.wait_for(driver.run(), seconds(5))
    assert [(e["type"], e.get("code")) for e in conn.sent] == [("error", "auth_required")]
    assert conn.close_code == 1008 and conn.taken == 1 and stage.audio_bytes == 0


async def test_a_failing_admission_is_an_internal_error_not_a_crash() -> None:
    conn = FakeConnection()

    async def admit(session: Session) -> str:
        raise RuntimeError("boom")

    driver = SessionDriver(Session(CFG, 0.0, "gen"), conn, [FakeStage(StageName.VAD)], admit=admit)
    conn.incoming.put_nowait(START)
    await asyncio.wait_for(driver.run(), seconds(5))
    assert [e.get("code") for e in conn.sent] == ["internal_error"] and conn.close_code == 1011
