"""Word timings and confidence (issue 14 item 1): the ASR's word helpers, the events and schemas
that carry them, the subtitle cues cut on them, the deferred transcript's JSON; and the `ack`'s
`hotwords_applied` (item 2)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from jsonschema import ValidationError

from common.envconf import ConfigError
from orchestrator.core.events import StageName, Transcript, TranscriptWord
from orchestrator.core.session import Session, SessionConfig
from orchestrator.routing.table import RoutingTable
from orchestrator.transcripts.cues import CueLimits, cues, wrap
from orchestrator.transcripts.srt import to_srt
from orchestrator.transcripts.view import normalise_finals
from orchestrator.transcripts.vtt import to_vtt
from services.asr.words import Word, clamp, from_sphinx, snap_to_speech, utterance_confidence
from tests.schemas import check_event

pytestmark = pytest.mark.unit
SR = 16_000


# services/asr/words.py ------------------------------------------------------------------------
def test_clamp_keeps_words_in_order_inside_the_audio() -> None:
    words = [Word("a", -0.2, 0.4, 1.3), Word("b", 0.3, 0.2, 0.5), Word("c", 1.8, 2.5, None)]
    assert clamp(words, 2.0) == (
        Word("a", 0.0, 0.4, 1.0),
        Word("b", 0.3, 0.3, 0.5),
        Word("c", 1.8, 2.0, None),
    )


def bursts(spans: list[tuple[float, float]], total_s: float) -> np.ndarray:
    """Silence with a 440 Hz tone over each span (seconds)."""
    pcm = np.zeros(int(total_s * SR), np.float32)
    for a, b in spans:
        t = np.arange(int(a * SR), int(b * SR))
        pcm[t] = 0.3 * np.sin(2 * np.pi * 440 * t / SR)
    return pcm


def test_snap_moves_boundaries_in_pauses_onto_the_speech() -> None:
    pcm = bursts([(0.5, 1.0), (1.3, 1.8)], 2.5)
    raw = [Word("one", 0.2, 1.15, 0.9), Word("two", 1.15, 2.3, 0.8)]
    assert snap_to_speech(raw, pcm) == (Word("one", 0.5, 1.0, 0.9), Word("two", 1.3, 1.8, 0.8))


def test_snap_extends_a_word_cut_inside_its_speech_but_never_into_the_next_word() -> None:
    pcm = bursts([(0.5, 1.0), (1.0, 1.6)], 2.0)  # no pause between the two words
    raw = [Word("one", 0.7, 0.9, 0.9), Word("two", 0.95, 1.4, 0.8)]
    one, two = snap_to_speech(raw, pcm)
    assert (one.start_s, one.end_s) == (0.5, 0.95)  # back to the speech onset, up to the next word
    assert (two.start_s, two.end_s) == (0.95, 1.6)  # not before the previous end, on to the offset


def test_snap_leaves_a_word_without_speech_alone() -> None:
    pcm = bursts([(0.5, 1.0)], 2.0)
    raw = [Word("one", 0.5, 1.0, None), Word("uh", 1.4, 1.7, 0.1)]
    assert snap_to_speech(raw, pcm)[1] == raw[1]
    assert snap_to_speech([], pcm) == ()


@dataclass
class FakeSegment:
    """The fields of pocketsphinx's `Segment` that from_sphinx reads (a test fixture)."""

    word: str
    start_frame: int
    end_frame: int


def test_sphinx_segments_become_words_without_fillers_or_confidence() -> None:
    segs = [
        FakeSegment("<s>", 0, 10),
        FakeSegment("hello", 11, 50),
        FakeSegment("<sil>", 51, 60),
        FakeSegment("[NOISE]", 61, 64),
        FakeSegment("world(2)", 65, 99),
        FakeSegment("</s>", 100, 110),
    ]
    assert from_sphinx(segs) == [Word("hello", 0.11, 0.51, None), Word("world", 0.65, 1.0, None)]


def test_utterance_confidence_is_the_exp_of_the_mean_log_probability() -> None:
    assert utterance_confidence(None) is None
    assert utterance_confidence(0.0) == 1.0
    assert utterance_confidence(-0.6931) == 0.5


