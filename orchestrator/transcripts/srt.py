"""SubRip (SRT) text of ASR finals: the CLI's `--srt` file and the deferred transcript's `srt`. The
cues are cut by duration and characters on the word timings (orchestrator/transcripts/cues.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from orchestrator.transcripts.cues import DEFAULT_LIMITS, CueLimits, cues

__all__ = ["to_srt"]


def _srt_stamp(t: float) -> str:
    ms = max(0, round(t * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def to_srt(finals: Iterable[dict[str, Any]], limits: CueLimits = DEFAULT_LIMITS) -> str:
    """SubRip text of the finals' cues, numbered from 1; finals without text give none."""
    blocks = [
        f"{n}\n{_srt_stamp(c.start_s)} --> {_srt_stamp(c.end_s)}\n" + "\n".join(c.lines) + "\n"
        for n, c in enumerate(cues(finals, limits), start=1)
    ]
    return "\n".join(blocks)
