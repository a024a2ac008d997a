"""The real Whisper base LID engine and Silero VAD on pytest-audioeval clips (SPEC §4, §9). No sockets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.models import whisper_base_dir
from services.lid.config import LidConfig
from services.lid.engine import LanguageDetector, WhisperLid, pcm16_to_float
from services.lid.policy import RunDetection
from services.lid.speech import WINDOW_SAMPLES, SileroSpeech, SpeechGate, silero_session

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


def gated(pcm: bytes, cfg: LidConfig) -> SpeechGate:
    """The service's speech gate over `pcm` with the real Silero VAD, fed 100 ms at a time."""
    vad, g = (
        SileroSpeech(silero_session()),
        SpeechGate(cfg.vad_threshold, cfg.min_speech_windows, cfg.pad_windows, 10**6),
    )
    step, rest = 2 * WINDOW_SAMPLES, b""
    for i in range(0, len(pcm), 3200):
        audio = rest + pcm[i : i + 3200]
        whole = len(audio) - len(audio) % step
        for j, p in zip(range(0, whole, step), vad(audio[:whole]), strict=True):
            g.push(audio[j : j + step], p)
        rest = audio[whole:]
    return g


def test_streamed_silero_equals_faster_whisper_whole_clip(clips: Path) -> None:
    from faster_whisper.vad import get_vad_model

    pcm = clip_pcm(clips / "en" / "counting.wav")
    pcm = pcm[: len(pcm) - len(pcm) % (2 * WINDOW_SAMPLES)]
    vad, streamed, at = SileroSpeech(silero_session()), [], 0
    for n in (1, 3, 2, 7, 1000):  # uneven numbers of windows per call
        cut = pcm[at : at + 2 * WINDOW_SAMPLES * n]
        streamed += vad(cut)
        at += len(cut)
    whole = get_vad_model()(pcm16_to_float(pcm))
    assert streamed == pytest.approx(np.ravel(whole).tolist(), abs=1e-5)
    assert max(streamed) > 0.9 and min(streamed) < 0.1


def test_real_vad_finds_no_speech_in_silence_or_noise() -> None:
    rng = np.random.default_rng(1)
    for pcm in (
        bytes(2 * 16000 * 4),  # digital silence
        rng.normal(0, 3000, 16000 * 4).clip(-32768, 32767).astype("<i2").tobytes(),  # white noise
        (8000 * np.sin(2 * np.pi * 440 * np.arange(16000 * 4) / 16000)).astype("<i2").tobytes(),  # a tone
    ):
        g = gated(pcm, LidConfig())
        assert g.speech_samples == 0 and g.first_speech is None


def test_real_vad_keeps_the_speech_after_a_silent_lead_in(clips: Path) -> None:
    pcm = clip_pcm(clips / "en" / "counting.wav")
    g = gated(bytes(2 * 32000) + pcm, LidConfig())
    assert g.first_speech is not None and 32000 <= g.first_speech < 32000 + 8000
    assert 0.8 * len(pcm) // 2 < g.speech_samples <= len(pcm) // 2 + 2 * 3200
