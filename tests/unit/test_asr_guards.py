"""Hallucination guards (services/asr/guards.py): each guard on a fake recognizer, then the real
engines on the non-speech set (tests/nonspeech.py)."""

from __future__ import annotations

import numpy as np
import pytest

from common.envconf import ConfigError, load_env
from common.models import whisper_tiny_en_dir
from services.asr import guards
from services.asr.config import AsrConfig
from services.asr.engines import SphinxEngine, WhisperEngine
from services.asr.guards import GuardConfig, Scores
from tests.nonspeech import NONSPEECH

pytestmark = pytest.mark.unit
SR = 16_000
CONFIG = GuardConfig()
SPEECH_SCORES = Scores(no_speech_prob=0.05, avg_logprob=-0.2)


class FakeRecognizer:
    """Answers a fixed (text, scores) whatever the audio, like a model hallucinating on it; the
    decode goes through the guards as the engines do theirs."""

    def __init__(self, text: str, scores: Scores = SPEECH_SCORES) -> None:
        self.text, self.scores, self.decodes = text, scores, 0

    def recognize(self, pcm: np.ndarray) -> tuple[str, str | None]:
        if guards.is_silent(pcm, CONFIG):
            return "", "silence"  # refused before any decode
        self.decodes += 1
        refused = guards.check(self.text, pcm.size / SR, self.scores, CONFIG)
        return ("" if refused else self.text), refused


def speechlike(seconds: float) -> np.ndarray:
    return (0.1 * np.sin(2 * np.pi * 200 * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def test_plain_speech_text_passes_every_guard() -> None:
    fake = FakeRecognizer("The quick brown fox jumps over the lazy dog.")
    assert fake.recognize(speechlike(2.9)) == ("The quick brown fox jumps over the lazy dog.", None)


def test_silence_is_not_decoded() -> None:
    fake = FakeRecognizer("I am a man who is a man")
    assert fake.recognize(np.zeros(4 * SR, np.float32)) == ("", "silence")
    assert fake.recognize(NONSPEECH["dither_-80"](1.0)) == ("", "silence")
    assert fake.decodes == 0
    assert guards.rms_dbfs(np.zeros(0, np.float32)) == -np.inf


@pytest.mark.parametrize(
    ("text", "scores", "guard"),
    [
        ("Thank you.", Scores(no_speech_prob=0.83, avg_logprob=-0.77), "no_speech"),  # babble, measured
        ("I'm going to go to the ground.", Scores(no_speech_prob=0.3, avg_logprob=-1.78), "logprob"),
        ("1, 2, 3, 4... " * 12, Scores(0.05, -0.2), "compression"),
        ("I am a man who is a man who is a man who is a man who is a man", Scores(0.05, -0.2), "repeats"),
        ("Beep Beep Beep Beep Beep", Scores(0.05, -0.04), "repeats"),
        ("Good morning everyone and welcome to the show tonight", Scores(0.05, -0.2), "rate"),  # 52 chars in 1 s
    ],
)
def test_each_guard_refuses_its_hallucination(text: str, scores: Scores, guard: str) -> None:
    audio_s = 1.0 if guard == "rate" else 4.0
    refused_text, refused = FakeRecognizer(text, scores).recognize(speechlike(audio_s))
    assert (refused_text, refused) == ("", guard)


def test_punctuation_only_is_empty_and_missing_scores_skip_their_guard() -> None:
    assert guards.check(". . . . .", 4.0, Scores(), CONFIG) == "empty"
    assert guards.check("", 4.0, Scores(), CONFIG) is None
    assert guards.check("hello there", 1.0, Scores(None, None), CONFIG) is None  # pocketsphinx: no scores


def test_guard_measures() -> None:
    assert guards.max_ngram_run("a b c") == 1
    assert guards.max_ngram_run("one two one two one two one two") == 4
    assert guards.max_ngram_run("the the the") == 3
    assert guards.compression_ratio("The quick brown fox jumps over the lazy dog.") < 2.4
    assert guards.compression_ratio("1, 2, 3, 4... " * 20) > 2.4


def test_guard_config_from_env() -> None:
    config = load_env(AsrConfig, {"ASR_GUARD_NO_SPEECH_PROB": "0.8", "ASR_GUARD_MAX_CHARS_PER_S": "30"}).guard
    assert (config.no_speech_prob, config.max_chars_per_s, config.min_avg_logprob) == (0.8, 30.0, -1.5)
    with pytest.raises(ConfigError):
        GuardConfig(no_speech_prob=0.0)
    with pytest.raises(ConfigError):
        GuardConfig(max_ngram_repeats=0)


@pytest.fixture(scope="module")
def tiny() -> WhisperEngine:
    return WhisperEngine(whisper_tiny_en_dir(), "whisper-tiny.en", "en", partial_window_s=10.0, min_window_s=3.0)


@pytest.mark.parametrize("name", sorted(NONSPEECH))
def test_whisper_gives_no_text_for_non_speech(tiny: WhisperEngine, name: str) -> None:
    """Each item at 1 s (a partial) and 4 s (a final, on Whisper's 30 s path)."""
    short, long = NONSPEECH[name](1.0), NONSPEECH[name](4.0)
    assert tiny.transcribe_partial(short).text == ""
    assert tiny.transcribe(long).text == ""
    stream = tiny.open_stream()
    stream.accept(short)
    assert stream.partial().text == ""


@pytest.fixture(scope="module")
def sphinx() -> SphinxEngine:
    return SphinxEngine()


@pytest.mark.parametrize("name", ["silence", "dither_-80"])
def test_sphinx_gives_no_text_for_silence(sphinx: SphinxEngine, name: str) -> None:
    """pocketsphinx has no no-speech score: on noise it can still answer a short word (documented);
    without VAD endpoints only silence, repeats, rate and compression guard it."""
    stream = sphinx.open_stream()
    stream.accept(NONSPEECH[name](4.0))
    assert stream.partial().text == ""
    assert stream.finish().text == ""
