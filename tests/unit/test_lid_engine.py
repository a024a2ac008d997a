"""The real Whisper base LID engine on pytest-audioeval clips (SPEC §4, §9). No sockets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.models import whisper_base_dir
from services.lid.engine import LanguageDetector, WhisperLid
from services.lid.policy import RunDetection

pytestmark = pytest.mark.unit


def clip_pcm(path: Path, seconds: float | None = None) -> bytes:
    """The clip (16 kHz float WAV) as PCM16 LE; soundfile's own int16 read does not scale floats."""
    audio, sr = sf.read(path, dtype="float32")
    assert sr == 16000 and audio.ndim == 1
    if seconds is not None:
        audio = audio[: int(seconds * sr)]
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def engine() -> WhisperLid:
    return WhisperLid(whisper_base_dir(), cpu_threads=1, window_s=10.0)


@pytest.mark.parametrize(("clip", "lang"), [("zh/jishu.wav", "zh"), ("en/counting.wav", "en")])
def test_first_three_seconds_give_the_language(engine: WhisperLid, clips: Path, clip: str, lang: str) -> None:
    pcm = clip_pcm(clips / clip, 3.0)
    det = LanguageDetector(engine).detect(RunDetection(pcm, final=True))
    assert det.lang == lang
    assert 0.5 < det.score <= 1.0
    assert det.samples == len(pcm) // 2


def test_probabilities_cover_whisper_languages(engine: WhisperLid, clips: Path) -> None:
    probs = engine.probabilities(clip_pcm(clips / "zh" / "jishu.wav", 1.0))
    langs = [lang for lang, _ in probs]
    assert {"en", "zh", "es", "fr", "hi", "it", "ja", "pl", "pt"} <= set(langs)
    assert sum(p for _, p in probs) == pytest.approx(1.0, abs=0.02)
    assert [p for _, p in probs] == sorted((p for _, p in probs), reverse=True)


def test_30s_window_is_faster_whisper_detect_language(clips: Path) -> None:
    """At window_s=30 the engine computes exactly WhisperModel.detect_language."""
    full = WhisperLid(whisper_base_dir(), cpu_threads=1, window_s=30.0)
    pcm = clip_pcm(clips / "en" / "hello_world.wav")
    ours = full.probabilities(pcm)
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    lang, prob, theirs = full._model.detect_language(audio)
    assert ours[0] == (lang, pytest.approx(prob))
    assert ours[:5] == [(code, pytest.approx(p)) for code, p in theirs[:5]]
