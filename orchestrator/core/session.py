"""The session as a sans-I/O state machine (STYLE §1).

Feed it what the client sent (`receive_text`, `receive_binary`, `receive_disconnect`), the clock
(`tick`), what the stages found (`stage_event`) and how far behind they are (`stage_backlog`); read
back the events for the client (`events_to_send`), the audio for the stages (`audio_to_stages`), what
running stages must hear (`stage_inputs`: the ASR's endpoints and language), the stages it gave up
on (`stages_to_stop`), whether to read the socket (`accepts_audio`), whether the audio has ended
(`audio_ended`) and, last, how to close the socket (`close`). Nothing here awaits or does I/O.

A client whose connection drops (no close frame) may come back within `resume_window_s` with the
same `flowId` (`start.resume`): the session waits for it with its stages open (`awaiting_resume`), then
`resume`s on the new connection, replaying the numbered events the client missed (core/resume.py).

The session decides: which stages run (`stages`), the language and the pool it routes to
(`language`, core/language.py), and when a stage is given up (behind the audio for too long, or no
answer in time after its end). The driver only carries these decisions out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from common.audio import BYTES_PER_S, CHANNELS, SAMPLE_RATE
from orchestrator.core.events import (
    Finalize,
    LangDetected,
    LanguageDecided,
    RecordPending,
    RecordReady,
    SpeechBoundary,
    StageDone,
    StageEvent,
    StageFailed,
    StageInput,
    StageLatency,
    StageName,
    Transcript,
)
from orchestrator.core.figures import PartialThrottle, SessionFigures
from orchestrator.core.language import LanguageDecider, LanguageDecision, Route
from orchestrator.core.protocol import (
    CODEC,
    FATAL_CLOSE,
    Close,
    ErrorCode,
    ProtocolError,
    ResumeRequest,
    StartRequest,
    error_event,
    parse_control,
    parse_start,
)
from orchestrator.core.reframer import AudioBlock, Reframer
from orchestrator.core.resume import EventLog

UNAVAILABLE_CODE = {
    StageName.VAD: ErrorCode.VAD_UNAVAILABLE,
    StageName.DENOISE: ErrorCode.DENOISE_UNAVAILABLE,
    StageName.LID: ErrorCode.LID_UNAVAILABLE,
    StageName.ASR: ErrorCode.ASR_UNAVAILABLE,
    StageName.COMPRESS: ErrorCode.ARCHIVE_UNAVAILABLE,
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
    ADMITTING = "admitting"  # start parsed; the gateway checks token, ownership, limits (no audio read)
    STREAMING = "streaming"
    DRAINING = "draining"  # audio ended; waiting for the stages' last answers
    CLOSED = "closed"


@dataclass(frozen=True)
class SessionConfig:
    """Per-session limits (SPEC §2, §4, §5)."""

    frame_ms: int = 20
    max_frame_bytes: int = 64 * 1024
    flush_idle_s: float = 3.0
    start_timeout_s: float = 5.0  # short: connections before start hold a slot of their own
    max_session_s: float = 4 * 3600.0
    partial_interval_ms: int = 250
    stages: tuple[StageName, ...] = (StageName.VAD, StageName.COMPRESS)
    # A session whose ASR is unavailable goes on as record-only and is transcribed later.
    deferred_transcripts: bool = False
    # The gateway keeps each session's audio in its archive spool (ARCHIVE_SPOOL_MAX_BYTES > 0): an
    # archive stage given up (silent, or stalled behind) hands its audio to the spool's uploader.
    archive_spool: bool = False
    # Backpressure (SPEC §4): while a stage holds more than this much unsent audio, the client's
    # socket is not read; a stage that stays that far behind for `stage_timeout_s` is failed.
    stage_backlog_s: float = 10.0
    # A stage that has not answered everything this long after the end of audio is failed.
    stage_timeout_s: float = 15.0
    # Hold every session after `start` until the gateway `admit`s or `refuse`s it (docs/security.md):
    # nothing is acknowledged and no audio is read before its token, its ownership of the flowId and
    # the limits per client and per tenant (orchestrator/edge/) are checked.
    admission: bool = False
    # Resume (docs/protocol.md#resume): a session whose client dropped waits this long for it to come
    # back with `start.resume` (0: no resume, a drop flushes at once), keeping its newest events.
    resume_window_s: float = 30.0
    resume_buffer_events: int = 256
    # A client whose socket takes nothing for this long (it stopped reading) is closed with
    # `send_timeout` once its audio so far has drained through every stage (docs/errors.md).
    send_timeout_s: float = 10.0
    # Every ASR pool this gateway routes to applies `hints.hotwords` (the routing file's per-pool
    # `hotwords`); the `ack` of a session with hotwords says whether they are applied.
    hotwords_applied: bool = True

    def __post_init__(self) -> None:
        if self.resume_window_s < 0:
            raise ValueError("resume_window_s must be >= 0")
        if self.resume_buffer_events < 1:
            raise ValueError("resume_buffer_events must be >= 1")


class Session:
    """One client stream from `start` to `end`."""

    def __init__(
        self,
        config: SessionConfig,
        now: float,
        new_flow_id: str,
        route: Route | None = None,
    ) -> None:
        self.config = config
        self.state = State.AWAITING_START
        self.flow_id: str | None = None
        self.start: StartRequest | None = None
        self.end_reason: str | None = None
        self.fatal_code: ErrorCode | None = None  # the first fatal error, if any (metrics: the outcome)
        self.close: tuple[Close, str] | None = None
        # The stages this session runs, known at `start` (LID is left out when a hint decides).
        self.stages: tuple[StageName, ...] = ()
        self.pending_stages: set[StageName] = set()
        self.failed_stages: set[StageName] = set()
        self.record_url: str | None = None
        self.record_pending = False  # the archive failed; the gateway's spool holds the audio
        self.tenant = ""  # the verified token's `sub`; "" when authentication is off
        self.acknowledged = False  # `ack` sent: the session streams (and its stages run)
        self.language: LanguageDecider | None = None
        self._route = route
        self._new_flow_id = new_flow_id
        self._opened_at = now
        self._started_at = now
        self._last_audio_at = now
        self._reframer = Reframer(config.frame_ms, SAMPLE_RATE)
        self._events: list[dict[str, Any]] = []
        self._audio: list[AudioBlock] = []
        self._fatal: tuple[ErrorCode, str] | None = None
        self._figures = SessionFigures()
        self._partials = PartialThrottle(config.partial_interval_ms / 1000)
        self._stage_inputs: list[tuple[StageName, StageInput]] = []
        self._stages_to_stop: list[StageName] = []
        self._behind_since: dict[StageName, float] = {}  # stages over the backlog limit, since when
        self._audio_ended_at: float | None = None
        self._last_heard: dict[StageName, float] = {}  # when each stage last said anything
        self._language_at = 0.0  # when the language was settled, if it took LID's answer or end
        resumable = config.resume_window_s > 0
        self._log = EventLog(config.resume_buffer_events if resumable else 0)
        self.detached_at: float | None = None  # the client dropped; waiting for its resume since then
        self.handed_over = False  # this connection resumed another session (it ends without a word)
        self._window_over = False  # a resume window ended unused: the session is flushed, never resumed
        self._resume_outcomes: list[str] = []
        self._output_stalled_since: float | None = None  # the client stopped taking what is sent
        # The client took nothing for `send_timeout_s`: nothing more goes to its socket (the driver
        # drops the connection); the session still drains its audio through every stage.
        self.output_abandoned = False

    # ----- inputs from the client -----

    def receive_text(self, text: str, now: float) -> None:
        if self.state in (State.DRAINING, State.CLOSED):
            return
        size = utf8_size(text, self.config.max_frame_bytes)
        if size > self.config.max_frame_bytes:
            self._fail(
                ErrorCode.FRAME_TOO_LARGE,
                f"control frame exceeds {self.config.max_frame_bytes} bytes",
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
                self._end_audio("flush", now)
            elif kind == "keepalive":
                self._keepalive(now)
            elif kind == "finalize":
                if self.state is State.AWAITING_START:
                    raise ProtocolError(ErrorCode.INVALID_MESSAGE, "finalize before start")
                self._finalize(now)
            else:
                raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown control type {kind[:64]!r}")
        except ProtocolError as exc:
            self._fail(exc.code, exc.message, now)

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
        if self.state in (State.AWAITING_START, State.ADMITTING):
            # The driver reads nothing while a session is admitted; audio here was sent before `start`.
            self._fail(ErrorCode.AUDIO_BEFORE_START, "binary audio before the start frame")
            return
        if not data:
            return  # no audio, and no sign of life either: only audio and `keepalive` hold off the idle flush
        self._figures.on_audio(len(data))
        self._last_audio_at = now
        block = self._reframer.feed(data)
        if block is not None:
            self._audio.append(block)

    def receive_disconnect(self, now: float, dropped: bool = False) -> None:
        """The client went away: flush what was accepted (SPEC §2 auto flush). A connection `dropped`
        without a close frame may be resumed: the session then waits `resume_window_s` for it."""
        resumable = self.acknowledged and self.config.resume_window_s > 0 and not self.output_abandoned
        if dropped and resumable and not self._window_over:
            if self.detached_at is None:
                self.detached_at = now
            return
        if self.state is State.STREAMING:
            self._end_audio("disconnect", now)
        elif self.state in (State.AWAITING_START, State.ADMITTING):
            self._finish(Close.NORMAL, "disconnect")

    def tick(self, now: float) -> None:
        """Timers: held partial, start timeout, resume window, idle flush (FLUSH_IDLE_SEC), session
        length cap."""
        held = self._partials.release(now)
        if held is not None:
            self._emit(held.to_event(self.flow_id))
        waiting = self.state in (State.AWAITING_START, State.ADMITTING)
        if waiting and now - self._opened_at >= self.config.start_timeout_s:
            self._fail(ErrorCode.START_TIMEOUT, f"no start frame within {self.config.start_timeout_s:g} s")
        elif self.detached_at is not None and now - self.detached_at >= self.config.resume_window_s:
            self.end_resume_window(now)
        elif self.state is State.STREAMING:
            # A client away (awaiting its resume) is not idle: the resume window decides instead.
            idle = now - self._last_audio_at >= self.config.flush_idle_s and self.detached_at is None
            if self.accepts_audio and self._output_stalled_since is None and idle:
                self._end_audio("idle", now)
            elif now - self._started_at >= self.config.max_session_s:
                self._fail(ErrorCode.SESSION_TOO_LONG, f"session exceeds {self.config.max_session_s:g} s", now)
        self._apply_stage_policy(now)

    def output_stalled(self, since: float | None, now: float) -> None:
        """Whether the client takes what the gateway sends: `since` is when its socket stopped draining,
        None while it drains. The gateway reads nothing from a client that does not read (so its pings
        cannot pile up pongs), which is no idleness; a stall of `send_timeout_s` is fatal (`send_timeout`):
        the audio accepted so far drains through every stage, nothing more is sent."""
        if since is None:
            if self._output_stalled_since is not None:
                self._last_audio_at = max(self._last_audio_at, now)  # we held the client; it was not idle
            self._output_stalled_since = None
            return
        self._output_stalled_since = since
        if self.output_abandoned or now - since < self.config.send_timeout_s:
            return
        self.output_abandoned = True
        message = f"the client took nothing the gateway sent for {self.config.send_timeout_s:g} s"
        if self.state in (State.STREAMING, State.AWAITING_START, State.ADMITTING):
            self._fail(ErrorCode.SEND_TIMEOUT, message, now)
        elif self.fatal_code is None and self.state is State.DRAINING:
            # The audio has ended already: the stages finish; only the outcome records the stall.
            self.fatal_code = ErrorCode.SEND_TIMEOUT
            self._fatal = (ErrorCode.SEND_TIMEOUT, message)

    def shutdown(self, now: float) -> None:
        """The gateway stops (its drain grace is over): end the audio here, as a flush would, so the
        stages answer what they have (final, `record_url`) and `end` says `reason: "shutdown"`."""
        if self.state is State.STREAMING:
            self._end_audio("shutdown", now)
        elif self.state in (State.AWAITING_START, State.ADMITTING):
            self._fail(ErrorCode.SERVER_DRAINING, "the gateway is shutting down; reconnect to another")

    def give_up_stages(self, why: str, now: float) -> None:
        """Stop waiting for the stages still working (the gateway cannot wait longer to stop): each is
        failed as if it had timed out, so `end` goes out now."""
        self.shutdown(now)
        for stage in sorted(self.pending_stages):
            self._give_up(stage, why)

    def refuse(self, code: ErrorCode, message: str) -> None:
        """Refuse the connection before anything else (capacity, draining) or at admission (auth)."""
        if self.state in (State.AWAITING_START, State.ADMITTING):
            self._fail(code, message)

    @property
    def awaiting_admission(self) -> bool:
        """`start` is parsed and the gateway must `admit` or `refuse` the session."""
        return self.state is State.ADMITTING

    def admit(self, tenant: str, now: float) -> None:
        """The gateway accepted the session for `tenant`: acknowledge it and start reading audio."""
        if self.state is State.ADMITTING:
            self.tenant = tenant
            self._begin(now)

    # ----- resume (docs/protocol.md#resume) -----

    @property
    def awaiting_resume(self) -> bool:
        """The client dropped and may still come back: the session keeps its stages and its events."""
        return self.detached_at is not None

    def check_resume(self, request: ResumeRequest) -> tuple[ErrorCode, str] | None:
        """Whether a client may resume this session now; None, or the refusal."""
        if not self.acknowledged or self.config.resume_window_s <= 0:
            return ErrorCode.RESUME_UNKNOWN, "this flow cannot be resumed"
        if self._window_over or (self.state is State.CLOSED and self.detached_at is None):
            return ErrorCode.RESUME_EXPIRED, "the session has ended, or its resume window has"
        if request.last_seq > self._log.last_seq:
            return ErrorCode.INVALID_START, (
                f"resume.last_seq {request.last_seq} is past the last event sent ({self._log.last_seq})"
            )
        return None

    def resume(self, request: ResumeRequest, now: float) -> None:
        """The client is back on a new connection (the driver moved the session to it): answer an
        `ack` with where its audio continues, then the events after `request.last_seq`."""
        assert self.check_resume(request) is None and self.start is not None
        self.detached_at = None
        self._last_audio_at = max(self._last_audio_at, now)  # the idle timer starts again
        self._resume_outcomes.append("resumed")
        # Events not taken yet are numbered and kept: the replay below sends them.
        self._events.clear()
        replay, lost = self._log.after(request.last_seq)
        ack = self._ack_event(self.start)
        accepted = self._figures.bytes_in
        ack["resume"] = {
            "last_seq": self._log.last_seq,
            "resume_from_s": accepted / BYTES_PER_S,
            "resume_from_bytes": accepted,
            "audio_ended": self.audio_ended,
        }
        self._events.append(ack)  # not numbered: it answers this connection, it is never replayed
        self._events.extend(replay)
        if lost:
            first = request.last_seq + 1
            self._emit(
                error_event(
                    self.flow_id,
                    ErrorCode.RESUME_GAP,
                    f"events {first}..{first + lost - 1} are no longer kept (RESUME_BUFFER_EVENTS)",
                    fatal=False,
                )
            )

    def end_resume_window(self, now: float) -> None:
        """No resume came in time (or the gateway drains): flush what was accepted, as on a disconnect.
        From now on the session waits for no resume."""
        self._window_over = True
        if self.detached_at is None:
            return
        self.detached_at = None
        self._resume_outcomes.append("lapsed")
        self._end_audio("disconnect", now)

    def hand_over(self) -> None:
        """This connection resumed another session of the same flow: this one ends without a word."""
        if self.state is State.ADMITTING:
            self.handed_over = True
            self.state = State.CLOSED

    def resume_outcomes(self) -> list[str]:
        """What became of the resumes (`resumed`, `lapsed`) since the last call (metrics)."""
        out, self._resume_outcomes = self._resume_outcomes, []
        return out

    def internal_error(self, message: str, now: float) -> None:
        """A bug met while handling the client's input: fatal (1011), but like any other fatal error
        the audio accepted so far still drains through every stage (archived, transcribed)."""
        if self.state is not State.CLOSED:
            self._fail(ErrorCode.INTERNAL_ERROR, message, now)

    def stage_backlog(self, stage: StageName, backlog_s: float, now: float) -> None:
        """How much audio a stage has not taken yet (the driver reports it as it changes)."""
        if backlog_s > self.config.stage_backlog_s:
            self._behind_since.setdefault(stage, now)
        elif self._behind_since.pop(stage, None) is not None and not self._behind_since:
            self._last_audio_at = max(self._last_audio_at, now)  # we held the client; it was not idle

    # ----- inputs from the stages -----

    def stage_event(self, event: StageEvent, now: float) -> None:
        if self.state is State.CLOSED:
            return
        settled = self._language_settled
        self._on_stage_event(event, now)
        if not settled and self._language_settled:
            self._language_at = now

    def _on_stage_event(self, event: StageEvent, now: float) -> None:
        self._last_heard[_stage_of(event)] = now
        if isinstance(event, SpeechBoundary):
            self._on_boundary(event)
            if StageName.ASR in self.pending_stages and self.start is not None and self.start.vad_endpoints:
                self._stage_inputs.append((StageName.ASR, event))  # the ASR link's endpoints
        elif isinstance(event, RecordPending):
            self._on_record_pending(event)
        elif isinstance(event, RecordReady):
            self.record_url = event.url
            self.record_pending = False
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
            if self.language is not None:
                self._decided(self.language.on_lid_answer(event.lang, event.score))
        elif isinstance(event, Transcript):
            self._on_transcript(event, now)
        elif isinstance(event, StageLatency):
            self._figures.on_latency(event.stage, event.ms)
        elif isinstance(event, StageFailed):
            if event.stage in self.failed_stages or event.stage not in self.pending_stages:
                return
            self.failed_stages.add(event.stage)
            if event.stage == StageName.COMPRESS:
                self.record_pending = False  # the spool could not keep the audio after all
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

    def stage_inputs(self) -> list[tuple[StageName, StageInput]]:
        """What running stages must hear: the ASR's endpoints and language."""
        out, self._stage_inputs = self._stage_inputs, []
        return out

    @property
    def has_stage_orders(self) -> bool:
        """Whether `stage_inputs` or `stages_to_stop` has anything (a cheap check per message)."""
        return bool(self._stage_inputs or self._stages_to_stop)

    def stages_to_stop(self) -> list[StageName]:
        """Stages the session gave up on (no answer in time, stalled): cancel their work."""
        out, self._stages_to_stop = self._stages_to_stop, []
        return out

    @property
    def accepts_audio(self) -> bool:
        """False while a stage is too far behind (backpressure) or the session awaits admission: the
        driver stops reading the socket."""
        return not self._behind_since and self.state is not State.ADMITTING

    @property
    def lang(self) -> str:
        """The decided language ("" if none, or not yet)."""
        decision = self.language.decision if self.language is not None else None
        return decision.lang if decision is not None else ""

    @property
    def partial_due_at(self) -> float | None:
        """When the held partial may go out, if one is held."""
        return self._partials.due_at

    @property
    def audio_ended(self) -> bool:
        return self.state in (State.DRAINING, State.CLOSED) and self.start is not None

    @property
    def needs_deferred_transcript(self) -> bool:
        """The ASR failed for this session but its audio was archived (or waits in the spool to be):
        transcribe it later."""
        archived = self.record_url is not None or self.record_pending
        return self.config.deferred_transcripts and "asr" in self.failed_stages and archived

    @property
    def audio_s(self) -> float:
        return self._reframer.samples_out / SAMPLE_RATE

    def wants(self, family: str) -> bool:
        return self.start is not None and family in self.start.returns

    # ----- internals -----

    def _on_start(self, msg: dict[str, Any], now: float) -> None:
        if self.state is not State.AWAITING_START:
            raise ProtocolError(ErrorCode.DUPLICATE_START, "start was already received")
        start = parse_start(msg, self._new_flow_id)
        self.start = start
        self.flow_id = self.start.flow_id
        if start.resume is not None and not self.config.admission:
            # Only a gateway (admission) knows the other sessions: nothing to resume here.
            raise ProtocolError(ErrorCode.RESUME_UNKNOWN, "no session of this flowId to resume")
        if self.config.admission:
            self.state = State.ADMITTING
        else:
            self._begin(now)

    def _hotwords_ack(self) -> dict[str, bool]:
        """`hotwords_applied` when the start has hotwords: false when no ASR runs or a pool's engine
        ignores them (pocketsphinx)."""
        assert self.start is not None
        if not self.start.hotwords:
            return {}
        return {"hotwords_applied": StageName.ASR in self.config.stages and self.config.hotwords_applied}

    def _begin(self, now: float) -> None:
        assert self.start is not None
        self.state = State.STREAMING
        self.acknowledged = True
        self._started_at = now
        self._last_audio_at = now
        self.language = LanguageDecider(
            self._route if StageName.ASR in self.config.stages else None,
            self.start.domain,
            self.start.lang_pref,
            lid_configured=StageName.LID in self.config.stages,
        )
        self.stages = tuple(s for s in self.config.stages if s is not StageName.LID or self.language.asks_lid)
        self.pending_stages = set(self.stages)
        self._emit(self._ack_event(self.start))
        if self.language.decision is not None:
            self._decided(self.language.decision)

    def _ack_event(self, start: StartRequest) -> dict[str, Any]:
        return {
            "type": "ack",
            "flowId": self.flow_id,
            "audio": {
                "codec": CODEC,
                "sr": SAMPLE_RATE,
                "channels": CHANNELS,
                "chunk_ms": start.chunk_ms,
                "frame_ms": self.config.frame_ms,
            },
            "return": sorted(start.returns),
            "limits": {
                "max_frame_bytes": self.config.max_frame_bytes,
                "flush_idle_s": self.config.flush_idle_s,
                "partial_interval_ms": self.config.partial_interval_ms,
            },
            **self._hotwords_ack(),
        }

    def _keepalive(self, now: float) -> None:
        """The client is there without audio (Deepgram's KeepAlive): the idle timer starts again. No
        reply. Before `start` it does nothing: the start timeout still runs."""
        if self.state is State.STREAMING:
            self._last_audio_at = max(self._last_audio_at, now)

    def _finalize(self, now: float) -> None:
        """Close the open utterance at the end of the audio received so far and answer its final
        (`from_finalize`); the stream stays open (Deepgram's Finalize). Also a keepalive."""
        self._keepalive(now)
        if StageName.ASR in self.pending_stages:
            pts_ns = self._reframer.samples_out * 1_000_000_000 // SAMPLE_RATE
            self._stage_inputs.append((StageName.ASR, Finalize(pts_ns)))

    def _decided(self, decision: LanguageDecision | None) -> None:
        """The language is settled: tell the client (unless nobody answered) and the ASR stage."""
        if decision is None:
            return
        if decision.source != "default":
            lid = {
                "type": "lid",
                "flowId": self.flow_id,
                "lang": decision.heard,
                "score": round(decision.score, 4),
                "source": decision.source,
            }
            if decision.pool:
                lid["pool"] = decision.pool
            self._emit(lid)
        if StageName.ASR in self.pending_stages:
            self._stage_inputs.append((StageName.ASR, LanguageDecided(decision.lang, decision.pool)))

    def _on_transcript(self, event: Transcript, now: float) -> None:
        if event.final:
            self._partials.drop()  # the final supersedes it
            self._emit(event.to_event(self.flow_id))
            return
        partial = self._partials.offer(event, now)
        if partial is not None:
            self._emit(partial.to_event(self.flow_id))

    def _on_record_pending(self, event: RecordPending) -> None:
        """The archive failed mid-session, but the audio is kept (SPEC §4): a non-fatal
        `archive_unavailable` that says where `record_url` will be once an archive member has it."""
        if self.record_pending or StageName.COMPRESS not in self.pending_stages:
            return
        self.record_pending = True
        error = error_event(self.flow_id, ErrorCode.ARCHIVE_UNAVAILABLE, f"compress: {event.message}", fatal=False)
        error["mode"] = "spooled"
        error["transcript_path"] = f"/v1/flows/{self.flow_id}/transcript"
        self._emit(error)

    def _on_boundary(self, event: SpeechBoundary) -> None:
        ts = event.pts_ns / 1e9
        self._figures.on_boundary(event.kind, ts)
        self._emit({"type": "vad", "flowId": self.flow_id, "event": f"speech_{event.kind}", "ts": round(ts, 3)})

    def _fail(self, code: ErrorCode, message: str, now: float | None = None) -> None:
        if self.fatal_code is None:
            self.fatal_code = code
        self._emit(error_event(self.flow_id, code, message, fatal=True))
        if self.state in (State.AWAITING_START, State.ADMITTING):
            self._finish(FATAL_CLOSE[code], code.value)
        else:
            self._fatal = (code, message)
            self._end_audio("error", now)

    def _apply_stage_policy(self, now: float) -> None:
        """Fail the stages that stalled behind the audio or did not answer in time after its end."""
        limit = self.config.stage_timeout_s
        for stage, since in sorted(self._behind_since.items()):
            if now - since >= limit:
                self._give_up(stage, f"more than {self.config.stage_backlog_s:g} s behind the audio for {limit:g} s")
        if self._audio_ended_at is not None:
            # A stage still working through the audio (a batch client's ASR) keeps answering: only
            # one silent for the whole timeout after the end of audio is given up. LID first: the ASR
            # holds its finals (or its stream) until the language is settled, so it is not blamed for
            # a silent LID; its own clock starts again when LID is over.
            for stage in sorted(self.pending_stages, key=lambda s: (s is not StageName.LID, s)):
                if stage is StageName.ASR and not self._language_settled:
                    continue
                since = max(self._audio_ended_at, self._last_heard.get(stage, 0.0))
                if stage is StageName.ASR:
                    since = max(since, self._language_at)
                if now - since >= limit:
                    settled = self._language_settled
                    self._give_up(stage, f"nothing from it for {limit:g} s after the end of audio")
                    if not settled and self._language_settled:
                        self._language_at = now

    @property
    def _language_settled(self) -> bool:
        """The ASR has heard its language (or the session has no LID to wait for)."""
        return self.language is None or self.language.decision is not None

    def _give_up(self, stage: StageName, why: str) -> None:
        self._behind_since.pop(stage, None)
        if stage in self.pending_stages:
            self._stages_to_stop.append(stage)
            if stage is StageName.COMPRESS and self.config.archive_spool and self.record_url is None:
                # A hung archive: the stage, stopped, hands the spooled audio to the uploader
                # (orchestrator/stages/compress.py): the client is told where record_url will be.
                self._on_record_pending(RecordPending(why))
                self.failed_stages.add(stage)
                self._stage_over(stage)
                return
            self.stage_event(StageFailed(stage, why), self._last_audio_at)

    def _end_audio(self, reason: str, now: float | None = None) -> None:
        if self.state is not State.STREAMING:
            return
        self.end_reason = reason
        self._audio_ended_at = now if now is not None else self._last_audio_at
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

    def _stage_over(self, stage: StageName) -> None:
        self.pending_stages.discard(stage)
        self._behind_since.pop(stage, None)
        if stage is StageName.LID and self.language is not None:
            self._decided(self.language.on_lid_over())
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.state is not State.DRAINING or self.pending_stages:
            return
        self._partials.drop()
        self._emit(self._figures.to_event(self.flow_id, self.audio_s))
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
        elif self.end_reason == "shutdown":
            self._finish(Close.GOING_AWAY, "shutdown")  # RFC 6455: the server is going down
        else:
            self._finish(Close.NORMAL, self.end_reason or "end")

    def _finish(self, code: Close, reason: str) -> None:
        self.state = State.CLOSED
        self.close = (code, reason)

    def _emit(self, event: dict[str, Any]) -> None:
        family = FAMILY_OF.get(event["type"])
        if family is not None and not self.wants(family):
            return
        if self.start is not None and self.start.resume is not None and not self.acknowledged:
            # The refusal of a resume answers this connection: it is not one of the flow's events.
            self._events.append(event)
            return
        self._events.append(self._log.number(event))


def utf8_size(text: str, limit: int) -> int:
    """The size of `text` on the wire (UTF-8 bytes, which a frame limit counts), encoding it only
    when its length in characters cannot decide against `limit` (a character is 1 to 4 bytes)."""
    if len(text) > limit or 4 * len(text) <= limit:
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _stage_of(event: StageEvent) -> StageName:
    """Which stage an event comes from."""
    if isinstance(event, SpeechBoundary):
        return StageName.VAD
    if isinstance(event, RecordReady | RecordPending):
        return StageName.COMPRESS
    if isinstance(event, LangDetected):
        return StageName.LID
    if isinstance(event, Transcript):
        return StageName.ASR
    return event.stage
