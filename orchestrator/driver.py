"""Drives one Session over one WebSocket: the thin I/O adapter around the sans-I/O core.

One task group per session (STYLE §6): a writer task, one task per stage, and the reader in the
handler's own task. Nothing outlives the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from orchestrator import metrics
from orchestrator.core.events import (
    LangDetected,
    SpeechBoundary,
    StageDone,
    StageEvent,
    StageFailed,
    StageLatency,
)
from orchestrator.core.protocol import SAMPLE_RATE
from orchestrator.core.reframer import BYTES_PER_SAMPLE, AudioBlock
from orchestrator.core.session import Session, State
from orchestrator.stages.audio_paths import AudioPaths
from orchestrator.stages.base import Stage, StageContext, StageFeed

log = logging.getLogger(__name__)
_CLOSE = object()


class SessionDriver:
    def __init__(
        self,
        session: Session,
        ws: ServerConnection,
        stages: Sequence[Stage],
        stage_backlog_s: float,
        stage_timeout_s: float,
        route: Callable[[str, str], str] | None = None,
        before_end: Callable[[Session], Awaitable[None]] | None = None,
    ) -> None:
        self.session = session
        self.ws = ws
        self._stages = [s for s in stages if s.name in session.config.stages]
        self._backlog_bytes = int(stage_backlog_s * SAMPLE_RATE * BYTES_PER_SAMPLE)
        self._stage_timeout_s = stage_timeout_s
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self._paths = AudioPaths(SAMPLE_RATE)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._contexts: list[StageContext] = []
        self._partial_timer: asyncio.TimerHandle | None = None
        self._route = route
        self._before_end = before_end
        self._language: asyncio.Future[str] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._stages_started = False
        self._feeds_closed = False
        self._close_queued = False
        self._expiry: asyncio.TimerHandle | None = None
        self.closed = asyncio.Event()

    async def run(self) -> None:
        """Read client messages until the session closes or the client goes away."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._write_loop())
            self.pump()
            try:
                async for message in self.ws:
                    now = time.monotonic()
                    if isinstance(message, str):
                        self.session.receive_text(message, now)
                    else:
                        metrics.INGRESS_BYTES.inc(len(message))
                        self.session.receive_binary(message, now)
                    self.pump()
                    if self.session.state is State.CLOSED:
                        break
            except ConnectionClosed:
                pass
            self.session.receive_disconnect(time.monotonic())
            self.pump()
            await self.closed.wait()
            for task in self._tasks.values():
                task.cancel()
        for timer in (self._expiry, self._partial_timer):
            if timer is not None:
                timer.cancel()

    def tick(self, now: float) -> None:
        self.session.tick(now)
        self.pump()

    def pump(self) -> None:
        """Move everything the session produced to where it goes."""
        s = self.session
        if s.start is not None and self._tg is not None and not self._stages_started:
            self._stages_started = True
            self._start_stages()
        blocks = s.audio_to_stages()
        if blocks:
            for block in blocks:
                self._paths.push(block)
            self._check_backlog()
        if s.audio_ended and not self._feeds_closed:
            self._feeds_closed = True
            self._paths.end_of_audio()
            if s.pending_stages:
                self._expiry = asyncio.get_running_loop().call_later(self._stage_timeout_s, self._expire_stages)
        for event in s.events_to_send():
            metrics.EGRESS_EVENTS.labels(event["type"]).inc()
            if event["type"] == "error":
                metrics.ERRORS.labels(event["code"]).inc()
            self._out.put_nowait((event["type"], json.dumps(event, ensure_ascii=False)))
        due = s.partial_due_at
        if due is not None and self._partial_timer is None:
            self._partial_timer = asyncio.get_running_loop().call_later(
                max(0.0, due - time.monotonic()), self._release_partial
            )
        if s.close is not None and not self._close_queued:
            self._close_queued = True
            self._out.put_nowait(_CLOSE)

    def report(self, event: StageEvent) -> None:
        if isinstance(event, LangDetected) and event.source == "lid":
            event = self._decide_language(event.lang, event.score, "lid") or event
        if isinstance(event, (StageFailed, StageDone)) and event.stage == "lid":
            self._decide_language("", 0.0, "lid")  # no answer: the default route
        if isinstance(event, SpeechBoundary):
            for ctx in self._contexts:
                if ctx.on_boundary is not None:
                    ctx.on_boundary(event)
        elif isinstance(event, StageLatency):
            histogram = metrics.STAGE_LATENCY.get(event.stage)
            if histogram is not None:
                histogram.observe(event.ms)
        elif isinstance(event, StageFailed):
            metrics.STAGE_FAILURES.labels(event.stage).inc()
            self._paths.remove(event.stage)
        elif isinstance(event, StageDone):
            if event.stage == "denoise":
                self._paths.denoise_done()
            else:
                self._paths.remove(event.stage)  # e.g. LID after its answer: stop feeding it
        self.session.stage_event(event, time.monotonic())
        self.pump()

    def _clean_audio(self, block: AudioBlock) -> None:
        self._paths.clean_audio(block)
        self._check_backlog()

    def _check_backlog(self) -> None:
        for name, feed in list(self._paths.feeds().items()):
            if feed.overflowed and name in self.session.pending_stages:
                self._fail_stage(name, "fell behind the audio by more than the backlog limit")

    def _release_partial(self) -> None:
        self._partial_timer = None
        self.tick(time.monotonic())

    def _decide_language(self, lang: str, score: float, source: str) -> LangDetected | None:
        """Settle the session's language once; the ASR stage waits on it to pick its pool."""
        if self._language is None or self._language.done():
            return None
        self._language.set_result(lang)
        if not lang:
            return None
        assert self.session.start is not None
        pool = self._route(lang, self.session.start.domain) if self._route else ""
        return LangDetected(lang, score, source, pool)

    def _start_stages(self) -> None:
        assert self._tg is not None and self.session.start is not None and self.session.flow_id
        self._language = asyncio.get_running_loop().create_future()
        stages = self._stages
        pref = self.session.start.lang_pref
        if pref not in ("", "auto"):
            # hints.user_lang_pref overrides LID for routing (SPEC §2): LID is not asked at all.
            stages = [s for s in stages if s.name != "lid"]
            hinted = self._decide_language(pref, 1.0, "hint")
            if hinted is not None:
                self.session.stage_event(hinted, time.monotonic())
            self.session.stage_event(StageDone("lid"), time.monotonic())
        elif not any(stage.name == "lid" for stage in stages):
            self._decide_language("", 0.0, "lid")
        for stage in stages:
            batch = SAMPLE_RATE * stage.batch_ms // 1000 * BYTES_PER_SAMPLE
            feed = StageFeed(batch, self._backlog_bytes)
            if stage.source == "transform":
                self._paths.denoise = feed
            else:
                getattr(self._paths, stage.source)[stage.name] = feed
            ctx = StageContext(
                self.session.flow_id,
                self.session.start,
                feed,
                self.report,
                emit_audio=self._clean_audio,
                language=self._language,
            )
            self._contexts.append(ctx)
            self._tasks[stage.name] = self._tg.create_task(self._run_stage(stage, ctx))

    async def _run_stage(self, stage: Stage, ctx: StageContext) -> None:
        try:
            await stage.run(ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "stage failed",
                exc_info=exc,
                extra={"flowId": ctx.flow_id, "stage": stage.name, "err_code": type(exc).__name__},
            )
            self.report(StageFailed(stage.name, _describe(exc)))
            return
        self.report(StageDone(stage.name))

    def _fail_stage(self, name: str, why: str) -> None:
        task = self._tasks.get(name)
        if task is not None:
            task.cancel()
        self.report(StageFailed(name, why))

    def _expire_stages(self) -> None:
        for name in sorted(self.session.pending_stages):
            self._fail_stage(name, f"no answer within {self._stage_timeout_s:g} s of the end of audio")

    async def _write_loop(self) -> None:
        gone = False
        while True:
            item = await self._out.get()
            if item is _CLOSE:
                break
            kind, text = item
            if self._before_end is not None and kind == "end":
                # e.g. the deferred transcription job is durable before the client hears `end`
                await self._before_end(self.session)
            if gone:
                continue
            try:
                await self.ws.send(text)
            except ConnectionClosed:
                gone = True
        code, reason = self.session.close or (1000, "end")
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(int(code), reason)
        self.closed.set()


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return f"{type(exc).__name__}: {exc}"
