"""Utterance segmentation by VAD endpoints on the session timeline (SPEC §4)."""

from __future__ import annotations

import numpy as np
import pytest

from services.asr.segmenter import Utterance, UtteranceSegmenter

pytestmark = pytest.mark.unit
MS = 1_000_000
FRAME = 320  # 20 ms at 16 kHz


def feed(seg: UtteranceSegmenter, first_frame: int, n_frames: int) -> list[Utterance]:
    """Frames whose samples carry their own timeline position in ms, to check cuts exactly."""
    out: list[Utterance] = []
    for i in range(first_frame, first_frame + n_frames):
        pcm = (i * 20 + np.arange(FRAME) / 16).astype(np.float32)
        out += seg.push_audio(i * 20 * MS, pcm)
    return out


def test_endpoints_cut_one_utterance_with_its_exact_audio() -> None:
    seg = UtteranceSegmenter(max_utterance_ms=25_000)
    assert seg.push_endpoint(True, 200 * MS) == []
    assert feed(seg, 0, 50) == []  # 0..1000 ms
    assert seg.open is not None and seg.open.start_ns == 200 * MS
    [utt] = seg.push_endpoint(False, 700 * MS)
    assert utt.ts == (0.2, 0.7)
    assert utt.pcm.size == 8000 and utt.pcm[0] == pytest.approx(200.0)
    assert utt.pcm[-1] == pytest.approx(700 - 1 / 16)
    assert not utt.forced and seg.open is None


def test_endpoint_ahead_of_the_audio_waits_for_it() -> None:
    seg = UtteranceSegmenter()
    feed(seg, 0, 10)
    seg.push_endpoint(True, 100 * MS)
    assert seg.push_endpoint(False, 500 * MS) == []  # audio only reaches 200 ms
    assert feed(seg, 10, 14) == []  # 480 ms
    [utt] = feed(seg, 24, 1)  # 500 ms
    assert utt.ts == (0.1, 0.5)


def test_start_in_the_past_uses_the_preroll() -> None:
    seg = UtteranceSegmenter(preroll_ms=500)
    seg.push_endpoint(False, 0)  # leaves the implicit mode at once
    feed(seg, 0, 100)  # 2 s, only the last 500 ms kept
    seg.push_endpoint(True, 1700 * MS)
    [utt] = seg.flush()
    assert utt.ts == (1.7, 2.0) and utt.pcm[0] == pytest.approx(1700.0)
    seg2 = UtteranceSegmenter(preroll_ms=500)
    seg2.push_endpoint(False, 0)
    feed(seg2, 0, 100)
    seg2.push_endpoint(True, 100 * MS)  # older than the pre-roll: clamped to what is kept
    assert seg2.open is not None and seg2.open.start_ns == 1500 * MS


def test_max_length_forces_a_cut_and_speech_continues() -> None:
    seg = UtteranceSegmenter(max_utterance_ms=1000)
    seg.push_endpoint(True, 0)
    cut = feed(seg, 0, 130)  # 2.6 s of speech
    assert [u.ts for u in cut] == [(0.0, 1.0), (1.0, 2.0)] and all(u.forced for u in cut)
    [last] = seg.push_endpoint(False, 2500 * MS)
    assert last.ts == (2.0, 2.5) and not last.forced


def test_flush_closes_the_open_utterance_at_the_end_of_audio() -> None:
    seg = UtteranceSegmenter()
    seg.push_endpoint(True, 300 * MS)
    feed(seg, 0, 40)
    seg.push_endpoint(False, 5000 * MS)  # beyond the audio: clamped at flush
    [utt] = seg.flush()
    assert utt.ts == (0.3, 0.8)
    assert seg.flush() == []


def test_without_endpoints_the_whole_stream_is_speech() -> None:
    seg = UtteranceSegmenter()
    feed(seg, 5, 20)  # starts at 100 ms
    [utt] = seg.flush()
    assert utt.ts == (0.1, 0.5) and utt.forced


def test_first_start_moves_the_implicit_utterance() -> None:
    seg = UtteranceSegmenter()
    feed(seg, 0, 20)
    implicit = seg.open
    assert implicit is not None and implicit.start_ns == 0
    assert seg.push_endpoint(True, 200 * MS) == []  # the leading silence is not finalised
    moved = seg.open
    assert moved is not None and moved.start_ns == 200 * MS and moved.index != implicit.index


def test_several_utterances_come_out_in_timeline_order_and_stray_ends_are_ignored() -> None:
    seg = UtteranceSegmenter()
    out = seg.push_endpoint(False, 0)
    for start, end in ((100, 300), (500, 900), (1000, 1100)):
        out += seg.push_endpoint(True, start * MS) + seg.push_endpoint(False, end * MS)
    out += seg.push_endpoint(False, 1150 * MS)
    out += feed(seg, 0, 60)
    assert [u.ts for u in out] == [(0.1, 0.3), (0.5, 0.9), (1.0, 1.1)]
    assert [u.index for u in out] == sorted(u.index for u in out)


