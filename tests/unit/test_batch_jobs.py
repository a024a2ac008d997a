"""speechgw-batch without a gateway: which files the arguments name, where outputs go, the `.done`
marker, what an outcome means for a retry, the backoff, the outputs, the WebVTT writer."""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from devtools.batch.jobs import Backoff, Job, Marker, discover, is_done, judge, plan, render, sha256_of, write_atomic
from devtools.batch.run import Tally, parse_formats
from orchestrator.transcripts.srt import to_srt
from orchestrator.transcripts.vtt import srt_to_vtt, to_vtt

pytestmark = pytest.mark.unit


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("a.wav", "b.MP3", "notes.txt", "sub/c.flac", "sub/deeper/d.mp4", "sub/e.wav"):
        touch(tmp_path / "in" / name)
    return tmp_path / "in"


def test_folders_are_searched_recursively_for_media_files(tree: Path) -> None:
    sources, missing = discover([str(tree)])
    assert [s.path.relative_to(tree).as_posix() for s in sources] == [
        "a.wav",
        "b.MP3",
        "sub/c.flac",
        "sub/deeper/d.mp4",
        "sub/e.wav",
    ]
    assert missing == [] and all(s.root == tree for s in sources)


def test_files_globs_and_list_files_each_once(tree: Path) -> None:
    listing = touch(tree.parent / "list.txt", b"# a comment\n\nin/a.wav\nin/sub/*.wav\n")
    sources, missing = discover([str(tree / "notes.txt"), f"{tree}/**/*.wav", f"@{listing}", str(tree / "nope.wav")])
    names = [s.path.name for s in sources]
    assert names == ["notes.txt", "a.wav", "e.wav"]  # a file named is taken; each file once
    assert missing == [str(tree / "nope.wav")]
    assert discover(["@" + str(tree / "missing.txt")]) == ([], ["@" + str(tree / "missing.txt")])


def test_outputs_go_next_to_the_file_or_under_out_and_collisions_keep_the_suffix(tree: Path, tmp_path: Path) -> None:
    touch(tree / "sub" / "c.wav")
    sources, _ = discover([str(tree)])
    beside = {j.source.name: j.base for j in plan(sources, None)}
    assert beside["a.wav"] == tree / "a" and beside["d.mp4"] == tree / "sub" / "deeper" / "d"
    assert beside["c.flac"] == tree / "sub" / "c.flac" and beside["c.wav"] == tree / "sub" / "c.wav"
    out = tmp_path / "out"
    under = {j.source.name: j for j in plan(sources, out)}
    assert under["d.mp4"].base == out / "sub" / "deeper" / "d"
    assert under["a.wav"].output("srt") == out / "a.srt" and under["a.wav"].marker == out / "a.done"
    other = touch(tmp_path / "elsewhere" / "a.wav")
    twins, _ = discover([str(tree / "a.wav"), str(other)])
    assert [j.base for j in plan(twins, out)] == [out / "a.wav-1", out / "a.wav-2"]  # one name, two folders


def test_a_job_is_done_when_its_marker_names_this_content_and_every_format_exists(tmp_path: Path) -> None:
    src = touch(tmp_path / "a.wav", b"audio one")
    job = Job(src, tmp_path / "a")
    assert is_done(job, ("srt",)) is None  # no marker
    st = src.stat()
    write_atomic(job.output("srt"), "x")
    write_atomic(job.marker, Marker(sha256_of(src), st.st_size, st.st_mtime_ns, ("srt", "json"), 1.5).dumps())
    assert is_done(job, ("srt",)) is not None
    assert is_done(job, ("srt", "json")) is None  # the .json is missing
    assert is_done(job, ("srt", "vtt")) is None  # vtt was not asked for last time
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert is_done(job, ("srt",)) is not None  # touched, same content: the checksum says done
    src.write_bytes(b"audio two")
    assert is_done(job, ("srt",)) is None  # new content
    job.marker.write_text("{not json")
    assert is_done(job, ("srt",)) is None


def ev(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "flowId": "f", **fields}


END = ev("end", reason="flush", audio_s=1.0)