# events and schemas ---------------------------------------------------------------------------
WORDS = (TranscriptWord("hello", 1.2, 1.5, 0.91), TranscriptWord("world", 1.55, 1.9, None))


@pytest.mark.parametrize("final", [True, False])
def test_transcripts_carry_words_and_confidence_in_their_schemas(final: bool) -> None:
    event = Transcript(final, "hello world", 1.2, 1.9, "en", words=WORDS, confidence=0.8).to_event("f1")
    check_event({**event, "seq": 2})  # the session numbers every event it sends
    assert event["words"] == [
        {"word": "hello", "start": 1.2, "end": 1.5, "confidence": 0.91},
        {"word": "world", "start": 1.55, "end": 1.9},
    ]
    assert event["confidence"] == 0.8
    bare = Transcript(final, "hello", 0.0, 1.0, "en").to_event("f1")
    assert "words" not in bare and "confidence" not in bare
    check_event({**bare, "seq": 2})


def test_the_schemas_refuse_a_malformed_word() -> None:
    event = {**Transcript(True, "hello", 0.0, 1.0, "en", words=WORDS[:1]).to_event("f1"), "seq": 2}
    check_event(event)
    for bad in ({"word": "hello", "start": 0.1}, {**event["words"][0], "confidence": 1.5}):
        with pytest.raises(ValidationError):
            check_event({**event, "words": [bad]})


# cues, SRT, WebVTT ----------------------------------------------------------------------------
TEXT = (
    "The quick brown fox jumps over the lazy dog. It was a very long day in the middle of the summer "
    "and nobody wanted to go outside at all"
)


def timed_final(text: str = TEXT, step_s: float = 0.4, pause_at: int = -1) -> dict[str, Any]:
    words, at = [], 10.0
    for i, w in enumerate(text.split()):
        at += 2.0 if i == pause_at else 0.0
        words.append({"word": w, "start": round(at, 3), "end": round(at + step_s - 0.1, 3), "confidence": 0.9})
        at += step_s
    return {"text": text, "ts": [10.0, words[-1]["end"]], "lang": "en", "words": words}


def test_cues_keep_to_the_limits_and_to_the_words() -> None:
    limits = CueLimits()
    final = timed_final()
    got = cues([final], limits)
    assert len(got) >= 3
    assert " ".join(" ".join(c.lines) for c in got).split() == TEXT.split()
    starts = {w["start"] for w in final["words"]}
    ends = {w["end"] for w in final["words"]}
    for c in got:
        assert 1 <= len(c.lines) <= limits.max_lines
        assert all(len(line) <= limits.max_line_chars for line in c.lines)
        assert c.end_s - c.start_s <= limits.max_duration_s
        assert c.start_s in starts and c.end_s in ends
    assert got[0].lines[-1].endswith("dog.")  # the sentence ends its cue


def test_a_cue_ends_at_the_duration_limit_and_at_a_long_pause() -> None:
    slow = timed_final("one two three four five six seven eight nine ten", step_s=1.0)
    assert [c.end_s - c.start_s <= 3.0 for c in cues([slow], CueLimits(max_duration_s=3.0))] == [True] * 4
    paused = timed_final("one two three four", step_s=0.3, pause_at=2)
    assert [c.lines for c in cues([paused])] == [("one two",), ("three four",)]


def test_two_lines_are_balanced() -> None:
    words = ["It", "was", "a", "very", "long", "day", "in", "the", "middle", "of", "the", "summer", "and", "nobody"]
    lines = wrap(words, 42)
    assert len(lines) == 2 and abs(len(lines[0]) - len(lines[1])) <= 8, lines
    assert wrap(["supercalifragilisticexpialidocious-and-more-and-more"], 42) == [
        "supercalifragilisticexpialidocious-and-more-and-more"
    ]


