"""Whisper decoding on a shorter encoder window (services/asr/window.py), real tiny.en model, no sockets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.envconf import ConfigError, load_env
from common.models import whisper_tiny_en_dir
from services.asr.config import AsrConfig
from services.asr.engines import WhisperEngine
from services.asr.window import compression_ratio, window_frames
from tests.wer import wer

pytestmark = pytest.mark.unit

EN = ("counting", "hello_world", "quick_brown_fox")  # 2.99 s, 1.14 s, 2.89 s


def load(clips: Path, name: str) -> tuple[np.ndarray, str]:
    audio, sr = sf.read(clips / "en" / f"{name}.wav", dtype="float32")
    assert sr == 16000
    return audio, (clips / "en" / f"{name}.txt").read_text()


def engine(partial_window_s: float, final_window_s: float) -> WhisperEngine:
    return WhisperEngine(
        whisper_tiny_en_dir(), "whisper-tiny.en", "en", partial_window_s=partial_window_s, final_window_s=final_window_s
    )


@pytest.fixture(scope="module")
def w10() -> WhisperEngine:
    return engine(10.0, 10.0)


def test_windowed_decode_transcribes_the_english_clips(w10: WhisperEngine, clips: Path) -> None:
    """10 s window: corpus WER 0.0 measured (digits spelled); bound 0.05."""
    refs, hyps = [], []
    for name in EN:
        audio, ref = load(clips, name)
        result = w10.transcribe(audio)
        refs.append(ref)
        hyps.append(result.text)
        assert result.lang == "en"
    assert wer(refs, hyps) <= 0.05, hyps
    assert (w10.windowed_decodes, w10.window_fallbacks) == (3, 0)


def test_30s_window_computes_what_faster_whisper_does(clips: Path) -> None:
    """At the full 30 s window the windowed decoder reproduces WhisperModel.transcribe exactly."""
    full, normal = engine(30.0, 30.0), engine(0.0, 0.0)
    for name in ("quick_brown_fox", "hello_world"):
        audio, _ = load(clips, name)
        assert full.transcribe(audio) == normal.transcribe(audio)
    assert (full.windowed_decodes, normal.windowed_decodes) == (2, 0)


def test_audio_not_shorter_than_the_window_takes_the_normal_path(clips: Path) -> None:
    short = engine(2.0, 2.0)
    counting, ref = load(clips, "counting")  # 2.99 s >= 2 s: normal path
    assert wer([ref], [short.transcribe(counting).text]) == 0.0
    assert short.windowed_decodes == 0
    assert short.transcribe(np.zeros(0, np.float32)).text == ""  # empty: normal path
    assert short.windowed_decodes == 0
    hello, ref = load(clips, "hello_world")  # 1.14 s < 2 s: windowed
    assert wer([ref], [short.transcribe(hello).text]) == 0.0
    assert short.windowed_decodes == 1


def test_a_looping_windowed_decode_falls_back_to_the_normal_path(clips: Path) -> None:
    """Measured: on a 5 s window tiny.en loops on counting ("1-2-3-... 1-2-3-..."); the engine
    refuses that text and decodes the clip again on 30 s."""
    five = engine(5.0, 5.0)
    audio, ref = load(clips, "counting")
    assert wer([ref], [five.transcribe(audio).text]) == 0.0
    assert (five.windowed_decodes, five.window_fallbacks) == (1, 1)


def test_partials_and_finals_use_their_own_window(clips: Path) -> None:
    split = engine(10.0, 0.0)
    audio, _ = load(clips, "quick_brown_fox")
    stream = split.open_stream("en")
    stream.accept(audio[:16000])
    assert "quick" in stream.partial().text.lower()
    assert split.windowed_decodes == 1
    stream.accept(audio[16000:])
    assert "lazy dog" in stream.finish().text.lower()
    assert split.windowed_decodes == 1  # the final took Whisper's 30 s


def test_window_frames_and_compression_ratio() -> None:
    assert window_frames(0.0) == 0
    assert window_frames(10.0) == 1000
    assert window_frames(45.0) == 3000
    assert compression_ratio("") == 0.0
    assert compression_ratio("The quick brown fox jumps over the lazy dog.") < 2.4
    assert compression_ratio("1, 2, 3, 4... " * 20) > 2.4


def test_config_reads_the_windows() -> None:
    default = load_env(AsrConfig, {})
    assert (default.partial_window_s, default.final_window_s, default.min_window_s) == (10.0, 30.0, 3.0)
    both = load_env(AsrConfig, {"ASR_WINDOW_S": "0", "ASR_FINAL_WINDOW_S": "8.5"})
    assert (both.partial_window_s, both.final_window_s) == (0.0, 8.5)
    with pytest.raises(ConfigError):
        load_env(AsrConfig, {"ASR_WINDOW_S": "31"})
    with pytest.raises(ConfigError):
        load_env(AsrConfig, {"ASR_FINAL_WINDOW_S": "-1"})


def test_windowed_and_normal_paths_time_the_same_words(w10: WhisperEngine, clips: Path) -> None:
    """Both paths align the decoded text on the encoder output: the words spell the text, in order,
    inside the clip, each with a probability; the normal path aligns its text apart (its own
    `word_timestamps=True` would change the text)."""
    audio, _ = load(clips, "quick_brown_fox")
    normal = engine(0.0, 0.0)
    for result in (w10.transcribe(audio), normal.transcribe(audio)):
        assert " ".join(w.word for w in result.words) == result.text
        assert all(a.end_s <= b.start_s + 1e-9 for a, b in zip(result.words, result.words[1:], strict=False))
        assert all(0 <= w.start_s <= w.end_s <= audio.size / 16000 for w in result.words)
        assert all(w.confidence is not None and 0 < w.confidence <= 1 for w in result.words)
        assert result.confidence is not None and 0.5 < result.confidence <= 1
    normal.word_timestamps = False
    plain = normal.transcribe(audio)
    assert plain.words == () and plain.text == w10.transcribe(audio).text
