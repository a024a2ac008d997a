"""WER as the tests and benchmarks measure it: lowercase, punctuation and hyphens out, small
numbers spelled out (Whisper writes "1-2-3", the references say "one two three")."""

from __future__ import annotations

import re
from collections.abc import Sequence

import jiwer

_NUMBERS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
)


def normalise(text: str, *, spell_numbers: bool = True) -> str:
    """Lowercase, hyphens and punctuation to spaces, whitespace collapsed; with `spell_numbers`,
    standalone 0-20 as words too."""
    text = re.sub(r"[-–—]", " ", text.lower())
    if spell_numbers:
        text = re.sub(r"\b(\d{1,2})\b", _spell, text)
    return " ".join(re.sub(r"[^\w' ]+", " ", text).split())


def _spell(match: re.Match[str]) -> str:
    n = int(match.group(1))
    return _NUMBERS[n] if n <= 20 else match.group(1)


def wer(refs: Sequence[str], hyps: Sequence[str], *, spell_numbers: bool = True) -> float:
    """Corpus WER over normalised texts; an empty hypothesis is scored as the one word "<empty>"
    (the same WER as no words; some jiwer versions refuse empty strings)."""
    norm_refs = [normalise(r, spell_numbers=spell_numbers) for r in refs]
    norm_hyps = [normalise(h, spell_numbers=spell_numbers) or "<empty>" for h in hyps]
    return float(jiwer.wer(norm_refs, norm_hyps))
