"""speechgw-mic against the whole stack (Whisper tiny.en), with a file standing in for the device
(blocks at real time): partials in place and finals on their own lines; Ctrl-C flushes and waits
for `end`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.mic import CLEAR_LINE
from devtools.stack import Stack
from speechgw_client import audio_seconds, load_audio
from tests.poll import seconds
from tests.wer import wer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def asr_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"LOG_LEVEL": "WARNING", "ASR_ENGINE": "whisper", "ASR_MODEL": "tiny.en"}
    with Stack(("vad", "asr", "compress"), env=env, workdir=tmp_path_factory.mktemp("records")) as stack:
        yield stack


def mic(stack: Stack, clip: Path, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "devtools.mic", "--url", stack.url, "--token", stack.token() or ""),
        *("--file", str(clip), *extra),
    ]


def finals_of(stdout: str) -> list[str]:
    lines = [line.rsplit(CLEAR_LINE, 1)[-1] for line in stdout.split("\n") if line.strip()]
    return [line.split("] ", 1)[1] for line in lines if line.startswith("[")]


def test_partials_in_place_then_finals_on_their_own_lines(asr_stack: Stack, clips: Path) -> None:
    clip = clips / "en" / "quick_brown_fox.wav"
    t0 = time.monotonic()
    done = subprocess.run(mic(asr_stack, clip, "--in-place"), capture_output=True, timeout=seconds(60), check=False)
    took = time.monotonic() - t0
    stdout, stderr = done.stdout.decode(), done.stderr.decode()  # not text=True: it would turn \r into \n
    assert done.returncode == 0, stderr
    assert took >= audio_seconds(load_audio(clip))  # the stand-in delivers the audio at real time, no faster
    partials = [p for p in stdout.split(CLEAR_LINE) if p and not p.startswith("[")]
    assert partials, stdout  # shown in place before the final replaced them
    finals = finals_of(stdout)
    assert len(finals) == 1 and wer([(clip.with_suffix(".txt")).read_text()], finals) <= 0.2
    assert stdout.endswith("\n") and "end (flush)" in stderr


def test_ctrl_c_flushes_and_waits_for_the_last_final(asr_stack: Stack, clips: Path) -> None:
    clip = clips / "en" / "counting.wav"
    proc = subprocess.Popen(mic(asr_stack, clip, "--in-place"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        head = proc.stdout.read(len(CLEAR_LINE) + 1)  # blocks until the first partial is on the screen
        proc.send_signal(signal.SIGINT)
        tail, err = proc.communicate(timeout=seconds(30))
    finally:
        proc.kill()
    first, rest, stderr = head.decode(), tail.decode(), err.decode()
    assert proc.returncode == 0, stderr
    assert first.startswith(CLEAR_LINE) and "end (flush)" in stderr
    sent_s = float(stderr.split("end (flush): ")[1].split(" s")[0])
    assert sent_s < audio_seconds(load_audio(clip))  # stopped before the file's end
    finals = finals_of(first + rest)
    assert len(finals) >= 1 and (first + rest).endswith("\n")  # the final of what was said, on its own line
