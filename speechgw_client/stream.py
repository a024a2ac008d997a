"""Stream audio in one call: `stream_pcm` sends a whole buffer, paced (real time, N x, or as fast as
the gateway takes it), `stream_live` a live source's blocks as they come; each sends `flush` at the end
and returns every event with when it was read. A connection that drops is resumed
(docs/protocol.md#resume): the caller sees one stream of events, each once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from speechgw_client.audio import BYTES_PER_S, SAMPLE_RATE
from speechgw_client.events import Ack, AsrFinal, End, Event, ResumeAnswer
from speechgw_client.live import KEEP_S, AudioBacklog, LiveFeed
from speechgw_client.session import ConnectError, Session, SessionClosed, TokenVia, connect

__all__ = ["ResumePolicy", "StreamResult", "send_paced", "stream_live", "stream_pcm"]
ABNORMAL_CLOSURE = 1006  # the connection was lost without a close frame (RFC 6455 §7.1.5): resumable


@dataclass
class StreamResult:
    """What came back: `events` are the messages as received (decoded JSON), `typed` the same as
    event classes; `received_at[i]` is when `events[i]` was read (`time.monotonic()`)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    typed: list[Event] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    received_at: list[float] = field(default_factory=list)
    first_audio_at: float | None = None
    audio_s_sent: float = 0.0
    resumes: list[Ack] = field(default_factory=list)
    """the `ack` of each resume after a dropped connection (docs/protocol.md#resume)"""

    def add(self, event: Event) -> None:
        self.typed.append(event)
        self.events.append(event.raw)
        self.received_at.append(event.received_at if event.received_at is not None else time.monotonic())

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    @property
    def finals(self) -> list[AsrFinal]:
        return [e for e in self.typed if isinstance(e, AsrFinal)]

    @property
    def ok(self) -> bool:
        """The stream ended with `end` and no `error` came."""
        return bool(self.events) and self.events[-1].get("type") == "end" and not self.of_type("error")


@dataclass(frozen=True)
class ResumePolicy:
    """How `stream_pcm` and `stream_live` come back when their connection drops (docs/protocol.md#resume):
    after each drop, up to `attempts` reconnections, the first after `backoff_s`, each next one
    `backoff_factor` times later, at most `backoff_max_s`; a resume that succeeds starts the count again.
    The gateway waits `RESUME_WINDOW_S` (30 s) for the client: the default tries for about 8 s."""

    attempts: int = 5
    backoff_s: float = 0.25
    backoff_factor: float = 2.0
    backoff_max_s: float = 4.0

    def delay_s(self, attempt: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_s * self.backoff_factor**attempt))


DEFAULT_RESUME = ResumePolicy()


async def send_paced(
    session: Session,
    pcm: bytes,
    *,
    chunk_ms: int = 20,
    speed: float = 1.0,
    finalize_at_s: Sequence[float] = (),
    offset: int = 0,
    t0: float | None = None,
) -> float:
    """Send `pcm` from byte `offset` in `chunk_ms` chunks at `speed` x real time (0: as fast as the
    gateway takes it), with a `finalize` after each audio position in `finalize_at_s`. The pace keeps
    to the clock started at `t0` (now when None): audio that is late (after a reconnect) goes at once.
    Returns `t0`."""
    chunk = SAMPLE_RATE * chunk_ms // 1000 * 2
    finalize_after = sorted(b for b in (int(s * SAMPLE_RATE) * 2 for s in finalize_at_s) if b > offset)
    t0 = time.monotonic() if t0 is None else t0
    for off in range(offset, len(pcm), chunk):
        if speed > 0:
            delay = t0 + off / BYTES_PER_S / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await session.send(pcm[off : off + chunk])
        while finalize_after and finalize_after[0] <= off + chunk:
            finalize_after.pop(0)
            await session.finalize()
    return t0


