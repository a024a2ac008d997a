"""A dead downstream service costs the session that stage only: a non-fatal error with a stable
code, and everything else (archive, end) still arrives. Other sessions are not disturbed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.client import stream_pcm
from devtools.stack import Stack
from speechgw_client import Event, load_audio
from tests.poll import seconds

pytestmark = pytest.mark.chaos


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[Stack]:
    env = {
        "LOG_LEVEL": "WARNING",
        "STAGE_TIMEOUT_SEC": "5",
    }
    with Stack(("vad", "compress"), env=env, workdir=tmp_path) as stack:
        yield stack


def test_vad_down_session_still_archives_and_ends(fresh_stack: Stack, clips: Path) -> None:
    fresh_stack.running["vad"].kill()
    pcm = load_audio(clips / "en" / "hello_world.wav")
    result = asyncio.run(stream_pcm(fresh_stack.url, pcm, speed=0, start={"return": ["record_url", "metrics", "vad"]}))
    errors = result.of_type("error")
    assert [e["code"] for e in errors] == ["vad_unavailable"] and errors[0]["fatal"] is False
    assert result.of_type("record_url") and not result.of_type("vad")
    assert result.events[-1]["type"] == "end" and result.close_code == 1000


def test_archive_down_session_still_gets_vad_and_end(fresh_stack: Stack, clips: Path) -> None:
    fresh_stack.running["compress"].kill()
    pcm = load_audio(clips / "en" / "hello_world.wav")
    result = asyncio.run(stream_pcm(fresh_stack.url, pcm, speed=0, start={"return": ["record_url", "metrics", "vad"]}))
    assert [e["code"] for e in result.of_type("error")] == ["archive_unavailable"]
    assert result.of_type("vad") and not result.of_type("record_url")
    assert result.events[-1]["type"] == "end" and result.close_code == 1000


def test_vad_dies_mid_session_other_sessions_unharmed(fresh_stack: Stack, clips: Path) -> None:
    pcm = load_audio(clips / "en" / "counting.wav")

    async def go() -> list:
        acked = 0
        all_acked = asyncio.Event()

        def on_event(event: Event) -> None:
            nonlocal acked
            acked += event.type == "ack"
            if acked == 3:
                all_acked.set()

        sessions = [
            asyncio.create_task(
                stream_pcm(
                    fresh_stack.url, pcm, speed=2.0, on_event=on_event, start={"return": ["record_url", "metrics"]}
                )
            )
            for _ in range(3)
        ]
        await asyncio.wait_for(all_acked.wait(), seconds(10))  # every session is streaming: pull the plug
        fresh_stack.running["vad"].kill()
        return [await s for s in sessions]

    for result in asyncio.run(go()):
        assert result.events[0]["type"] == "ack" and result.events[-1]["type"] == "end"
        assert [e["code"] for e in result.of_type("error")] == ["vad_unavailable"]
        (record,) = result.of_type("record_url")
        assert record["duration_s"] == pytest.approx(len(pcm) / 32000, abs=0.02)
