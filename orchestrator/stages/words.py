"""The words of an ASR event as the session core's `TranscriptWord`s (the live stage and the
deferred transcript both read them)."""

from __future__ import annotations

from orchestrator.core.events import TranscriptWord
from proto import asr_pb2


def words_of(ev: asr_pb2.AsrEvent) -> tuple[TranscriptWord, ...]:
    """The event's words; times already on the session timeline (services/asr/session.py)."""
    return tuple(
        TranscriptWord(w.word, w.start, w.end, w.confidence if w.HasField("confidence") else None) for w in ev.words
    )
