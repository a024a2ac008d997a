"""WebVTT text of ASR finals, the same cues as the SRT writer (orchestrator/transcripts/cues.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from orchestrator.transcripts.cues import DEFAULT_LIMITS, CueLimits, cues

__all__ = ["to_vtt"]


def _vtt_stamp(t: float) -> str:
    ms = max(0, round(t * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def _escape(line: str) -> str:
    """Cue text may not hold `-->`, and `&` and `<` start entities and tags (W3C WebVTT §4.2.2)."""
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(finals: Iterable[dict[str, Any]], limits: CueLimits = DEFAULT_LIMITS) -> str:
    """A WebVTT file of the finals' cues (`WEBVTT` header, then one block per cue)."""
    blocks = [
        f"{_vtt_stamp(c.start_s)} --> {_vtt_stamp(c.end_s)}\n" + "\n".join(_escape(line) for line in c.lines) + "\n"
        for c in cues(finals, limits)
    ]
    return "\n".join(["WEBVTT\n", *blocks])
