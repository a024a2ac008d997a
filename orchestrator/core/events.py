"""What the stage adapters report to the session core (plain values, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class StageName(StrEnum):
    """The gateway's stages, in the logical order of SPEC §1. The one spelling of a stage's name."""

    VAD = "vad"
    DENOISE = "denoise"
    LID = "lid"
    ASR = "asr"
    COMPRESS = "compress"


@dataclass(frozen=True, slots=True)
class SpeechBoundary:
    """VAD found speech starting or ending at `pts_ns` on the session timeline."""

    kind: Literal["start", "end"]
    pts_ns: int


@dataclass(frozen=True, slots=True)
class RecordReady:
    url: str
    duration_s: float
    bytes: int
    codec: str
    status: str


@dataclass(frozen=True, slots=True)
class RecordPending:
    """The archive failed, but the gateway keeps the session's audio in its spool and hands it to
    an archive member when one answers; `record_url` may still come (docs/storage.md)."""

    message: str


@dataclass(frozen=True, slots=True)
class LangDetected:
    """The LID service's answer (`und` when it cannot tell); the session decides what it means."""

    lang: str
    score: float


@dataclass(frozen=True, slots=True)
class TranscriptWord:
    """One word of a transcript, its times in seconds on the session timeline; `confidence` 0..1, or
    None when the engine gives none."""

    word: str
    start_s: float
    end_s: float
    confidence: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"word": self.word, "start": round(self.start_s, 3), "end": round(self.end_s, 3)}
        if self.confidence is not None:
            out["confidence"] = round(self.confidence, 4)
        return out


@dataclass(frozen=True, slots=True)
class Transcript:
    """An ASR result: `final` False for a partial."""

    final: bool
    text: str
    start_s: float
    end_s: float
    lang: str = ""
    from_finalize: bool = False  # the final answering the client's `finalize`
    # The ASR pool whose stream produced it: for the gateway's metrics only (not sent, not compared).
    pool: str = field(default="", compare=False)
    words: tuple[TranscriptWord, ...] = ()  # when the engine gives word timings
    confidence: float | None = None  # the utterance's, 0..1, when the engine gives one

    def to_event(self, flow_id: str | None) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": "asr_final" if self.final else "asr_partial",
            "flowId": flow_id,
            "text": self.text,
            "ts": [round(self.start_s, 3), round(self.end_s, 3)],
        }
        if self.final:
            event["lang"] = self.lang
            if self.from_finalize:
                event["from_finalize"] = True
        if self.words:
            event["words"] = [w.to_json() for w in self.words]
        if self.confidence is not None:
            event["confidence"] = round(self.confidence, 4)
        return event


@dataclass(frozen=True, slots=True)
class StageLatency:
    stage: StageName
    ms: float


@dataclass(frozen=True, slots=True)
class StageDone:
    """The stage has answered everything it will for this session."""

    stage: StageName


@dataclass(frozen=True, slots=True)
class StageFailed:
    """The stage is unavailable for this session; the session goes on without it."""

    stage: StageName
    message: str


@dataclass(frozen=True, slots=True)
class LanguageDecided:
    """To the ASR stage: the session's language is settled. `lang` "" means none (the default route;
    the engine detects the language itself)."""

    lang: str
    pool: str = ""


@dataclass(frozen=True, slots=True)
class Finalize:
    """To the ASR stage: the client sent `finalize`; close the open utterance at `pts_ns` (the end of
    the audio it had sent) and answer its final now."""

    pts_ns: int


# What the session sends to a running stage (through the driver): the ASR stage hears the VAD's
# boundaries (its endpoints), the client's finalize and the language decision.
StageInput = SpeechBoundary | Finalize | LanguageDecided


StageEvent = (
    SpeechBoundary | RecordReady | RecordPending | LangDetected | Transcript | StageLatency | StageDone | StageFailed
)
