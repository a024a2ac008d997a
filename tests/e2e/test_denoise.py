"""The denoise stage on the audio path (ENABLE_DENOISE=true): archive and ASR hear the denoised audio
on the same timeline, and a denoise that dies mid-session loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.client import stream_pcm
from devtools.stack import Stack
from speechgw_client import StreamResult, load_audio
from tests.wer import wer

pytestmark = pytest.mark.e2e


@pytest.fixture
def dn_stack(tmp_path: Path) -> Iterator[Stack]:
    env = {
        "LOG_LEVEL": "WARNING",
        "ENABLE_DENOISE": "true",
        "ASR_ENGINE": "whisper",
        "ASR_MODEL": "tiny.en",
    }
    with Stack(("vad", "denoise", "asr", "compress"), env=env, workdir=tmp_path) as stack:
        yield stack


def check(result: StreamResult, pcm: bytes, reference: str) -> None:
    assert result.events[-1]["type"] == "end" and result.close_code == 1000
    (record,) = result.of_type("record_url")
    assert record["duration_s"] == pytest.approx(len(pcm) / 32000, abs=0.02)  # nothing lost or added
    text = " ".join(e["text"] for e in result.of_type("asr_final"))
    assert wer([reference], [text]) <= 0.12, text


def test_denoised_path_keeps_timeline_and_transcribes(dn_stack: Stack, clips: Path) -> None:
    pcm = load_audio(clips / "en" / "quick_brown_fox.wav")
    result = asyncio.run(stream_pcm(dn_stack.url, pcm, speed=0, start={"return": ["asr", "record_url", "metrics"]}))
    assert not result.of_type("error")
    assert "denoise" in result.of_type("metrics")[0]["stages"]
    check(result, pcm, (clips / "en" / "quick_brown_fox.txt").read_text())


def test_denoise_dies_mid_session_raw_audio_takes_over(dn_stack: Stack, clips: Path) -> None:
    pcm = load_audio(clips / "en" / "quick_brown_fox.wav")

    async def go() -> StreamResult:
        acked = asyncio.Event()
        task = asyncio.create_task(
            stream_pcm(
                dn_stack.url,
                pcm,
                speed=1.0,
                start={"return": ["asr", "record_url"]},
                on_event=lambda e: acked.set() if e.type == "ack" else None,
            )
        )
        await asyncio.wait_for(acked.wait(), 20)
        dn_stack.running["denoise"].kill()
        return await task

    result = asyncio.run(go())
    assert [e["code"] for e in result.of_type("error")] == ["denoise_unavailable"]
    check(result, pcm, (clips / "en" / "quick_brown_fox.txt").read_text())
