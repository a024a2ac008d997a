"""Subtitle cues from ASR finals, as a subtitle tool cuts them: pure functions, no I/O (the SRT and
WebVTT writers, the CLI, the deferred transcript and the batch tool share them).

A final is `{"text", "ts": [start, end], "words"?: [{"word", "start", "end", ...}]}`, times in seconds
on the session timeline. With word timings a final is cut between words so that each cue lasts at
most `max_duration_s` and its text fits `max_lines` lines of `max_line_chars` characters; a cue also
ends after a sentence's last word once it holds half a line, and before a pause of `pause_s` or more.
A cue runs from its first word's start to its last word's end. Without word timings (an engine
without them, an older stored transcript) the text is cut the same way and the final's span shared
out by characters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_LIMITS", "Cue", "CueLimits", "cues", "wrap"]

SENTENCE_END = (".", "?", "!", "…", "。", "？", "！")


@dataclass(frozen=True)
class CueLimits:
    """Common subtitle guidelines (Netflix, BBC): 42 characters a line, 2 lines, at most 7 s a cue."""

    max_duration_s: float = 7.0
    max_line_chars: int = 42
    max_lines: int = 2
    pause_s: float = 1.0  # a silence this long between two words starts a new cue

    def __post_init__(self) -> None:
        if self.max_duration_s <= 0 or self.max_line_chars < 1 or self.max_lines < 1 or self.pause_s <= 0:
            raise ValueError(f"cue limits must be positive: {self}")


DEFAULT_LIMITS = CueLimits()


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    lines: tuple[str, ...]


@dataclass(frozen=True)
class _Word:
    text: str
    start_s: float
    end_s: float


def wrap(words: Sequence[str], max_chars: int) -> list[str]:
    """The words on the fewest lines of at most `max_chars` (a longer word has a line of its own),
    two lines balanced as subtitle tools do (the break that makes the longer line shortest)."""
    greedy: list[str] = []
    for word in words:
        if greedy and len(greedy[-1]) + 1 + len(word) <= max_chars:
            greedy[-1] += " " + word
        else:
            greedy.append(word)
    if len(greedy) != 2:
        return greedy
    best = greedy
    for cut in range(1, len(words)):
        lines = [" ".join(words[:cut]), " ".join(words[cut:])]
        if max(map(len, lines)) < max(map(len, best)):
            best = lines
    return best


def _fits(words: Sequence[_Word], limits: CueLimits) -> bool:
    texts = [w.text for w in words]
    lines = wrap(texts, limits.max_line_chars)
    too_long = any(len(line) > limits.max_line_chars and " " in line for line in lines)
    return len(lines) <= limits.max_lines and not too_long


def _timed_words(final: dict[str, Any]) -> list[_Word]:
    """The final's words: its own timings, else its text's words spread over `ts` by characters."""
    start, end = (float(x) for x in final["ts"])
    end = max(start, end)
    timed = [
        _Word(str(w["word"]).strip(), float(w["start"]), max(float(w["start"]), float(w["end"])))
        for w in final.get("words") or ()
        if str(w["word"]).strip()
    ]
    if timed:
        return timed
    texts = str(final["text"]).split()
    total = max(len(" ".join(texts)), 1)
    out, at = [], 0
    for t in texts:
        out.append(_Word(t, start + (end - start) * at / total, start + (end - start) * (at + len(t)) / total))
        at += len(t) + 1
    return out


def _chars(words: Sequence[_Word]) -> int:
    return sum(len(w.text) + 1 for w in words) - 1


def _split(words: list[_Word], limits: CueLimits) -> Iterable[list[_Word]]:
    cue: list[_Word] = []
    for word in words:
        if cue:
            candidate = [*cue, word]
            pause = word.start_s - cue[-1].end_s >= limits.pause_s
            too_long = word.end_s - cue[0].start_s > limits.max_duration_s
            sentence_done = cue[-1].text.endswith(SENTENCE_END) and _chars(cue) >= limits.max_line_chars // 2
            if sentence_done or pause or too_long or not _fits(candidate, limits):
                yield cue
                cue = []
        cue.append(word)
    if cue:
        yield cue


def cues(finals: Iterable[dict[str, Any]], limits: CueLimits = DEFAULT_LIMITS) -> list[Cue]:
    """The cues of the finals in order; finals without text give none. Each cue stays within one
    final; a cue never ends before it starts."""
    out: list[Cue] = []
    for final in finals:
        if not str(final["text"]).strip():
            continue
        for group in _split(_timed_words(final), limits):
            lines = tuple(wrap([w.text for w in group], limits.max_line_chars))
            out.append(Cue(group[0].start_s, max(group[0].start_s, group[-1].end_s), lines))
    return out
