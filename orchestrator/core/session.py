"""The session as a sans-I/O state machine (STYLE §1).

Feed it what the client sent (`receive_text`, `receive_binary`, `receive_disconnect`), the clock
(`tick`) and what the stages found (`stage_event`); read back the events for the client
(`events_to_send`), the audio for the stages (`audio_to_stages`), whether the audio has ended
(`audio_ended`) and, last, how to close the socket (`close`). Nothing here awaits or does I/O.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from orchestrator.core.events import (
    LangDetected,
    RecordReady,
    SpeechBoundary,
    StageDone,
    StageEvent,
    StageFailed,
    StageLatency,
    Transcript,
)
from orchestrator.core.protocol import (
    CHANNELS,
    CODEC,
    FATAL_CLOSE,
    SAMPLE_RATE,
    Close,
    ErrorCode,
    ProtocolError,
    StartRequest,
    error_event,
    parse_control,
    parse_start,
)
from orchestrator.core.reframer import AudioBlock, Reframer

UNAVAILABLE_CODE = {
    "vad": ErrorCode.VAD_UNAVAILABLE,
    "denoise": ErrorCode.DENOISE_UNAVAILABLE,
    "lid": ErrorCode.LID_UNAVAILABLE,
    "asr": ErrorCode.ASR_UNAVAILABLE,
    "compress": ErrorCode.ARCHIVE_UNAVAILABLE,
}

# Which `return` family each event type belongs to; types not listed are always sent.
FAMILY_OF = {
    "lid": "lid",
    "asr_partial": "asr",
    "asr_final": "asr",
    "record_url": "record_url",
    "metrics": "metrics",
    "vad": "vad",
}


class State(StrEnum):
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    DRAINING = "draining"  # audio ended; waiting for the stages' last answers
    CLOSED = "closed"


@dataclass(frozen=True)
class SessionConfig:
    """Per-session limits (SPEC §2, §4, §5)."""

    frame_ms: int = 20
    max_frame_bytes: int = 64 * 1024
    flush_idle_s: float = 3.0
    start_timeout_s: float = 10.0
    max_session_s: float = 4 * 3600.0
    partial_interval_ms: int = 250
    stages: tuple[str, ...] = ("vad", "compress")
    # A session whose ASR is unavailable goes on as record-only and is transcribed later.
    deferred_transcripts: bool = False


@dataclass
class _Figures:
    bytes_in: int = 0
    messages_in: int = 0
    speech_s: float = 0.0
    segments: int = 0
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)


class Session:
    """One client stream from `start` to `end`."""

    def __init__(self, config: SessionConfig, now: float, new_flow_id: str) -> None:
        self.config = config
        self.state = State.AWAITING_START
        self.flow_id: str | None = None
        self.start: StartRequest | None = None
        self.end_reason: str | None = None
        self.close: tuple[Close, str] | None = None
        self.pending_stages: set[str] = set()
        self.failed_stages: set[str] = set()
        self.record_url: str | None = None
        self.lang = ""
        self._new_flow_id = new_flow_id
        self._opened_at = now
        self._started_at = now
        self._last_audio_at = now
        self._reframer = Reframer(config.frame_ms, SAMPLE_RATE)
        self._events: list[dict[str, Any]] = []
        self._audio: list[AudioBlock] = []
        self._fatal: tuple[ErrorCode, str] | None = None
        self._speech_open_at: float | None = None
        self._figures = _Figures()
        # PartialThrottle (SPEC §2): at most one asr_partial per interval, the newest text wins.
        self._last_partial_at: float | None = None
        self._pending_partial: Transcript | None = None

    # ----- inputs from the client -----

    def receive_text(self, text: str, now: float) -> None:
        if self.state in (State.DRAINING, State.CLOSED):
            return
        if len(text) > self.config.max_frame_bytes:
            self._fail(
                ErrorCode.FRAME_TOO_LARGE,
                f"control frame of {len(text)} bytes exceeds {self.config.max_frame_bytes}",
            )
            return
        try:
            msg = parse_control(text)
            kind = msg["type"]
            if kind == "start":
                self._on_start(msg, now)
            elif kind == "flush":
                if self.state is State.AWAITING_START:
                    raise ProtocolError(ErrorCode.FLUSH_BEFORE_START, "flush before start")
                self._end_audio("flush")
            else:
                raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown control type {kind!r}")
        except ProtocolError as exc:
            self._fail(exc.code, exc.message)

    def receive_binary(self, data: bytes, now: float) -> None:
        if self.state is State.CLOSED:
            return
        if self.state is State.DRAINING:
            if self.end_reason == "flush":
                self._emit(
                    error_event(self.flow_id, ErrorCode.AUDIO_AFTER_FLUSH, "audio after flush is ignored", fatal=False)
                )
            return
        if len(data) > self.config.max_frame_bytes:
            self._fail(
                ErrorCode.FRAME_TOO_LARGE,
                f"binary frame of {len(data)} bytes exceeds {self.config.max_frame_bytes}",
            )
            return
        if self.state is State.AWAITING_START:
            self._fail(ErrorCode.AUDIO_BEFORE_START, "binary audio before the start frame")
            return
        self._figures.bytes_in += len(data)
        self._figures.messages_in += 1
        self._last_audio_at = now
        block = self._reframer.feed(data)
        if block is not None:
            self._audio.append(block)

    def receive_disconnect(self, now: float) -> None:
        """The client went away: flush what was accepted (SPEC §2 auto flush)."""
        if self.state is State.STREAMING:
            self._end_audio("disconnect")
        elif self.state is State.AWAITING_START:
            self._finish(Close.NORMAL, "disconnect")

    def tick(self, now: float) -> None:
        """Timers: held partial, start timeout, idle flush (FLUSH_IDLE_SEC), session length cap."""
        due = self.partial_due_at
        if due is not None and now >= due and self._pending_partial is not None:
            self._send_partial(self._pending_partial, now)
        if self.state is State.AWAITING_START and now - self._opened_at >= self.config.start_timeout_s:
            self._fail(ErrorCode.START_TIMEOUT, f"no start frame within {self.config.start_timeout_s:g} s")
        elif self.state is State.STREAMING:
            if now - self._last_audio_at >= self.config.flush_idle_s:
                self._end_audio("idle")
            elif now - self._started_at >= self.config.max_session_s:
                self._fail(ErrorCode.SESSION_TOO_LONG, f"session exceeds {self.config.max_session_s:g} s")

    def refuse(self, code: ErrorCode, message: str) -> None:
        """Refuse the connection before anything else (capacity, draining)."""
        self._fail(code, message)

    # ----- inputs from the stages -----

    def stage_event(self, event: StageEvent, now: float) -> None:
        if self.state is State.CLOSED:
            return
        if isinstance(event, SpeechBoundary):
            self._on_boundary(event)
        elif isinstance(event, RecordReady):
            self.record_url = event.url
            self._emit(
                {
                    "type": "record_url",
                    "flowId": self.flow_id,
                    "url": event.url,
                    "duration_s": round(event.duration_s, 3),
                    "bytes": event.bytes,
                    "codec": event.codec,
                    "status": event.status,
                }
            )
        elif isinstance(event, LangDetected):
            self.lang = event.lang
            lid = {
                "type": "lid",
                "flowId": self.flow_id,
                "lang": event.lang,
                "score": round(event.score, 4),
                "source": event.source,
            }
            if event.pool:
                lid["pool"] = event.pool
            self._emit(lid)
        elif isinstance(event, Transcript):
            self._on_transcript(event, now)
        elif isinstance(event, StageLatency):
            self._figures.latencies_ms.setdefault(event.stage, []).append(event.ms)
        elif isinstance(event, StageFailed):
            self.failed_stages.add(event.stage)
            code = UNAVAILABLE_CODE.get(event.stage, ErrorCode.INTERNAL_ERROR)
            error = error_event(self.flow_id, code, f"{event.stage}: {event.message}", fatal=False)
            if event.stage == "asr" and self.config.deferred_transcripts:
                # Record-only mode (SPEC §4): the archive goes on; the transcript comes later.
                error["mode"] = "record_only"
                error["transcript_path"] = f"/v1/flows/{self.flow_id}/transcript"
            self._emit(error)
            self._stage_over(event.stage)
        elif isinstance(event, StageDone):
            self._stage_over(event.stage)

    # ----- outputs -----

    def events_to_send(self) -> list[dict[str, Any]]:
        out, self._events = self._events, []
        return out

    def audio_to_stages(self) -> list[AudioBlock]:
        out, self._audio = self._audio, []
        return out

    @property
    def partial_due_at(self) -> float | None:
        """When the held partial may go out, if one is held."""
        if self._pending_partial is None or self._last_partial_at is None:
            return None
        return self._last_partial_at + self.config.partial_interval_ms / 1000.0

    @property
    def audio_ended(self) -> bool:
        return self.state in (State.DRAINING, State.CLOSED) and self.start is not None

    @property
    def needs_deferred_transcript(self) -> bool:
        """The ASR failed for this session but its audio was archived: transcribe it later."""
        return self.config.deferred_transcripts and "asr" in self.failed_stages and self.record_url is not None

    @property
    def audio_s(self) -> float:
        return self._reframer.samples_out / SAMPLE_RATE

    def wants(self, family: str) -> bool:
        return self.start is not None and family in self.start.returns

    # ----- internals -----

    def _on_start(self, msg: dict[str, Any], now: float) -> None:
        if self.state is not State.AWAITING_START:
            raise ProtocolError(ErrorCode.DUPLICATE_START, "start was already received")
        self.start = parse_start(msg, self._new_flow_id)
        self.flow_id = self.start.flow_id
        self.state = State.STREAMING
        self.pending_stages = set(self.config.stages)
        self._started_at = now
        self._last_audio_at = now
        self._emit(
            {
                "type": "ack",
                "flowId": self.flow_id,
                "audio": {
                    "codec": CODEC,
                    "sr": SAMPLE_RATE,
                    "channels": CHANNELS,
                    "chunk_ms": self.start.chunk_ms,
                    "frame_ms": self.config.frame_ms,
                },
                "return": sorted(self.start.returns),
                "limits": {
                    "max_frame_bytes": self.config.max_frame_bytes,
                    "flush_idle_s": self.config.flush_idle_s,
                    "partial_interval_ms": self.config.partial_interval_ms,
                },
            }
        )

    def _on_transcript(self, event: Transcript, now: float) -> None:
        if event.final:
            self._pending_partial = None  # the final supersedes it
            self._emit(event.to_event(self.flow_id))
            return
        if self._last_partial_at is None or now - self._last_partial_at >= self.config.partial_interval_ms / 1000:
            self._send_partial(event, now)
        else:
            self._pending_partial = event

    def _send_partial(self, event: Transcript, now: float) -> None:
        self._pending_partial = None
        self._last_partial_at = now
        self._emit(event.to_event(self.flow_id))

    def _on_boundary(self, event: SpeechBoundary) -> None:
        ts = event.pts_ns / 1e9
        if event.kind == "start":
            self._speech_open_at = ts
        elif self._speech_open_at is not None:
            self._figures.speech_s += max(0.0, ts - self._speech_open_at)
            self._figures.segments += 1
            self._speech_open_at = None
        self._emit({"type": "vad", "flowId": self.flow_id, "event": f"speech_{event.kind}", "ts": round(ts, 3)})

    def _fail(self, code: ErrorCode, message: str) -> None:
        self._emit(error_event(self.flow_id, code, message, fatal=True))
        if self.state is State.AWAITING_START:
            self._finish(FATAL_CLOSE[code], code.value)
        else:
            self._fatal = (code, message)
            self._end_audio("error")

    def _end_audio(self, reason: str) -> None:
        if self.state is not State.STREAMING:
            return
        self.end_reason = reason
        block, odd = self._reframer.flush()
        if block is not None:
            self._audio.append(block)
        if odd:
            self._emit(
                error_event(
                    self.flow_id,
                    ErrorCode.ODD_BYTE_COUNT,
                    "the stream ended on half a sample; the odd byte was dropped",
                    fatal=False,
                )
            )
        self.state = State.DRAINING
        self._maybe_finish()

    def _stage_over(self, stage: str) -> None:
        self.pending_stages.discard(stage)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.state is not State.DRAINING or self.pending_stages:
            return
        self._pending_partial = None
        self._emit(self._metrics_event())
        self._emit(
            {
                "type": "end",
                "flowId": self.flow_id,
                "reason": self.end_reason,
                "audio_s": round(self.audio_s, 3),
            }
        )
        if self._fatal is not None:
            self._finish(FATAL_CLOSE[self._fatal[0]], self._fatal[0].value)
        else:
            self._finish(Close.NORMAL, self.end_reason or "end")

    def _finish(self, code: Close, reason: str) -> None:
        self.state = State.CLOSED
        self.close = (code, reason)

    def _metrics_event(self) -> dict[str, Any]:
        stages = {}
        for stage, values in sorted(self._figures.latencies_ms.items()):
            stages[stage] = {
                "count": len(values),
                "latency_ms_p50": round(statistics.median(values), 2),
                "latency_ms_max": round(max(values), 2),
            }
        return {
            "type": "metrics",
            "flowId": self.flow_id,
            "audio_s": round(self.audio_s, 3),
            "bytes_in": self._figures.bytes_in,
            "messages_in": self._figures.messages_in,
            "speech_s": round(self._figures.speech_s, 3),
            "speech_segments": self._figures.segments,
            "stages": stages,
        }

    def _emit(self, event: dict[str, Any]) -> None:
        family = FAMILY_OF.get(event["type"])
        if family is not None and not self.wants(family):
            return
        self._events.append(event)
