"""Real transcripts through the whole stack: the Opus link, its PCM fallback, partials and finals."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from devtools.client import stream_pcm
from devtools.stack import Stack
from speechgw_client import StreamResult, load_audio
from tests.e2e.conftest import extra_gateway
from tests.poll import seconds
from tests.schemas import check_event
from tests.wer import wer

pytestmark = pytest.mark.e2e
EN_CLIPS = ("counting", "hello_world", "quick_brown_fox")


@pytest.fixture(scope="module")
def asr_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    records = tmp_path_factory.mktemp("records")
    env = {
        "LOG_LEVEL": "WARNING",
        "ASR_ENGINE": "whisper",
        "ASR_MODEL": "tiny.en",
        "ASR_MAX_SESSIONS": "4",
        "ASR_QUEUE": "0",
    }
    with Stack(("vad", "asr", "compress"), env=env, workdir=records) as stack:
        yield stack


def transcribe(url: str, pcm: bytes, speed: float = 0.0) -> StreamResult:
    return asyncio.run(stream_pcm(url, pcm, speed=speed, start={"return": ["asr", "record_url", "metrics"]}))


def corpus_wer(url: str, clips: Path) -> float:
    refs, hyps = [], []
    for name in EN_CLIPS:
        result = transcribe(url, load_audio(clips / "en" / f"{name}.wav"))
        assert result.ok, result.events
        refs.append((clips / "en" / f"{name}.txt").read_text())
        hyps.append(" ".join(e["text"] for e in result.of_type("asr_final")))
    return wer(refs, hyps)


def test_real_time_clip_transcript_partials_and_finals(asr_stack: Stack, clips: Path) -> None:
    pcm = load_audio(clips / "en" / "quick_brown_fox.wav")
    result = transcribe(asr_stack.url, pcm, speed=1.0)
    for event in result.events:
        check_event(event)
    assert result.ok and result.close_code == 1000
    finals = result.of_type("asr_final")
    text = " ".join(f["text"] for f in finals)
    assert wer([(clips / "en" / "quick_brown_fox.txt").read_text()], [text]) <= 0.12, text
    duration = len(pcm) / 32000
    for f in finals:
        assert 0.0 <= f["ts"][0] <= f["ts"][1] <= duration + 0.02 and f["lang"] == "en"
    assert [f["ts"] for f in finals] == sorted(f["ts"] for f in finals)
    kinds = [e["type"] for e in result.events]
    assert kinds.index("asr_final") < kinds.index("end")
    partial_times = [t for e, t in zip(result.events, result.received_at, strict=True) if e["type"] == "asr_partial"]
    assert partial_times, "a 3 s clip in real time gets at least one partial"
    # The server never sends two partials closer than 250 ms; allow 50 ms of network jitter.
    assert all(b - a >= 0.2 for a, b in pairwise(partial_times))


def test_opus_link_costs_at_most_two_wer_points(asr_stack: Stack, clips: Path) -> None:
    opus = corpus_wer(asr_stack.url, clips)
    with extra_gateway(asr_stack, ASR_LINK_CODEC="pcm") as pcm_url:
        pcm = corpus_wer(pcm_url, clips)
    assert opus <= 0.1 and pcm <= 0.1, (opus, pcm)
    assert opus - pcm <= 0.02, (opus, pcm)


def test_encoder_failure_falls_back_to_pcm_and_still_transcribes(asr_stack: Stack, clips: Path) -> None:
    pcm = load_audio(clips / "en" / "quick_brown_fox.wav")
    with extra_gateway(asr_stack, OPUS_FAULT_AFTER_FRAMES="40") as url:
        result = transcribe(url, pcm)
        metrics_url = url.replace("ws://", "http://").replace("/ws/stream", "/metrics")
        with urllib.request.urlopen(metrics_url, timeout=seconds(5)) as resp:
            text = resp.read().decode()
    assert result.ok, result.events
    words = " ".join(e["text"] for e in result.of_type("asr_final"))
    assert wer([(clips / "en" / "quick_brown_fox.txt").read_text()], [words]) <= 0.12, words
    assert re.search(r"^pcm_to_opus_fail_total 1\.0$", text, re.M)
    assert re.search(r'^asr_link_bytes_total\{codec="pcm"\} [1-9]', text, re.M)
    assert re.search(r'^asr_link_bytes_total\{codec="opus"\} [1-9]', text, re.M)


def test_busy_asr_degrades_to_record_only(asr_stack: Stack, clips: Path) -> None:
    """ASR_MAX_SESSIONS=4 and no queue on this ASR: the fifth concurrent session is refused at once."""
    pcm = load_audio(clips / "en" / "counting.wav")

    async def many() -> list[StreamResult]:
        return list(
            await asyncio.gather(
                *[stream_pcm(asr_stack.url, pcm, speed=1.0, start={"return": ["asr", "record_url"]}) for _ in range(6)]
            )
        )

    results = asyncio.run(many())
    refused = [r for r in results if any(e.get("code") == "asr_unavailable" for e in r.of_type("error"))]
    assert refused, "some sessions must be refused by the busy ASR"
    for r in results:
        assert r.events[-1]["type"] == "end" and r.of_type("record_url")  # the audio is never lost
    assert any(r.of_type("asr_final") for r in results if r not in refused)


def test_cli_prints_events_writes_srt_vtt_and_json_and_fails_on_error(
    asr_stack: Stack, clips: Path, tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    wav = clips / "en" / "hello_world.wav"
    cli = [sys.executable, "-m", "devtools.client", "--url", asr_stack.url, "--speed", "0"]
    outputs = [f"--{kind}={tmp_path / f'out.{kind}'}" for kind in ("srt", "vtt", "json")]
    ok = subprocess.run(
        [*cli, "--hotwords", "Kubernetes", *outputs, str(wav)],
        capture_output=True,
        text=True,
        timeout=seconds(60),
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    lines = [json.loads(line) for line in ok.stdout.splitlines()]
    assert lines[0]["type"] == "ack" and lines[-1]["type"] == "end"
    assert json.loads((tmp_path / "out.json").read_text()) == lines
    srt = (tmp_path / "out.srt").read_text()
    assert srt.startswith("1\n00:00:00,") and "-->" in srt and "hello" in srt.lower()
    vtt = (tmp_path / "out.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n1\n00:00:00.") and "hello" in vtt.lower()
    assert lines[0]["hotwords_applied"] is True  # the stack's pools run Whisper
    finals = [e for e in lines if e["type"] == "asr_final"]
    for final in finals:  # word timings from the ASR, on the session timeline, within the final
        assert " ".join(w["word"] for w in final["words"]) == final["text"]
        assert all(final["ts"][0] - 0.001 <= w["start"] <= w["end"] <= final["ts"][1] + 0.001 for w in final["words"])
        assert 0 < final["confidence"] <= 1
    assert finals
    bad = subprocess.run(
        [*cli, "--flow-id", "no/slashes", str(wav)], capture_output=True, text=True, timeout=seconds(60), check=False
    )
    assert bad.returncode == 1 and '"invalid_flow_id"' in bad.stdout
