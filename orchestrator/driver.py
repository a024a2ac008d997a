"""Drives one Session over one connection: the thin I/O adapter around the sans-I/O core.

The session decides (which stages run, the language and pool, when a stage is given up, when to stop
reading the client); the driver only carries that out: it reads the socket, moves audio into the
stages' feeds, hands stage inputs over, cancels the stages the session gave up on, and writes events.

One task group per session (STYLE §6): the writer, one task per stage, and the reader in the
caller's task. Nothing outlives the session; a stage's own tasks live inside its task.

Resume (docs/protocol.md#resume): when the client's connection drops, the session may wait for it
(`Session.awaiting_resume`); the gateway then `attach`es the client's new connection, and the reader
and the writer carry on over it. The decisions (whether to wait, what to replay) are the session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from common import tracing
from common.audio import BYTES_PER_S, BYTES_PER_SAMPLE, NS_PER_SAMPLE, SAMPLE_RATE, bytes_for_ms
from orchestrator import metrics
from orchestrator.core.events import (
    SpeechBoundary,
    StageDone,
    StageEvent,
    StageFailed,
    StageLatency,
    StageName,
    Transcript,
)
from orchestrator.core.protocol import ErrorCode, ResumeRequest
from orchestrator.core.reframer import AudioBlock
from orchestrator.core.session import Session, State
from orchestrator.session_trace import SessionTrace
from orchestrator.speech_latency import SpeechLatencyProbe
from orchestrator.stages.audio_paths import AudioPaths
from orchestrator.stages.base import Stage, StageContext, StageFeed

log = logging.getLogger(__name__)
_CLOSE = object()


class ConnectionClosedError(Exception):
    """The client's connection is gone (raised by a Connection's `send`)."""


class Connection(Protocol):
    """What the driver needs of a client connection; the WebSocket adapter is one (gateway.py)."""

    async def receive(self) -> str | bytes | None:
        """The client's next message; None once it has gone away."""

    async def send(self, text: str) -> None:
        """Raise ConnectionClosedError once the client is gone."""

    async def close(self, code: int, reason: str) -> None: ...

    def stalled_since(self) -> float | None:
        """Since when (monotonic) the client's socket takes nothing more; None while it drains."""

    @property
    def dropped(self) -> bool:
        """Once closed: whether it was lost without a close frame from the client (resumable)."""

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake (a client that reads nothing, or a
        resume moved its session to another connection)."""


@dataclass(frozen=True)
class HandedOver:
    """Admission verdict: the connection now carries another, resumed session (`to.attach` took it)."""

    to: SessionDriver


# Decides whether a session that sent `start` may go on: the tenant (a str, "" with auth off) admits
# it, a (code, message) pair refuses it (docs/security.md), HandedOver: it resumed another session.
Admit = Callable[[Session], Awaitable["tuple[ErrorCode, str] | str | HandedOver"]]


class SessionDriver:
    def __init__(
        self,
        session: Session,
        conn: Connection,
        stages: Sequence[Stage],
        before_end: Callable[[Session], Awaitable[None]] | None = None,
        admit: Admit | None = None,
    ) -> None:
        self.session = session
        self.conn = conn
        self._stages = {s.name: s for s in stages}
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self._paths = AudioPaths()
        self._tasks: dict[StageName, asyncio.Task[None]] = {}
        self._contexts: dict[StageName, StageContext] = {}
        self._partial_timer: asyncio.TimerHandle | None = None
        self._before_end = before_end
        self._admit = admit
        self._admission: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._stages_started = False
        self._aborted = False
        self._feeds_closed = False
        self._close_queued = False
        self._backlog_limit_bytes = session.config.stage_backlog_s * BYTES_PER_S
        self._reading = asyncio.Event()  # set while the session accepts audio (backpressure)
        self._reading.set()
        self._latency = SpeechLatencyProbe()  # the SLO histograms (first partial, final lag)
        self._wake = asyncio.Event()  # a reader waiting for a resume: a connection came, or time passed
        self._gone: Connection | None = None  # the connection a send failed on
        self.handed_over_to: SessionDriver | None = None
        self.trace = SessionTrace() if tracing.enabled() else None  # None: tracing is off, no cost
        self.closed = asyncio.Event()

    async def run(self) -> None:
        """Read client messages until the session closes or the client goes away."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._write_loop())
                self.pump()
                await self._read_loop()  # ends when the client goes or the writer closes the connection
                await self.closed.wait()
                for task in self._tasks.values():
                    task.cancel()
                if self._admission is not None:
                    self._admission.cancel()
        finally:
            if self._partial_timer is not None:
                self._partial_timer.cancel()
            if self.trace is not None:
                self.trace.closed(self.session)

    async def _read_loop(self) -> None:
        while self.session.state is not State.CLOSED:
            if not self._reading.is_set():
                # A stage is too far behind (SPEC §4), or the session awaits admission: hold the client,
                # then look at the state again (a refused session reads nothing more).
                await self._reading.wait()
                continue
            conn = self.conn
            message = await conn.receive()
            if conn is not self.conn:
                continue  # a resume moved the session to another connection while this one was read
            if message is None:
                if not self._wait_for_resume(conn):
                    return
                await self._resumed_or_lapsed(conn)
                continue
            now = time.monotonic()
            try:
                if isinstance(message, str):
                    self.session.receive_text(message, now)
                else:
                    metrics.INGRESS_BYTES.inc(len(message))
                    self._latency.on_audio(len(message), now)
                    self.session.receive_binary(message, now)
            except Exception:
                # A bug must not cost the client its accepted audio: the session drains as after
                # any fatal error, instead of the task group cancelling every stage.
                log.exception(
                    "client message failed",
                    extra={"flowId": self.session.flow_id, "stage": "gateway", "err_code": "internal_error"},
                )
                self.session.internal_error("the gateway failed on this message", now)
            self.pump()

    def _wait_for_resume(self, conn: Connection) -> bool:
        """The client's connection ended: tell the session; whether it waits for a resume."""
        self.session.receive_disconnect(time.monotonic(), dropped=conn.dropped)
        self.pump()
        return self.session.awaiting_resume

    async def _resumed_or_lapsed(self, conn: Connection) -> None:
        while self.session.awaiting_resume and self.conn is conn:
            self._wake.clear()
            await self._wake.wait()

    def tick(self, now: float) -> None:
        # A client away (its connection dropped) is not a client that stopped reading.
        stalled = None if self.session.awaiting_resume else self.conn.stalled_since()
        self.session.output_stalled(stalled, now)
        self.session.tick(now)
        self.pump()
        self._count_resumes()
        self._wake.set()

    def end_resume_window(self) -> None:
        """Wait no longer for the client to come back (the gateway drains): flush as on a disconnect."""
        self.session.end_resume_window(time.monotonic())
        self.pump()
        self._count_resumes()
        self._wake.set()

    def _count_resumes(self) -> None:
        for outcome in self.session.resume_outcomes():
            metrics.RESUMES.labels(outcome).inc()

    def attach(self, conn: Connection, request: ResumeRequest) -> tuple[ErrorCode, str] | None:
        """The client is back on `conn` (`start.resume`): move the session to it, or say why not. The
        connection it replaces, dropped or half-open (the gateway never saw it go), is aborted."""
        s = self.session
        refusal = s.check_resume(request)
        if refusal is not None:
            return refusal
        old, self.conn = self.conn, conn
        if old is not conn:
            old.abort()
        # What was queued for the old connection is in the session's event log: the replay sends what
        # the client lacks, once.
        while not self._out.empty():
            self._out.get_nowait()
        self._close_queued = False
        s.resume(request, time.monotonic())
        self._wake.set()
        self.pump()
        self._count_resumes()
        return None

    async def released(self, conn: Connection) -> None:
        """Until the session is done with `conn`: it ended, or another resume replaced `conn`."""
        while self.conn is conn and not self.closed.is_set():
            self._wake.clear()
            await self._wake.wait()

    def shutdown(self, now: float) -> None:
        """The gateway stops: the session ends its audio here and drains (`end` reason `shutdown`)."""
        self.session.shutdown(now)
        self.pump()

    def give_up_stages(self, why: str, now: float) -> None:
        """The gateway cannot wait longer: the stages still working are failed, `end` goes out."""
        self.session.give_up_stages(why, now)
        self.pump()

    def pump(self) -> None:
        """Carry out everything the session decided."""
        s = self.session
        if self.trace is not None and self.trace.trace_id is None and s.start is not None:
            self.trace.started(s)
        if s.awaiting_admission and self._admission is None and self._tg is not None:
            self._admission = self._tg.create_task(self._run_admission())
        if s.acknowledged and self._tg is not None and not self._stages_started:
            self._stages_started = True
            if self.trace is not None:
                self.trace.acknowledged(s)
            self._start_stages()
        # This runs once per client message: the common case (audio in, nothing decided) stays cheap.
        blocks = s.audio_to_stages()
        if blocks:
            for block in blocks:
                self._paths.push(block)
            self._report_backlogs()
        if s.has_stage_orders:
            for name in s.stages_to_stop():
                self._stop_stage(name)
            for name, value in s.stage_inputs():
                ctx = self._contexts.get(name)
                if ctx is not None:
                    ctx.inputs.put_nowait(value)
        if not self._feeds_closed and s.audio_ended:
            self._feeds_closed = True
            self._paths.end_of_audio()
        for event in s.events_to_send():
            if event["type"] == "ack" and self.trace is not None and self.trace.trace_id is not None:
                event["trace_id"] = self.trace.trace_id
            metrics.EGRESS_EVENTS.labels(event["type"]).inc()
            if event["type"] == "error":
                metrics.ERRORS.labels(event["code"]).inc()
            self._out.put_nowait((event["type"], json.dumps(event, ensure_ascii=False)))
        due = s.partial_due_at
        if due is not None and self._partial_timer is None:
            self._partial_timer = asyncio.get_running_loop().call_later(
                max(0.0, due - time.monotonic()), self._release_partial
            )
        if not s.accepts_audio and s.state is not State.CLOSED:
            self._reading.clear()
        elif not self._reading.is_set():
            self._reading.set()
        if s.output_abandoned and not self._aborted:
            # The client read nothing for SEND_TIMEOUT_S: its socket goes now, its stages drain on.
            self._aborted = True
            self.conn.abort()
        if s.close is not None and not self._close_queued and not s.awaiting_resume:
            self._close_queued = True
            self._out.put_nowait(_CLOSE)

    @property
    def send_queue_len(self) -> int:
        """Events queued for the client and not yet written (the close marker aside)."""
        return max(0, self._out.qsize() - self._close_queued)

    async def _run_admission(self) -> None:
        """Ask the gateway whether the session may go on (token, ownership, limits); no audio is read
        meanwhile (the session does not accept any while it is admitted)."""
        s = self.session
        try:
            verdict = await self._admit(s) if self._admit is not None else ""
        except Exception:
            log.exception(
                "admission failed", extra={"flowId": s.flow_id, "stage": "auth", "err_code": "internal_error"}
            )
            verdict = (ErrorCode.INTERNAL_ERROR, "the session could not be admitted")
        if isinstance(verdict, tuple):
            s.refuse(*verdict)
        elif isinstance(verdict, HandedOver):
            self.handed_over_to = verdict.to
            s.hand_over()
            self._out.put_nowait(_CLOSE)
        else:
            s.admit(verdict, time.monotonic())
        self.pump()

    def report(self, event: StageEvent) -> None:
        """A stage found something: update the feeds it implies, then let the session decide."""
        if self.trace is not None:
            self.trace.on_event(event)
        if isinstance(event, Transcript):
            self._latency.on_transcript(event, time.monotonic())
        elif isinstance(event, SpeechBoundary):
            self._latency.on_boundary(event)
        elif isinstance(event, StageLatency):
            histogram = metrics.STAGE_LATENCY.get(event.stage)
            if histogram is not None:
                histogram.observe(event.ms)
        elif isinstance(event, StageFailed):
            metrics.STAGE_FAILURES.labels(event.stage).inc()
            self._paths.remove(event.stage)
        elif isinstance(event, StageDone):
            if event.stage == StageName.DENOISE:
                self._paths.denoise_done()
            else:
                self._paths.remove(event.stage)  # e.g. LID after its answer: stop feeding it
        self.session.stage_event(event, time.monotonic())
        self.pump()

    def _report_backlogs(self) -> None:
        """Tell the session of every backlog that matters: over its limit, or while it holds the client
        (a backlog under the limit with nobody held changes nothing; this runs per client message)."""
        s = self.session
        limit, holding = self._backlog_limit_bytes, not s.accepts_audio
        for name, feed in self._paths.feeds.items():
            if holding or feed.backlog_bytes > limit:
                s.stage_backlog(name, feed.backlog_bytes / BYTES_PER_S, time.monotonic())

    def _feed_drained(self) -> None:
        if not self.session.accepts_audio:  # only a held client needs the news at once
            self._report_backlogs()
            self.pump()

    def _clean_audio(self, block: AudioBlock) -> None:
        self._paths.clean_audio(block)
        self.pump()

    def _release_partial(self) -> None:
        self._partial_timer = None
        self.tick(time.monotonic())

    def _start_stages(self) -> None:
        assert self._tg is not None and self.session.start is not None and self.session.flow_id
        for name in self.session.stages:
            stage = self._stages[name]
            feed = StageFeed(bytes_for_ms(stage.batch_ms), lambda _backlog: self._feed_drained())
            self._paths.add(name, stage.source, feed)
            ctx = StageContext(
                self.session.flow_id,
                self.session.start,
                feed,
                self.report,
                emit_audio=self._clean_audio,
                tenant=self.session.tenant,
            )
            self._contexts[name] = ctx
            self._tasks[name] = self._tg.create_task(self._run_stage(stage, ctx))

    async def _run_stage(self, stage: Stage, ctx: StageContext) -> None:
        try:
            if self.trace is None:
                await stage.run(ctx)
            else:
                with self.trace.stage(stage.name):  # its gRPC calls carry this span's traceparent
                    await stage.run(ctx)
        except asyncio.CancelledError:
            self._log_stage(stage.name, ctx, "stage stopped", "cancelled")
            raise
        except Exception as exc:
            cause = root_cause(exc)
            log.warning(
                "stage failed",
                exc_info=cause,
                extra={"flowId": ctx.flow_id, "stage": stage.name, "err_code": type(cause).__name__},
            )
            self._log_stage(stage.name, ctx, "stage failed", type(cause).__name__)
            self.report(StageFailed(stage.name, describe(cause)))
            return
        self._log_stage(stage.name, ctx, "stage done", None)
        self.report(StageDone(stage.name))

    def _log_stage(self, name: StageName, ctx: StageContext, message: str, err_code: str | None) -> None:
        """One line per stage stream with the SPEC §7 fields: what the stage was given (docs/observability.md#logs)."""
        feed = ctx.feed
        log.info(
            message,
            extra={
                "flowId": ctx.flow_id,
                "stage": name,
                "seq": feed.last_seq,
                "sr": SAMPLE_RATE,
                "ns": feed.bytes_total // BYTES_PER_SAMPLE * NS_PER_SAMPLE,
                "bytes_in": feed.bytes_total,
                "lang": self.session.lang or None,
                "err_code": err_code,
            },
        )

    def _stop_stage(self, name: StageName) -> None:
        """The session gave up on the stage (it already counts as failed there)."""
        task = self._tasks.get(name)
        if task is not None:
            task.cancel()
        metrics.STAGE_FAILURES.labels(name).inc()
        self._paths.remove(name)

    async def _write_loop(self) -> None:
        ended = False
        while True:
            item = await self._out.get()
            if item is _CLOSE:
                if self.session.awaiting_resume:
                    self._close_queued = False  # queued again once the client is back or the window ends
                    continue
                if self.session.handed_over or await self._closed_for_good():
                    break
                continue
            kind, text = item
            if self._before_end is not None and kind == "end" and not ended:
                # e.g. the deferred transcription job is durable before the client hears `end`
                ended = True
                await self._before_end(self.session)
            conn = self.conn
            if conn is self._gone or self.session.output_abandoned:
                continue
            try:
                await conn.send(text)
            except ConnectionClosedError:
                self._gone = conn
                if conn is self.conn and self.session.state is State.CLOSED:
                    # The reader has stopped: the client may come back for the rest (its `end`).
                    self.session.receive_disconnect(time.monotonic(), dropped=conn.dropped)
                    self.pump()
        self.closed.set()
        self._wake.set()

    async def _closed_for_good(self) -> bool:
        """Close the client's connection after the last event. False when the session goes on waiting:
        the close handshake failed (a client gone without a word may not have the `end`) and the client
        may resume, or a resume moved the session to another connection meanwhile."""
        s, conn = self.session, self.conn
        code, reason = s.close or (1000, "end")
        with contextlib.suppress(ConnectionClosedError):
            await conn.close(int(code), reason)
        if conn is not self.conn:
            return False
        if conn.dropped:
            s.receive_disconnect(time.monotonic(), dropped=True)
            self._close_queued = False
            self.pump()
            return not s.awaiting_resume
        return True


def root_cause(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups: what a stage's task group raised."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return f"{type(exc).__name__}: {exc}"
