"""A busy or dead ASR never costs the user their audio (SPEC §4): the session goes on as
record-only, still gets `record_url` and `end`, and a deferred job transcribes the recording when
capacity returns, even across a gateway restart."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.client import stream_pcm
from devtools.launcher import RunningService, launch
from devtools.stack import Stack
from speechgw_client import load_audio
from tests.poll import seconds, wait_for
from tests.records import get_transcript
from tests.wer import wer

pytestmark = pytest.mark.chaos


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    env = {
        "JOBS_BACKOFF_BASE_SEC": "0.5",
        "JOBS_CAPACITY_POLL_SEC": "0.2",
        "LOG_LEVEL": "WARNING",
        "ASR_ENGINE": "whisper",
        "ASR_MODEL": "tiny.en",
        "STAGE_TIMEOUT_SEC": "10",
    }
    with Stack(("vad", "asr", "compress"), env=env, workdir=tmp_path) as running:
        yield running


def restart_asr(stack: Stack) -> RunningService:
    """A new ASR process on the port of the old one: the pool member comes back."""
    port = stack.running["asr"].grpc_port
    env = {**stack.env, "ASR_GRPC_PORT": str(port)}
    stack.running["asr"] = launch("asr", [sys.executable, "-m", "services.asr"], env=env)
    return stack.running["asr"]


def assert_record_only(events: list[dict[str, Any]], flow_id: str) -> None:
    errors = [e for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["asr_unavailable"], errors
    assert errors[0]["fatal"] is False and errors[0]["mode"] == "record_only"
    assert errors[0]["transcript_path"] == f"/v1/flows/{flow_id}/transcript"
    assert any(e["type"] == "record_url" for e in events)
    assert events[-1]["type"] == "end"


def test_asr_killed_mid_session_then_transcribed_later(stack: Stack, clips: Path) -> None:
    pcm = load_audio(clips / "en" / "quick_brown_fox.wav")

    async def go() -> Any:
        partial = asyncio.Event()
        task = asyncio.create_task(
            stream_pcm(
                stack.url,
                pcm,
                speed=1.0,
                start={"flowId": "killed-mid", "return": ["asr", "record_url"]},
                on_event=lambda e: partial.set() if e.type == "asr_partial" else None,
            )
        )
        await asyncio.wait_for(partial.wait(), seconds(20))  # the ASR is serving this session
        stack.running["asr"].kill()
        return await task

    result = asyncio.run(go())
    assert_record_only(result.events, "killed-mid")
    assert result.close_code == 1000
    status, body = get_transcript(stack.http_base, "killed-mid")
    assert status == 200 and body["status"] in ("pending", "running")
    restart_asr(stack)
    wait_for(lambda: get_transcript(stack.http_base, "killed-mid")[1]["status"] == "done", 60, "deferred transcript")
    body = get_transcript(stack.http_base, "killed-mid")[1]
    text = " ".join(f["text"] for f in body["finals"])
    assert wer([(clips / "en" / "quick_brown_fox.txt").read_text()], [text]) <= 0.12, text
    assert "-->" in body["srt"]


def test_pending_job_survives_a_gateway_restart(stack: Stack, clips: Path) -> None:
    stack.running["asr"].kill()
    pcm = load_audio(clips / "en" / "hello_world.wav")
    result = asyncio.run(stream_pcm(stack.url, pcm, speed=0, start={"flowId": "restart-me"}))
    assert_record_only(result.events, "restart-me")
    assert get_transcript(stack.http_base, "restart-me")[1]["status"] in ("pending", "running")
    # Stop the gateway with the job pending, bring the ASR back, start a new gateway on the same store.
    stack.running.pop("gateway").stop()
    restart_asr(stack)
    gw = launch("gateway", [sys.executable, "-m", "orchestrator"], env={**stack.gateway_env(), "GATEWAY_PORT": "0"})
    stack.running["gateway"] = gw
    wait_for(lambda: get_transcript(gw.http_base, "restart-me")[1]["status"] == "done", 60, "job after restart")
    body = get_transcript(gw.http_base, "restart-me")[1]
    assert wer([(clips / "en" / "hello_world.txt").read_text()], [" ".join(f["text"] for f in body["finals"])]) <= 0.5


def test_unknown_and_malformed_flows(stack: Stack) -> None:
    assert get_transcript(stack.http_base, "never-seen")[0] == 404
    assert get_transcript(stack.http_base, "bad%20id")[0] == 400
