"""Word timings and confidences of a decode (issue 14 item 1), from either engine.

Times here are seconds from the first sample of the decoded audio; the session moves them onto the
session timeline (`Word.shifted`). Whisper's come from cross-attention alignment (faster-whisper's
`find_alignment`, the `word_timestamps=True` path) with its word probability as the confidence;
pocketsphinx's from its own segmentation (`Decoder.seg()`, 10 ms frames), without a confidence: its
default search leaves every word posterior at log 0 (measured), which would read as certainty.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# faster-whisper's TranscriptionOptions defaults: punctuation glued to the next / previous word.
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SPHINX_FRAME_S = 0.01
# pocketsphinx's fillers and sentence markers: not words of the transcript.
_SPHINX_FILLERS = ("<s>", "</s>", "<sil>", "[NOISE]", "[SPEECH]", "[LAUGH]", "[COUGH]", "[BREATH]")


@dataclass(frozen=True)
class Word:
    word: str
    start_s: float
    end_s: float
    confidence: float | None  # 0..1, None when the engine gives none

    def shifted(self, offset_s: float) -> Word:
        return Word(self.word, self.start_s + offset_s, self.end_s + offset_s, self.confidence)


def clamp(words: Iterable[Word], duration_s: float) -> tuple[Word, ...]:
    """Words inside [0, duration_s], each ending no earlier than it starts, in order."""
    out: list[Word] = []
    last = 0.0
    for w in words:
        start = min(max(w.start_s, last), duration_s)
        end = min(max(w.end_s, start), duration_s)
        confidence = None if w.confidence is None else round(min(max(float(w.confidence), 0.0), 1.0), 4)
        out.append(Word(w.word, round(start, 3), round(end, 3), confidence))
        last = start
    return tuple(out)


def from_alignment(alignment: Sequence[dict[str, Any]], offset_s: float = 0.0) -> list[Word]:
    """faster-whisper's alignment entries (punctuation already merged) as words; empty entries
    (punctuation merged into a neighbour) are dropped."""
    return [
        Word(str(a["word"]).strip(), float(a["start"]) + offset_s, float(a["end"]) + offset_s, float(a["probability"]))
        for a in alignment
        if str(a["word"]).strip()
    ]


def align(
    whisper: Any, tokenizer: Any, tokens: Sequence[Sequence[int]], encoded: Any, frames: Sequence[int]
) -> list[list[Word]]:
    """Word timings of each clip's text tokens on its encoder output (batch in `encoded`), as
    faster-whisper's `word_timestamps=True` computes them. `frames`: each clip's mel frames."""
    from faster_whisper.transcribe import merge_punctuations

    text_tokens = [[t for t in seq if t < tokenizer.eot] for seq in tokens]
    if not any(text_tokens):
        return [[] for _ in tokens]
    alignments = whisper.find_alignment(tokenizer, text_tokens, encoded, list(frames))
    out = []
    for alignment in alignments:
        merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
        out.append(from_alignment(alignment))
    return out


def utterance_confidence(avg_logprob: float | None) -> float | None:
    """The utterance's confidence: exp of Whisper's mean token log-probability (the score its own
    fallback and our guards read), None when the engine gives none."""
    return None if avg_logprob is None else round(min(max(math.exp(avg_logprob), 0.0), 1.0), 4)


def from_sphinx(segments: Iterable[Any]) -> list[Word]:
    """pocketsphinx's segmentation as words: fillers dropped, `word(2)` pronunciation variants named
    as the word."""
    out = []
    for seg in segments:
        word = str(seg.word)
        if word in _SPHINX_FILLERS or (word.startswith("[") and word.endswith("]")):
            continue
        base = word.split("(", 1)[0] if word.endswith(")") else word
        start, end = seg.start_frame * SPHINX_FRAME_S, (seg.end_frame + 1) * SPHINX_FRAME_S
        out.append(Word(base, start, end, None))
    return out


SNAP_FRAME_S = 0.01
SNAP_BELOW_PEAK_DB = 30.0  # a frame this far under the clip's loudest is a pause between words


def snap_to_speech(words: Sequence[Word], pcm: np.ndarray, sample_rate: int = 16_000) -> tuple[Word, ...]:
    """Cross-attention boundaries sit anywhere in the pause between two words (and the first word
    often starts at 0): move each boundary onto the speech it belongs to, as subtitle aligners do.
    A start inside a pause moves forward to the first loud 10 ms frame of its word, one inside
    speech back to where that speech began (never before the previous word's end); an end alike
    (never past the next word's start). A
    word without a loud frame keeps its times. Errors before and after: docs/performance.md."""
    hop = int(sample_rate * SNAP_FRAME_S)
    n = pcm.size // hop
    if not words or n == 0:
        return tuple(words)
    energy = np.square(pcm[: n * hop].astype(np.float64)).reshape(n, hop).mean(axis=1)
    db = 10 * np.log10(energy + 1e-12)
    loud = db > db.max() - SNAP_BELOW_PEAK_DB
    out: list[Word] = []
    for i, w in enumerate(words):
        lo = max(round(w.start_s / SNAP_FRAME_S), 0)
        hi = min(max(round(w.end_s / SNAP_FRAME_S), lo + 1), n)
        inside = np.flatnonzero(loud[lo:hi])
        if lo >= n or inside.size == 0:
            out.append(w)
            continue
        floor = round(out[-1].end_s / SNAP_FRAME_S) if out else 0
        ceiling = round(words[i + 1].start_s / SNAP_FRAME_S) if i + 1 < len(words) else n
        start, end = lo + int(inside[0]), lo + int(inside[-1]) + 1
        if start == lo:  # starts in speech: back to where it began
            while start > floor and loud[start - 1]:
                start -= 1
        if end == hi:  # ends in speech: on to where it stops, never into the next word
            while end < min(ceiling, n) and loud[end]:
                end += 1
        start = max(start, floor)  # words never overlap
        end = max(end, start)
        out.append(Word(w.word, round(start * SNAP_FRAME_S, 3), round(end * SNAP_FRAME_S, 3), w.confidence))
    return tuple(out)
