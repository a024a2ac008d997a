"""Whisper decoding on a shorter encoder window (ASR_WINDOW_S; figures in docs/services/asr.md).

Whisper always encodes a 30 s window (3000 mel frames, zero-padded), so a 1-3 s utterance pays the
encoder cost of 30 s. CTranslate2's Whisper encoder also takes fewer frames (the positional embedding
is cut to the frames given), as the LID service does (services/lid/engine.py). `WindowedDecoder` does
what faster-whisper's `WhisperModel.transcribe` does for one short segment (greedy or beam search at
temperature 0, no timestamps, the default suppressed tokens and no-speech rule), but on features
padded only to `window_s`. Audio at least as long as the window is not its business: the engine
keeps faster-whisper's own path for it.

Short windows can make the decoder loop ("1, 2, 3, 4... 1, 2, 3, 4..." on a 5 s window, measured):
a text whose gzip compression ratio is above faster-whisper's own threshold (2.4) is refused
(`decode` returns None) and the caller decodes again on the normal path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from services.asr import words as word_timing
from services.asr.guards import compression_ratio  # noqa: F401  (re-exported: tests, benchmarks)
from services.asr.words import Word

HOP_SAMPLES = 160  # 10 ms at 16 kHz: one mel frame
# faster-whisper's TranscriptionOptions defaults, as WhisperEngine leaves them.
MAX_INITIAL_TIMESTAMP_S = 1.0


def window_frames(window_s: float, max_frames: int = 3000) -> int:
    """Mel frames of a `window_s` window (0 = off), never more than Whisper's own 30 s."""
    return 0 if window_s <= 0 else min(round(window_s * 100), max_frames)