async def stream_pcm(
    url: str,
    pcm: bytes,
    *,
    start: Mapping[str, Any] | None = None,
    chunk_ms: int = 20,
    speed: float = 1.0,
    flush: bool = True,
    on_event: Callable[[Event], None] | None = None,
    on_resume: Callable[[Ack], None] | None = None,
    open_timeout_s: float = 10.0,
    token: str | None = None,
    token_via: TokenVia | str = "header",
    ca_file: str | Path | None = None,
    finalize_at_s: Sequence[float] = (),
    resume: ResumePolicy | None = DEFAULT_RESUME,
) -> StreamResult:
    """Open a session (`start` fields as given), send the audio paced at `speed` (0 = as fast as
    possible), then `flush` unless told not to; collect events until the gateway closes.

    When the connection drops (closed without a close frame), it reconnects as `resume` says and
    resumes the session (docs/protocol.md#resume): the audio goes on from where the gateway's `ack`
    says, and each event reaches `result` and `on_event` once, in `seq` order; `on_resume` sees each
    resume's `ack`. A `flowId` is made up when `start` has none (a resume names its flow).
    `resume=None`: no reconnection."""
    result = StreamResult()
    run = _Run(result, _Buffer(pcm, chunk_ms, speed, tuple(finalize_at_s)), on_event, on_resume)
    connection = _Connection(url, token, token_via, ca_file, open_timeout_s, chunk_ms)
    await run.until_closed(connection, start, flush=flush, resume=resume)
    return result


