"""What the stage adapters report to the session core (plain values, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


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
class LangDetected:
    lang: str
    score: float
    source: str = "lid"  # "lid": the LID service; "hint": the client's user_lang_pref
    pool: str = ""  # the ASR pool the language routes to


@dataclass(frozen=True, slots=True)
class Transcript:
    """An ASR result: `final` False for a partial."""

    final: bool
    text: str
    start_s: float
    end_s: float
    lang: str = ""

    def to_event(self, flow_id: str | None) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": "asr_final" if self.final else "asr_partial",
            "flowId": flow_id,
            "text": self.text,
            "ts": [round(self.start_s, 3), round(self.end_s, 3)],
        }
        if self.final:
            event["lang"] = self.lang
        return event


@dataclass(frozen=True, slots=True)
class StageLatency:
    stage: str
    ms: float


@dataclass(frozen=True, slots=True)
class StageDone:
    """The stage has answered everything it will for this session."""

    stage: str


@dataclass(frozen=True, slots=True)
class StageFailed:
    """The stage is unavailable for this session; the session goes on without it."""

    stage: str
    message: str


StageEvent = SpeechBoundary | RecordReady | LangDetected | Transcript | StageLatency | StageDone | StageFailed
