"""speechgw-batch against the whole stack (Whisper tiny.en): a folder of 50 short spoken files in
nested folders (WAV, one MP3, one OGG, one MP4 video) and one broken file; a rerun that skips every
done file; Ctrl-C in the middle and a rerun that resumes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from devtools.stack import Stack
from tests import corpus
from tests.poll import seconds, wait_for
from tests.wer import wer

pytestmark = pytest.mark.e2e

FILES = 50
MAX_BATCH_WER = 0.25  # Whisper tiny.en on these espeak-ng voices: 0.12 measured


@pytest.fixture(scope="module")
def asr_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"LOG_LEVEL": "WARNING", "ASR_ENGINE": "whisper", "ASR_MODEL": "tiny.en", "ASR_MAX_SESSIONS": "4"}
    with Stack(("vad", "asr", "compress"), env=env, workdir=tmp_path_factory.mktemp("records")) as stack:
        yield stack


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=seconds(60))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Path, str]]:
    """50 files of one sentence each (several voices), three folders deep, with their reference texts;
    file 0 is an MP3, 1 an OGG, 2 an MP4 video (blue frames and the speech); plus `broken.wav`."""
    root = tmp_path_factory.mktemp("batch-in")
    refs: dict[Path, str] = {}
    for i in range(FILES):
        text = corpus.EN_SENTENCES[i % len(corpus.EN_SENTENCES)]
        voice = corpus.EN_VOICES[i % len(corpus.EN_VOICES)]
        audio = corpus.synthesize(corpus.Utterance(text, "en", voice))
        lead = np.zeros(corpus.SR // 4, dtype=np.float32)  # a quarter second of silence each side
        wav = root / f"group{i % 3}" / (f"sub{i % 2}" if i % 5 else "") / f"clip{i:02d}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav, np.concatenate([lead, audio, lead]), corpus.SR, subtype="PCM_16")
        refs[wav] = text
    conversions = [("clip00", ".mp3", []), ("clip01", ".ogg", ["-c:a", "libvorbis"])]
    for stem, suffix, codec in conversions:
        (wav,) = [p for p in refs if p.stem == stem]
        ffmpeg("-i", str(wav), *codec, str(wav.with_suffix(suffix)))
        refs[wav.with_suffix(suffix)] = refs.pop(wav)
        wav.unlink()
    (wav,) = [p for p in refs if p.stem == "clip02"]
    video = wav.with_suffix(".mp4")
    blue = ("-f", "lavfi", "-i", "color=c=blue:s=64x48:r=10")
    ffmpeg(*blue, "-i", str(wav), "-shortest", "-c:v", "libx264", "-c:a", "aac", str(video))
    refs[video] = refs.pop(wav)
    wav.unlink()
    (root / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + bytes(range(200)))
    return root, refs


def batch(stack: Stack, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "devtools.batch", "--url", stack.url, "--token", stack.token() or "", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=seconds(timeout_s), check=False)


def outputs(out: Path, root: Path, src: Path) -> Path:
    return out / src.relative_to(root).with_suffix("")


def test_a_folder_of_fifty_files_then_a_rerun_that_skips_them(
    asr_stack: Stack, folder: tuple[Path, dict[Path, str]], tmp_path: Path
) -> None:
    root, refs = folder
    out = tmp_path / "out"
    first = batch(asr_stack, str(root), "--out", str(out), "--concurrency", "4", "--no-progress")
    print(first.stdout)
    assert first.returncode == 1, first.stderr  # the broken file
    assert f"finished: {FILES} transcribed, 0 already done, 1 failed, 0 left of {FILES + 1} files" in first.stdout
    assert f"failed: {root / 'broken.wav'}:" in first.stdout and "retries" in first.stdout
    hyps, texts = [], []
    for src, ref in sorted(refs.items()):
        base = outputs(out, root, src)
        doc = json.loads(base.with_suffix(".json").read_text())
        srt, vtt = base.with_suffix(".srt").read_text(), base.with_suffix(".vtt").read_text()
        assert base.with_suffix(".done").is_file() and doc["source"] == str(src) and doc["lang"] == "en"
        assert srt.count(" --> ") == vtt.count(" --> ") == len([f for f in doc["finals"] if f["text"].strip()]) >= 1
        assert vtt.startswith("WEBVTT\n\n1\n")
        hyps.append(doc["text"])
        texts.append(ref)
    measured = wer(texts, hyps)
    print(f"batch WER over {FILES} files: {measured:.3f}")
    assert measured <= MAX_BATCH_WER
    video = json.loads(outputs(out, root, next(p for p in refs if p.suffix == ".mp4")).with_suffix(".json").read_text())
    assert wer([refs[Path(video["source"])]], [video["text"]]) <= MAX_BATCH_WER  # the video's audio track
    assert not list(out.rglob("*.tmp")) and not outputs(out, root, root / "broken.wav").with_suffix(".done").exists()

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = batch(asr_stack, str(root), "--out", str(out), "--no-progress")
    assert again.returncode == 1
    assert f"finished: 0 transcribed, {FILES} already done, 1 failed, 0 left of {FILES + 1} files" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing rewritten


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(
    asr_stack: Stack, folder: tuple[Path, dict[Path, str]], tmp_path: Path
) -> None:
    _, refs = folder
    subset = tmp_path / "in"
    subset.mkdir()
    for src in sorted(p for p in refs if p.suffix == ".wav")[:12]:
        shutil.copy(src, subset / src.name)
    cmd = [sys.executable, "-m", "devtools.batch", "--url", asr_stack.url, "--token", asr_stack.token() or ""]
    proc = subprocess.Popen(
        [*cmd, str(subset), "--concurrency", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: len(list(subset.glob("*.done"))) >= 3, 120, "three files done")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=seconds(15))
    finally:
        proc.kill()
    assert proc.returncode == 130, stdout + stderr
    assert stdout.startswith("interrupted: ") and "rerun the same command to resume" in stdout
    done = {p.name for p in subset.glob("*.done")}
    assert 3 <= len(done) < 12 and not list(subset.glob(".*.tmp"))
    assert all((subset / name.replace(".done", ".json")).is_file() for name in done)
    rerun = batch(asr_stack, str(subset), "--concurrency", "2", "--no-progress")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    expected = f"finished: {12 - len(done)} transcribed, {len(done)} already done, 0 failed, 0 left of 12 files"
    assert expected in rerun.stdout
    assert len(list(subset.glob("*.done"))) == 12