@pytest.mark.parametrize(
    ("events", "ok", "retry", "reason"),
    [
        ([ev("ack"), ev("asr_final", text="hi", ts=[0, 1], lang="en"), END], True, False, ""),
        ([ev("ack"), ev("error", code="vad_unavailable", message="m", fatal=False), END], True, False, ""),
        ([ev("error", code="too_many_sessions", message="busy", fatal=True)], False, True, "too_many_sessions: busy"),
        ([ev("error", code="auth_invalid", message="bad", fatal=True)], False, False, "auth_invalid: bad"),
        (
            [ev("ack"), ev("error", code="asr_unavailable", message="m", fatal=False), END],
            False,
            True,
            "asr_unavailable: m",
        ),
        ([ev("ack")], False, True, "the connection closed before `end`"),
        (
            [ev("ack"), ev("end", reason="shutdown", audio_s=1.0)],
            False,
            True,
            "the session ended with reason 'shutdown'",
        ),
        ([], False, True, "the connection closed before `end`"),
    ],
)
def test_judge_tells_done_retry_and_failed(events: list[dict[str, Any]], ok: bool, retry: bool, reason: str) -> None:
    verdict = judge(events)
    assert (verdict.ok, verdict.retry, verdict.reason) == (ok, retry, reason)


def test_warnings_are_the_non_fatal_error_codes() -> None:
    verdict = judge([ev("ack"), ev("error", code="lid_unavailable", message="m", fatal=False), END])
    assert verdict.ok and verdict.warnings == ("lid_unavailable",)


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    backoff = Backoff(base_s=1.0, cap_s=8.0, rng=random.Random(7))
    for attempt, ceiling in enumerate([1, 2, 4, 8, 8, 8]):
        delays = [backoff.delay_s(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > 0  # jittered: retries of many files do not move in step


def test_render_writes_srt_vtt_and_a_json_transcript(tmp_path: Path) -> None:
    finals = [
        ev("asr_final", text=" Hello <world> ", ts=[0.5, 1.75], lang="en"),
        ev("asr_final", text="", ts=[2.0, 2.1], lang="en"),
        ev("asr_final", text="Again & again", ts=[3.0, 4.25], lang="en"),
    ]
    events = [ev("ack"), ev("lid", lang="en", score=0.9), *finals, END]
    texts = render(Job(tmp_path / "a.wav", tmp_path / "a"), events, sha256="ab" * 32, audio_s=4.5, warnings=["x"])
    assert texts["srt"] == to_srt(finals)
    assert texts["vtt"] == (
        "WEBVTT\n\n1\n00:00:00.500 --> 00:00:01.750\nHello &lt;world&gt;\n\n2\n00:00:03.000 --> 00:00:04.250\n"
        "Again &amp; again\n"
    )
    doc = json.loads(texts["json"])
    assert doc["text"] == "Hello <world> Again & again" and doc["lang"] == "en" and doc["flowId"] == "f"
    assert doc["finals"] == finals and doc["audio_s"] == 4.5 and doc["warnings"] == ["x"]


def test_vtt_follows_every_srt_cue() -> None:
    finals = [ev("asr_final", text=f"line {i}", ts=[i, i + 0.5], lang="en") for i in range(12)]
    vtt = to_vtt(finals)
    assert vtt.startswith("WEBVTT\n\n1\n00:00:00.000 --> 00:00:00.500\nline 0\n")
    assert vtt.count(" --> ") == 12 and "," not in vtt.replace("line", "")
    assert srt_to_vtt("") == "WEBVTT\n"


def test_formats_and_summary() -> None:
    assert parse_formats("vtt, SRT,vtt") == ("vtt", "srt")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_formats("srt,txt")
    tally = Tally(total=5, done=2, skipped=1, failed=[(Path("x.wav"), "Invalid data")], audio_s=7200.0)
    text = tally.summary(interrupted=True)
    assert text.startswith("interrupted: 2 transcribed, 1 already done, 1 failed, 1 left of 5 files")
    assert "audio 2.000 h" in text and "failed: x.wav: Invalid data" in text and "rerun" in text
