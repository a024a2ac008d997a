"""The driver carries a resume out (docs/protocol.md#resume): the session moves to the client's new
connection, the reader and the writer follow it; in-memory connections, fake stages, no sockets."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from orchestrator.core.events import StageName
from orchestrator.core.protocol import ResumeRequest
from orchestrator.core.session import Session, SessionConfig
from orchestrator.driver import SessionDriver
from tests.fakes import SECOND, FakeConnection, FakeStage
from tests.poll import seconds, until

pytestmark = pytest.mark.unit
FLUSH = json.dumps({"type": "flush"})


def driver_for(conn: FakeConnection, stage: FakeStage, **cfg: float) -> SessionDriver:
    config = SessionConfig(stages=(stage.name,), flush_idle_s=60.0, **cfg)  # type: ignore[arg-type]
    return SessionDriver(Session(config, time.monotonic(), "gen"), conn, [stage])


async def test_a_dropped_connection_is_resumed_on_a_new_one_and_the_stream_goes_on() -> None:
    old, new, stage = FakeConnection(), FakeConnection(), FakeStage(StageName.COMPRESS)
    driver = driver_for(old, stage)
    old.send_start()
    old.incoming.put_nowait(SECOND)
    run = asyncio.create_task(driver.run())
    await until(lambda: stage.audio_bytes == len(SECOND), 5, "the first second reaches the stage")
    old.drop()
    await until(lambda: driver.session.awaiting_resume, 5, "the session waits for its client")
    assert driver.attach(new, ResumeRequest(last_seq=0, audio_s=1.0)) is None
    released = asyncio.create_task(driver.released(new))
    new.incoming.put_nowait(SECOND)
    new.incoming.put_nowait(FLUSH)
    await asyncio.wait_for(run, seconds(5))
    await asyncio.wait_for(released, seconds(5))
    assert stage.audio_bytes == 2 * len(SECOND)  # one timeline, the second connection's audio after the first's
    ack, *rest = new.sent
    assert ack["resume"]["resume_from_bytes"] == len(SECOND) and ack["resume"]["last_seq"] == 1
    # last_seq 0: the first ack (seq 1) is replayed, since the client says it never got it
    assert [(e["type"], e["seq"]) for e in rest] == [("ack", 1), ("end", 2)]
    assert rest[-1]["audio_s"] == 2.0 and rest[-1]["reason"] == "flush"
    assert new.close_code == 1000 and old.kinds() == ["ack"]


async def test_a_resume_takes_over_a_connection_the_gateway_still_thinks_alive() -> None:
    old, new, stage = FakeConnection(), FakeConnection(), FakeStage(StageName.COMPRESS)
    driver = driver_for(old, stage)
    old.send_start()
    run = asyncio.create_task(driver.run())
    await until(lambda: old.kinds() == ["ack"], 5, "acknowledged")
    assert driver.attach(new, ResumeRequest(last_seq=1, audio_s=0.0)) is None
    assert old.close_code == 1006  # the half-open connection is aborted
    new.incoming.put_nowait(SECOND)
    new.incoming.put_nowait(FLUSH)
    await asyncio.wait_for(run, seconds(5))
    assert [e["type"] for e in new.sent] == ["ack", "end"] and stage.audio_bytes == len(SECOND)


async def test_a_window_that_ends_without_a_resume_flushes_the_session() -> None:
    old, stage = FakeConnection(), FakeStage(StageName.COMPRESS)
    driver = driver_for(old, stage, resume_window_s=5.0)
    old.send_start()
    old.incoming.put_nowait(SECOND)
    run = asyncio.create_task(driver.run())
    await until(lambda: stage.audio_bytes == len(SECOND), 5, "audio in")
    old.drop()
    await until(lambda: driver.session.awaiting_resume, 5, "waiting")
    driver.tick(time.monotonic() + 1.0)
    assert driver.session.awaiting_resume
    driver.tick(time.monotonic() + 5.0)
    await asyncio.wait_for(run, seconds(5))
    assert driver.session.end_reason == "disconnect" and old.kinds() == ["ack"]
    assert driver.attach(FakeConnection(), ResumeRequest(0, 1.0)) is not None


async def test_a_clean_close_is_not_waited_for() -> None:
    conn, stage = FakeConnection(), FakeStage(StageName.COMPRESS)
    driver = driver_for(conn, stage)
    conn.send_start()
    conn.incoming.put_nowait(SECOND)
    conn.incoming.put_nowait(None)  # the client closed with a close frame
    await asyncio.wait_for(driver.run(), seconds(5))
    assert driver.session.end_reason == "disconnect" and not driver.session.awaiting_resume


async def test_a_client_cut_before_its_end_gets_the_end_on_resume() -> None:
    old, new, stage = FakeConnection(), FakeConnection(), FakeStage(StageName.COMPRESS)
    stage.gate.clear()  # the stage holds its answer until the client is gone
    driver = driver_for(old, stage)
    old.send_start()
    old.incoming.put_nowait(SECOND)
    old.incoming.put_nowait(FLUSH)
    run = asyncio.create_task(driver.run())
    await until(lambda: driver.session.audio_ended, 5, "flushed")
    old.drop()
    await until(lambda: driver.session.awaiting_resume, 5, "waiting")
    stage.gate.set()
    await until(lambda: driver.session.close is not None, 5, "the session ended while its client was away")
    assert not run.done()  # its end waits for the client
    assert driver.attach(new, ResumeRequest(last_seq=1, audio_s=1.0)) is None
    await asyncio.wait_for(run, seconds(5))
    assert [e["type"] for e in new.sent] == ["ack", "end"] and new.sent[0]["resume"]["audio_ended"]
    assert new.close_code == 1000


class GoneAtClose(FakeConnection):
    """A client that vanished without the gateway seeing it: the close handshake gets no answer."""

    async def close(self, code: int, reason: str) -> None:
        await super().close(code, reason)
        self.dropped = True


async def test_a_close_handshake_without_answer_keeps_the_end_for_a_resume() -> None:
    old, new, stage = GoneAtClose(), FakeConnection(), FakeStage(StageName.COMPRESS)
    driver = driver_for(old, stage)
    old.send_start()
    old.incoming.put_nowait(SECOND)
    old.incoming.put_nowait(FLUSH)
    run = asyncio.create_task(driver.run())
    await until(lambda: old.close_code is not None, 5, "the gateway closed the connection after the end")
    await until(lambda: driver.session.awaiting_resume, 5, "then waits: the client may not have the end")
    assert not run.done() and old.kinds() == ["ack", "end"]
    assert driver.attach(new, ResumeRequest(last_seq=1, audio_s=1.0)) is None
    await asyncio.wait_for(run, seconds(5))
    assert [(e["type"], e.get("seq")) for e in new.sent] == [("ack", None), ("end", 2)] and new.close_code == 1000
