"""SubRip (SRT) text of ASR finals: the CLI's `--srt` file and the deferred transcript's `srt`."""

from __future__ import annotations

from typing import Any

__all__ = ["to_srt"]


def _srt_stamp(t: float) -> str:
    ms = max(0, round(t * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def to_srt(finals: list[dict[str, Any]]) -> str:
    """SubRip text of the finals, numbered from 1; finals without text are skipped."""
    blocks: list[str] = []
    for f in finals:
        text = str(f["text"]).strip()
        if not text:
            continue
        start, end = (float(x) for x in f["ts"])
        blocks.append(f"{len(blocks) + 1}\n{_srt_stamp(start)} --> {_srt_stamp(max(start, end))}\n{text}\n")
    return "\n".join(blocks)
