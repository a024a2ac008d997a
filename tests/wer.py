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


def normalise(text: str) -> str:
    text = re.sub(r"[-–—]", " ", text.lower())
    text = re.sub(r"\b(\d{1,2})\b", lambda m: _NUMBERS[int(m.group(1))] if int(m.group(1)) <= 20 else m.group(1), text)
    return " ".join(re.sub(r"[^\w' ]+", " ", text).split())


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus WER over normalised texts."""
    return float(jiwer.wer([normalise(r) for r in refs], [normalise(h) for h in hyps]))
