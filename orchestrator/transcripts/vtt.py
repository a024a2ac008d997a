"""WebVTT text of ASR finals (the batch tool's `.vtt`, the CLI's `--vtt`), made from the SRT writer's
cues (cut on the word timings, orchestrator/transcripts/cues.py) so that both formats always split and
time the text the same way."""

from __future__ import annotations

from typing import Any

from orchestrator.transcripts.srt import to_srt

__all__ = ["srt_to_vtt", "to_vtt"]


def _escape(text: str) -> str:
    # Cue text is HTML-like in WebVTT: & and < start entities and tags; "-->" may not appear in it.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def srt_to_vtt(srt: str) -> str:
    """The SubRip cues of `srt` as a WebVTT file: `WEBVTT` header, `.` before milliseconds, escaped text."""
    out = ["WEBVTT\n"]
    for block in srt.strip().split("\n\n"):
        lines = block.split("\n")
        if len(lines) < 3 or "-->" not in lines[1]:
            continue
        ident, timing, text = lines[0], lines[1].replace(",", "."), lines[2:]
        out.append("\n".join([ident, timing, *(_escape(t) for t in text)]) + "\n")
    return "\n".join(out)


def to_vtt(finals: list[dict[str, Any]]) -> str:
    """WebVTT text of the finals (the same cues as `to_srt`)."""
    return srt_to_vtt(to_srt(finals))