class WindowedDecoder:
    """One-segment Whisper decode on a shorter encoder window, on a loaded faster-whisper model."""

    def __init__(self, whisper: Any, window_s: float, beam_size: int = 1) -> None:
        from faster_whisper.tokenizer import Tokenizer  # heavy import, only where the model is used
        from faster_whisper.transcribe import get_suppressed_tokens

        self._whisper = whisper
        self._tokenizer_cls = Tokenizer
        self._suppressed = get_suppressed_tokens
        self.frames = window_frames(window_s, whisper.feature_extractor.nb_max_frames)
        self._beam_size = beam_size

    def fits(self, samples: int) -> bool:
        """True when `samples` of audio are shorter than the window (then `decode` applies)."""
        return 0 < samples < self.frames * HOP_SAMPLES  # empty audio: the normal path, as before

    def frames_for(self, samples: int, floor_frames: int, margin_s: float = 1.0) -> int:
        """Window sized to the audio: its length plus `margin_s`, rounded up to whole seconds, at
        least `floor_frames`, at most this decoder's window."""
        wanted = math.ceil(samples / HOP_SAMPLES / 100 + margin_s) * 100
        return min(max(wanted, floor_frames), self.frames)

    def decode(
        self,
        audio: np.ndarray,
        language: str | None,
        hotwords: str | None = None,
        frames: int = 0,
        max_tokens: int = 0,
        word_timestamps: bool = False,
    ) -> Decoded:
        """One decode of a clip shorter than `frames` mel frames (default: this decoder's window);
        `language=None` detects it; `max_tokens` (0 = Whisper's 448) stops a repetition loop early
        (a text that reaches it is `truncated`). Whisper's own no-speech rule is left to the guards."""
        return self.decode_batch([audio], language, hotwords, frames, [max_tokens], word_timestamps)[0]

    def decode_batch(
        self,
        audios: Sequence[np.ndarray],
        language: str | None,
        hotwords: str | None = None,
        frames: int = 0,
        max_tokens: Sequence[int] = (),
        word_timestamps: bool = False,
    ) -> list[Decoded]:
        """`decode` of several clips in one encoder call and one `generate` call (issue 9: four
        prompts decode in 31 ms each against 71 ms alone): every clip is padded to the same
        `frames`. Each clip keeps its own token budget (`max_tokens[i]`, 0 = Whisper's 448): the batch
        runs to the largest and a clip's tokens are cut at its own, so a clip that would have stopped
        there alone ends with the same tokens, `truncated`. `word_timestamps` aligns each text's
        tokens on the same encoder output (one more decoder pass, docs/performance.md)."""
        frames = frames or self.frames
        budgets = list(max_tokens) or [0] * len(audios)
        if len(budgets) != len(audios) or not audios:
            raise ValueError(f"{len(audios)} clips, {len(budgets)} token budgets")
        for audio in audios:
            if not 0 < audio.size < frames * HOP_SAMPLES:
                raise ValueError(f"{audio.size} samples do not fit a {frames}-frame window")
        fw = self._whisper
        segments, contents = [], []
        for audio in audios:
            features = fw.feature_extractor(audio)
            content = features[:, : max(features.shape[-1] - 1, 0)]  # as transcribe(): the last frame is padding
            contents.append(content)
            segments.append(np.pad(content, ((0, 0), (0, frames - content.shape[-1]))))
        encoded = fw.encode(segments[0] if len(segments) == 1 else np.stack(segments))
        if language is None:
            languages = [r[0][0][2:-2] for r in fw.model.detect_language(encoded)]  # "<|de|>" -> "de"
        else:
            languages = [language] * len(audios)
        tokenizers = [
            self._tokenizer_cls(fw.hf_tokenizer, fw.model.is_multilingual, "transcribe", lang) for lang in languages
        ]
        prompts = [fw.get_prompt(t, [], without_timestamps=True, hotwords=hotwords) for t in tokenizers]
        # Measured (ctranslate2 4.8, tiny.en): generate stops at max_length / 2 new tokens.
        limits = [
            min(len(p) + 2 * m, fw.max_length) if m else fw.max_length for p, m in zip(prompts, budgets, strict=True)
        ]
        results = fw.model.generate(
            encoded,
            prompts,
            beam_size=self._beam_size,
            patience=1.0,
            length_penalty=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            max_length=max(limits),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppressed(tokenizers[0], [-1]),
            max_initial_timestamp_index=round(MAX_INITIAL_TIMESTAMP_S / fw.time_precision),
        )
        decoded = []
        kept_tokens = []
        for result, tokenizer, lang, budget in zip(results, tokenizers, languages, budgets, strict=True):
            tokens = result.sequences_ids[0]
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            truncated = bool(budget) and len(tokens) >= budget
            text = tokenizer.decode(tokens[:budget] if truncated else tokens).strip()
            kept_tokens.append([] if truncated else list(tokens))
            decoded.append(Decoded(text, lang, float(result.no_speech_prob), float(avg_logprob), frames, truncated))
        if word_timestamps:
            content_frames = [min(s.shape[-1], frames) for s in contents]
            timed = self._align(encoded, tokenizers, kept_tokens, content_frames)
            decoded = [replace(d, words=w) for d, w in zip(decoded, timed, strict=True)]
        return decoded

    def align(self, audio: np.ndarray, tokens: Sequence[int], language: str) -> tuple[Word, ...]:
        """Word timings of `tokens` (the text of a decode on faster-whisper's own path) on `audio`
        (at most this window): one more encoder pass and the alignment. faster-whisper's own
        `word_timestamps=True` would change that path's text (it seeks to the last word's end and
        decodes the rest again, measured: a hallucinated "Okay." after a clip)."""
        fw = self._whisper
        features = fw.feature_extractor(audio)
        content = features[:, : min(max(features.shape[-1] - 1, 0), self.frames)]
        encoded = fw.encode(np.pad(content, ((0, 0), (0, self.frames - content.shape[-1]))))
        tokenizer = self._tokenizer_cls(fw.hf_tokenizer, fw.model.is_multilingual, "transcribe", language)
        words = word_timing.align(fw, tokenizer, [tokens], encoded, [content.shape[-1]])[0]
        return word_timing.clamp(words, audio.size / (HOP_SAMPLES * 100))

    def _align(
        self,
        encoded: Any,
        tokenizers: Sequence[Any],
        tokens: Sequence[Sequence[int]],
        frames: Sequence[int],
    ) -> list[tuple[Word, ...]]:
        """Each clip's word timings, aligned alone on its own rows of the batch's encoder output: a
        batched alignment pads the shorter texts and moves their times and probabilities (measured),
        and a clip's words must not depend on who shared its batch. A clip without text gets none."""
        import ctranslate2

        fw = self._whisper
        batch = np.asarray(encoded) if len(tokens) > 1 else None
        timed = [
            word_timing.align(
                fw,
                tokenizers[i],
                [tokens[i]],
                encoded if batch is None else ctranslate2.StorageView.from_array(batch[i : i + 1]),
                [frames[i]],
            )[0]
            for i in range(len(tokens))
        ]
        return [word_timing.clamp(words, f / 100) for words, f in zip(timed, frames, strict=True)]


@dataclass(frozen=True)
class Decoded:
    text: str
    lang: str
    no_speech_prob: float
    avg_logprob: float
    frames: int
    truncated: bool = False  # stopped at max_tokens: more text than the audio can hold
    words: tuple[Word, ...] = ()  # with word_timestamps: seconds from the clip's first sample