async def stream_live(
    url: str,
    blocks: AsyncIterable[bytes],
    *,
    start: Mapping[str, Any] | None = None,
    chunk_ms: int = 20,
    flush: bool = True,
    on_event: Callable[[Event], None] | None = None,
    on_resume: Callable[[Ack], None] | None = None,
    open_timeout_s: float = 10.0,
    token: str | None = None,
    token_via: TokenVia | str = "header",
    ca_file: str | Path | None = None,
    resume: ResumePolicy | None = DEFAULT_RESUME,
    keep_s: float = KEEP_S,
) -> StreamResult:
    """`stream_pcm` for a live source: `blocks` (PCM16 LE / 16 kHz / mono, open-ended: a microphone)
    are sent as they come, in pieces of at most `chunk_ms`, until the source ends; then `flush`.

    One task reads the source for the whole stream, so blocks recorded while the connection is down
    wait and go at once after the resume. The audio sent is kept for a resume, `keep_s` of it at most
    (the gateway's 30 s `RESUME_WINDOW_S` and a margin; less once a resume's `ack` says the gateway has
    it, see `AudioBacklog`). The source is read until it ends or the session does; the caller closes
    it (`contextlib.aclosing`). An error of the source is raised once the session has ended with the
    audio up to it."""
    result = StreamResult()
    feed = LiveFeed(AudioBacklog(keep_bytes=int(keep_s * BYTES_PER_S)), chunk_bytes=SAMPLE_RATE * chunk_ms // 1000 * 2)
    run = _Run(result, feed, on_event, on_resume)
    connection = _Connection(url, token, token_via, ca_file, open_timeout_s, chunk_ms)
    reading = asyncio.create_task(feed.read(blocks), name="speechgw-client-live-source")
    try:
        await run.until_closed(connection, start, flush=flush, resume=resume)
    finally:
        reading.cancel()  # the session has ended: stop recording
        await asyncio.wait([reading])
        failed = None if reading.cancelled() else reading.exception()  # read even when raising another
    if failed is not None:
        raise failed
    return result


class _Audio(Protocol):
    async def send(self, session: Session, offset: int, t0: float) -> None:
        """Send the audio from byte `offset` to its end; the first byte of the stream went at `t0`."""


@dataclass(frozen=True)
class _Buffer:
    """A whole buffer, paced (`send_paced`)."""

    pcm: bytes
    chunk_ms: int
    speed: float
    finalize_at_s: tuple[float, ...]

    async def send(self, session: Session, offset: int, t0: float) -> None:
        await send_paced(
            session,
            self.pcm,
            chunk_ms=self.chunk_ms,
            speed=self.speed,
            finalize_at_s=self.finalize_at_s,
            offset=offset,
            t0=t0,
        )


@dataclass(frozen=True)
class _Connection:
    """How each connection of a stream is opened (`connect`'s arguments)."""

    url: str
    token: str | None
    token_via: TokenVia | str
    ca_file: str | Path | None
    open_timeout_s: float
    chunk_ms: int


class _Run:
    """One stream over one or more connections: what was delivered, what was sent."""

    def __init__(
        self,
        result: StreamResult,
        audio: _Audio,
        on_event: Callable[[Event], None] | None,
        on_resume: Callable[[Ack], None] | None,
    ) -> None:
        self.result, self.audio, self.on_event, self.on_resume = result, audio, on_event, on_resume
        self.last_seq = 0  # the newest event delivered
        self.sent_bytes = 0  # audio handed to a connection
        self.ended = False
        self.resumed = False  # the last connection resumed the session
        self.t0: float | None = None

    async def until_closed(
        self, conn: _Connection, start: Mapping[str, Any] | None, *, flush: bool, resume: ResumePolicy | None
    ) -> None:
        """Connect, stream, and after each drop reconnect and resume as `resume` says, until the
        gateway closes the session (or cannot be reached again)."""
        fields = dict(start or {})
        if resume is not None and not fields.get("flowId"):
            fields["flowId"] = uuid.uuid4().hex
        request: dict[str, Any] | None = None
        attempt = 0
        while True:
            try:
                async with connect(
                    conn.url,
                    token=conn.token,
                    token_via=conn.token_via,
                    chunk_ms=conn.chunk_ms,
                    start={**fields, "resume": request} if request is not None else fields,
                    ca_file=conn.ca_file,
                    open_timeout_s=conn.open_timeout_s,
                ) as session:
                    await self.over(session, request is not None, flush)
                self.result.close_code = session.close_code
                self.result.close_reason = session.close_reason
                dropped = not self.ended and session.close_code == ABNORMAL_CLOSURE
            except ConnectError:
                if request is None:
                    raise  # the gateway cannot be reached at all: nothing to resume
                dropped = True
            if self.resumed:
                attempt = 0
            if not dropped or resume is None or attempt >= resume.attempts:
                break
            await asyncio.sleep(resume.delay_s(attempt))
            attempt += 1
            request = {"last_seq": self.last_seq, "audio_s": self.sent_bytes / BYTES_PER_S}
        self.result.audio_s_sent = self.sent_bytes / BYTES_PER_S

    async def over(self, session: Session, resuming: bool, flush: bool) -> None:
        """Collect the events of one connection while sending the audio (from where the resume's `ack` says)."""
        answer: asyncio.Future[ResumeAnswer | None] = asyncio.get_running_loop().create_future()
        self.resumed = False

        async def send() -> None:
            offset, audio_ended = 0, False
            if resuming:
                resumed = await answer
                if resumed is None:
                    return
                offset, audio_ended = resumed.resume_from_bytes, resumed.audio_ended
            try:
                if self.t0 is None:
                    self.t0 = self.result.first_audio_at = time.monotonic()
                if not audio_ended:
                    await self.audio.send(session, offset, self.t0)
                    if flush:
                        await session.flush()
            except SessionClosed:
                pass  # the gateway ended the session, or the connection dropped; the events say which
            finally:
                self.sent_bytes = max(self.sent_bytes, offset + session.progress.audio_bytes_sent)

        async with asyncio.TaskGroup() as tg:
            sending = tg.create_task(send())
            async for event in session.events():
                if isinstance(event, Ack) and event.resume is not None:
                    self._resumed(event)
                    if not answer.done():
                        answer.set_result(event.resume)
                else:
                    self._deliver(event)
            if not answer.done():
                answer.set_result(None)  # closed before answering: refused, or dropped again
            sending.cancel()  # the connection is closed: a live source's sender may be waiting for a block

    def _resumed(self, ack: Ack) -> None:
        self.resumed = True
        self.result.resumes.append(ack)
        if self.on_resume is not None:
            self.on_resume(ack)

    def _deliver(self, event: Event) -> None:
        if event.seq is not None:
            if event.seq <= self.last_seq:
                return  # delivered before the connection dropped
            self.last_seq = event.seq
        self.ended = self.ended or isinstance(event, End)
        self.result.add(event)
        if self.on_event is not None:
            self.on_event(event)