def test_gated_stream_has_no_implicit_utterance() -> None:
    seg = UtteranceSegmenter(gated=True, speech_preroll_ms=300, speech_tail_ms=200)
    assert feed(seg, 0, 100) == []  # 2 s of audio, no endpoint: nothing is speech
    assert seg.open is None
    [utt] = seg.flush()  # ended before any endpoint: the kept audio, once
    assert utt.ts == (0.0, 2.0) and utt.forced


def test_gated_stream_keeps_undecided_audio_for_a_late_start() -> None:
    seg = UtteranceSegmenter(max_utterance_ms=25_000, preroll_ms=2_000, gated=True, speech_preroll_ms=300)
    feed(seg, 0, 250)  # 5 s, faster than the VAD: nothing decided yet
    seg.push_endpoint(True, 500 * MS)
    assert seg.open is not None and seg.open.start_ns == 200 * MS  # not trimmed to the last 2 s
    [utt] = seg.push_endpoint(False, 1000 * MS)
    assert utt.ts == (0.2, 1.0)
    assert seg.flush() == []  # the VAD spoke: nothing after its SPEECH_END is decoded


def test_gated_utterance_gets_its_preroll_and_tail_and_keeps_timeline_stamps() -> None:
    seg = UtteranceSegmenter(gated=True, speech_preroll_ms=300, speech_tail_ms=200)
    feed(seg, 0, 50)  # 0..1000 ms
    seg.push_endpoint(True, 800 * MS)
    assert seg.open is not None and seg.open.start_ns == 500 * MS
    assert seg.push_endpoint(False, 1500 * MS) == []  # the tail is not there yet
    [utt] = feed(seg, 50, 50)  # ..2000 ms
    assert utt.ts == (0.5, 1.7) and utt.speech_end_ns == 1500 * MS
    assert utt.pcm[0] == pytest.approx(500.0) and utt.pcm.size == 1200 * 16
    seg.push_endpoint(True, 1800 * MS)  # the pre-roll would reach into the last utterance
    assert seg.open is not None and seg.open.start_ns == 1700 * MS


def test_finalize_closes_the_open_utterance_at_its_pts_without_tail() -> None:
    seg = UtteranceSegmenter(gated=True, speech_tail_ms=200, min_continuation_ms=300)
    seg.push_endpoint(True, 100 * MS)
    feed(seg, 0, 40)  # 800 ms of audio
    [utt] = seg.push_finalize(800 * MS)
    assert utt.finalized and utt.ts == (0.1, 0.8) and utt.pcm.size == 700 * 16
    # The VAD still hears speech: what follows goes on as a continuation ...
    assert seg.open is not None and seg.open.start_ns == 800 * MS
    # ... which the VAD's own end of the finalized speech drops (no second, near-empty answer).
    feed(seg, 40, 20)
    assert seg.push_endpoint(False, 900 * MS) == [] and seg.open is None
    assert seg.flush() == []


def test_speech_going_on_after_finalize_is_its_own_utterance() -> None:
    seg = UtteranceSegmenter(gated=True, min_continuation_ms=300)
    seg.push_endpoint(True, 0)
    feed(seg, 0, 25)
    [first] = seg.push_finalize(500 * MS)
    feed(seg, 25, 50)  # to 1500 ms
    [second] = seg.push_endpoint(False, 1400 * MS)
    assert first.ts == (0.0, 0.5) and second.ts == (0.5, 1.4)
    assert not second.finalized and second.index > first.index


def test_finalize_with_nothing_open_answers_an_empty_utterance() -> None:
    seg = UtteranceSegmenter(gated=True)
    seg.push_endpoint(True, 0)
    feed(seg, 0, 25)
    [utt] = seg.push_endpoint(False, 300 * MS)
    [empty] = seg.push_finalize(500 * MS)
    assert empty.finalized and empty.pcm.size == 0 and empty.ts == (0.5, 0.5)
    assert not utt.finalized and seg.open is None


def test_finalize_waits_for_its_audio_and_reopens_the_implicit_utterance() -> None:
    seg = UtteranceSegmenter()  # no VAD: the stream counts as speech
    feed(seg, 0, 10)
    assert seg.push_finalize(400 * MS) == []  # the audio reaches 200 ms only
    [utt] = feed(seg, 10, 10)
    assert utt.finalized and utt.ts == (0.0, 0.4)
    feed(seg, 20, 10)
    [rest] = seg.flush()
    assert rest.ts == (0.4, 0.6) and not rest.finalized
