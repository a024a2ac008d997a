"""Batched partials on the real tiny.en model (WhisperEngine.transcribe_partials, ASR_BATCH_MAX): a
batch returns what decoding each clip alone returns, guards included, item by item."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from common.models import whisper_tiny_en_dir
from services.asr.engines import BatchRequest, Result, WhisperEngine
from tests import corpus

pytestmark = pytest.mark.integration

SR = 16000


@cache
def clips() -> list[np.ndarray]:
    """Four different English sentences in four voices (espeak-ng)."""
    return [
        corpus.synthesize(corpus.Utterance(text, "en", voice))
        for text, voice in zip(corpus.EN_SENTENCES[:4], corpus.EN_VOICES, strict=False)
    ]


def engine(partial_window_s: float = 10.0, min_window_s: float = 3.0) -> WhisperEngine:
    return WhisperEngine(
        whisper_tiny_en_dir(), "whisper-tiny.en", "en", partial_window_s=partial_window_s, min_window_s=min_window_s
    )


def prefixes(seconds: list[float]) -> list[np.ndarray]:
    return [clip[: int(s * SR)] for clip, s in zip(clips(), seconds, strict=True)]


@pytest.fixture(scope="module")
def sized() -> WhisperEngine:
    return engine()


def test_a_batch_of_one_window_size_returns_the_texts_decoded_one_at_a_time(sized: WhisperEngine) -> None:
    """Partials of four sessions, all on the 3 s window: the batch is today's decode of each."""
    pcms = prefixes([1.5, 1.7, 1.8, 1.9])
    batched = sized.transcribe_partials([BatchRequest(p) for p in pcms])
    alone = [sized.transcribe_partial(p) for p in pcms]
    assert batched == alone
    assert sum(bool(r.text) for r in batched) >= 3, batched  # real speech, real words


def test_a_batch_of_different_sizes_decodes_each_on_the_longest_window(sized: WhisperEngine) -> None:
    """Clips of 3, 4 and 5 s windows share the 5 s window (padded): each text is the one that clip
    gets alone on a 5 s window."""
    pcms = prefixes([1.4, 2.2, 2.8, 3.9])
    windows = [sized._window_frames(sized._partial_window, p.size) for p in pcms]
    assert len(set(windows)) > 1
    fixed = engine(partial_window_s=max(windows) / 100, min_window_s=0.0)
    batched = sized.transcribe_partials([BatchRequest(p) for p in pcms])
    assert batched == [fixed.transcribe_partial(p) for p in pcms]
    assert sum(bool(r.text) for r in batched) >= 3, batched


def test_guards_apply_to_each_item_of_a_batch(sized: WhisperEngine) -> None:
    """Digital silence and a quiet hiss in a batch (all on the 3 s window) get what they get alone:
    the silence refused before any decode, the hiss through every score and text guard; the speech
    around them decodes as it does alone."""
    speech = prefixes([1.8, 1.9, 1.9, 1.9])
    silence = np.zeros(3 * SR // 2, np.float32)
    hiss = (np.random.default_rng(7).standard_normal(3 * SR // 2) * 10 ** (-50 / 20)).astype(np.float32)
    pcms = [speech[1], silence, speech[2], hiss]
    batched = sized.transcribe_partials([BatchRequest(p) for p in pcms])
    assert batched == [sized.transcribe_partial(p) for p in pcms]
    assert batched[1] == Result("", "en", "silence")
    assert batched[0].text and batched[2].text


def test_audio_longer_than_the_partial_window_is_decoded_alone(sized: WhisperEngine) -> None:
    """A partial over the partial window takes faster-whisper's own path, alone; the others batch."""
    long = np.concatenate([*clips(), *clips()])[: 11 * SR]
    pcms = [*prefixes([1.5, 1.8, 2.0, 2.2])[:2], long]
    batched = sized.transcribe_partials([BatchRequest(p) for p in pcms])
    assert batched == [sized.transcribe_partial(p) for p in pcms]
    assert batched[2].text
