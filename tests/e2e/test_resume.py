"""Resume by flowId through the whole stack (docs/protocol.md#resume): `speechgw-client` (a file) and
`speechgw-mic` (a live source: the file played at real time) stream speech through a TCP relay
(tests/faultproxy.py) that the test cuts mid-sentence (an RST both ways, no close frame); the client
reconnects by itself and the user sees one session: one transcript, one archive, every event once and
in `seq` order."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from devtools.stack import Stack
from speechgw_client import load_audio
from tests.archive_check import FRAME_S
from tests.e2e.conftest import records_of, resumes
from tests.faultproxy import FaultProxy
from tests.poll import seconds, until
from tests.records import decoded_s
from tests.wer import wer

pytestmark = pytest.mark.e2e
CLIPS = ("counting", "quick_brown_fox", "hello_world")
GAP = np.zeros(int(0.7 * 16000), dtype="<i2").tobytes()
CUT_AT_S = 4.4  # inside "the quick brown fox" (it starts at 3.7 s)


@pytest.fixture(scope="module")
def resume_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"LOG_LEVEL": "WARNING", "ASR_ENGINE": "whisper", "ASR_MODEL": "tiny.en", "ASR_MAX_SESSIONS": "4"}
    with Stack(("vad", "asr", "compress"), env=env, workdir=tmp_path_factory.mktemp("records")) as stack:
        yield stack


def talk(clips: Path, tmp_path: Path) -> tuple[bytes, str, Path]:
    """Three sentences with pauses: (their PCM, the reference text, a WAV file of them)."""
    pcm = GAP.join(load_audio(clips / "en" / f"{name}.wav") for name in CLIPS)
    reference = " ".join((clips / "en" / f"{name}.txt").read_text().strip() for name in CLIPS)
    wav = tmp_path / "talk.wav"
    sf.write(wav, np.frombuffer(pcm, dtype="<i2"), 16000, subtype="PCM_16")
    return pcm, reference, wav


def proxy_to(stack: Stack) -> FaultProxy:
    return FaultProxy("127.0.0.1", int(stack.url.rsplit(":", 1)[1].split("/")[0]))


def assert_one_session(events: list[dict[str, Any]], reference: str) -> None:
    """Every event once, in order, numbered without a gap (the replay filled what the cut lost), one
    `ack`, one `end` after a flush, and one transcript, continuous across the cut."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "ack" and kinds[-1] == "end" and kinds.count("ack") == 1 and kinds.count("end") == 1
    assert events[-1]["reason"] == "flush" and "error" not in kinds
    assert len({e["flowId"] for e in events}) == 1
    finals = [e for e in events if e["type"] == "asr_final"]
    assert [f["ts"] for f in finals] == sorted(f["ts"] for f in finals)
    text = " ".join(f["text"] for f in finals)
    assert wer([reference], [text]) <= 0.15, text


async def cut_then_finish(proxy: FaultProxy, proc: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    """Cut the client's TCP connection (an RST both ways) once the audio up to CUT_AT_S went through,
    then wait for the client to finish on its own: its stdout and stderr."""
    try:
        await until(lambda: proxy.upstream_bytes >= CUT_AT_S * 32000, 30, "the audio up to the cut relayed")
        proxy.reset()
        return await asyncio.wait_for(proc.communicate(), seconds(90))
    finally:
        if proc.returncode is None:
            proc.kill()
        await proxy.close()


async def test_the_cli_resumes_across_a_cut_tcp_connection(resume_stack: Stack, clips: Path, tmp_path: Path) -> None:
    pcm, reference, wav = talk(clips, tmp_path)
    before = resumes(resume_stack)
    proxy = proxy_to(resume_stack)
    port = await proxy.start()
    out = tmp_path / "events.json"
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devtools.client",
        "--url",
        f"ws://127.0.0.1:{port}/ws/stream",
        "--flow-id",
        "e2e-resume",
        "--return",
        "asr,record_url,metrics",
        "--json",
        str(out),
        str(wav),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await cut_then_finish(proxy, cli)
    assert cli.returncode == 0, stderr.decode()
    assert proxy.connections == 2 and "resumed flow e2e-resume" in stderr.decode()
    events = json.loads(out.read_text())
    assert [json.loads(line) for line in stdout.decode().splitlines()] == events  # printed once each
    assert_one_session(events, reference)
    # One timeline: the gateway accepted every byte once, none twice, none lost.
    (metrics,) = [e for e in events if e["type"] == "metrics"]
    assert metrics["bytes_in"] == len(pcm)
    (record,) = [e for e in events if e["type"] == "record_url"]
    assert record["duration_s"] == pytest.approx(len(pcm) / 32000, abs=0.05)
    stored = [p for p in records_of(resume_stack).rglob("*") if p.is_file() and "e2e-resume" in p.name]
    assert len(stored) == 1, stored
    assert resumes(resume_stack) == before + 1


async def test_the_mic_resumes_across_a_cut_tcp_connection(resume_stack: Stack, clips: Path, tmp_path: Path) -> None:
    pcm, reference, wav = talk(clips, tmp_path)
    before = resumes(resume_stack)
    proxy = proxy_to(resume_stack)
    port = await proxy.start()
    mic = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "devtools.mic", "--url", f"ws://127.0.0.1:{port}/ws/stream"),
        *("--file", str(wav), "--json"),  # the file stands in for a device: blocks at real time
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await cut_then_finish(proxy, mic)
    assert mic.returncode == 0, stderr.decode()
    events = [json.loads(line) for line in stdout.decode().splitlines()]
    assert_one_session(events, reference)
    flow = events[0]["flowId"]
    assert proxy.connections == 2 and f"resumed flow {flow}" in stderr.decode()
    assert resumes(resume_stack) == before + 1
    # What was recorded during the outage went after the resume: the gateway has every byte once.
    assert events[-1]["audio_s"] == pytest.approx(len(pcm) / 32000, abs=FRAME_S)

    def archived() -> list[Path]:
        return [p for p in records_of(resume_stack).rglob(f"*{flow}*") if p.is_file() and not p.name.startswith(".")]

    await until(lambda: bool(archived()), 30, "the session's recording archived")
    (stored,) = archived()
    assert decoded_s(stored.read_bytes()) == pytest.approx(len(pcm) / 32000, abs=FRAME_S)