def test_a_final_without_words_is_cut_by_characters_over_its_span() -> None:
    text = "no words here but a rather long text that goes on and on and on beyond forty two characters"
    got = cues([{"text": text, "ts": [20.0, 26.0], "lang": "en"}])
    assert len(got) == 2
    assert got[0].start_s == 20.0 and got[-1].end_s == 26.0
    assert got[0].end_s < got[1].start_s
    assert " ".join(" ".join(c.lines) for c in got) == text


def test_srt_and_vtt_share_the_cues() -> None:
    finals = [timed_final(), {"text": "", "ts": [40, 41]}, {"text": "a < b & c", "ts": [3725.004, 3726]}]
    srt, vtt = to_srt(finals), to_vtt(finals)
    n = len(cues(finals))
    assert re.findall(r"^(\d+)$", srt, re.M) == [str(i) for i in range(1, n + 1)]
    assert srt.count(" --> ") == vtt.count(" --> ") == n
    assert srt.startswith("1\n00:00:10,000 --> ")
    assert vtt.startswith("WEBVTT\n\n1\n00:00:10.000 --> ")
    assert "01:02:05,004 --> 01:02:06,000\na < b & c\n" in srt
    assert "01:02:05.004 --> 01:02:06.000\na &lt; b &amp; c\n" in vtt
    assert to_srt([]) == "" and to_vtt([]) == "WEBVTT\n"


# the deferred transcript's finals ---------------------------------------------------------------
def test_normalised_finals_keep_words_and_confidence() -> None:
    finals = [
        {
            "text": " hi there ",
            "ts": [1, 2],
            "lang": "en",
            "confidence": 0.81234,
            "words": [
                {"word": "hi", "start": 1, "end": 1.4, "confidence": 0.9},
                {"word": "there", "start": 1.5, "end": 1.2},
            ],
        },
        {"text": "plain", "ts": [3, 4], "lang": "en"},
    ]
    assert normalise_finals(finals) == [
        {
            "text": "hi there",
            "ts": [1.0, 2.0],
            "lang": "en",
            "words": [
                {"word": "hi", "start": 1.0, "end": 1.4, "confidence": 0.9},
                {"word": "there", "start": 1.5, "end": 1.5},
            ],
            "confidence": 0.8123,
        },
        {"text": "plain", "ts": [3.0, 4.0], "lang": "en"},
    ]
    with pytest.raises((KeyError, TypeError, ValueError)):
        normalise_finals([{"text": "x", "ts": [0, 1], "words": [{"word": "x"}]}])


# hotwords in the ack --------------------------------------------------------------------------
def ack_of(config: SessionConfig, hints: dict[str, Any]) -> dict[str, Any]:
    s = Session(config, 0.0, "new")
    s.receive_text(json.dumps({"type": "start", "flowId": "f1", "hints": hints}), 0.0)
    ack = next(e for e in s.events_to_send() if e["type"] == "ack")
    check_event(ack)
    return ack


@pytest.mark.parametrize(
    ("applied", "stages", "want"),
    [(True, ("vad", "asr"), True), (False, ("vad", "asr"), False), (True, ("vad",), False)],
)
def test_the_ack_says_whether_hotwords_are_applied(applied: bool, stages: tuple[str, ...], want: bool) -> None:
    config = SessionConfig(stages=tuple(StageName(s) for s in stages), hotwords_applied=applied)
    assert ack_of(config, {"hotwords": ["Xiomara"]})["hotwords_applied"] is want
    assert "hotwords_applied" not in ack_of(config, {})


def test_a_pool_says_whether_its_engine_applies_hotwords() -> None:
    pools = {"whisper": {"addrs": ["a:1"]}, "sphinx": {"addrs": ["b:1"], "hotwords": False}}
    assert not RoutingTable.from_dict({"default_pool": "whisper", "pools": pools}).hotwords_applied
    assert RoutingTable.from_dict({"default_pool": "whisper", "pools": {"whisper": pools["whisper"]}}).hotwords_applied
    assert RoutingTable.single_pool(("a:1",)).hotwords_applied
    with pytest.raises(ConfigError, match="hotwords must be bool"):
        RoutingTable.from_dict({"default_pool": "w", "pools": {"w": {"addrs": ["a:1"], "hotwords": "no"}}})
