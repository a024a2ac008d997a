"""Session audio kept on the gateway's disk while the archive cannot take it (SPEC §4: no accepted
audio lost through a single fault; docs/storage.md).

Layout under `ARCHIVE_SPOOL_DIR`, one pair per session (`<name>` = `<ns>/<seq>-<flowId>`, `<ns>` the
tenant's namespace as the archive's keys have it, `<seq>` wall-clock ns so names sort by age):
  <name>.pcm    the session's PCM16 LE 16 kHz mono, every block as the session accepted it
  <name>.json   {"flow_id", "tenant", "sealed"}: sealed once the session's audio is complete
`RecordingFiles` is blocking (use it from an executor); `ArchiveSpool` is its face for the event loop,
with the budget and the metrics; `SpoolWriter` writes one session's recording.

A live recording's file stays open; what its session accepted goes to it with the spool's next write
turn (within `write_interval_s`, 10 ms), one write(2) per file and turn. The page cache keeps what was
written through a killed gateway (SIGKILL), so the next gateway finds all the audio it had accepted but
the last turn's. Only `seal` waits for the disk (fsync).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from orchestrator.recordings.policy import SpoolBudget

T = TypeVar("T")
_counter = itertools.count()


def namespace(tenant: str) -> str:
    """The tenant's folder, the archive's key namespace (services/compress/session.py)."""
    return hashlib.sha256(tenant.encode()).hexdigest()[:32] if tenant else "public"


@dataclass(frozen=True)
class SpooledRecording:
    pcm: Path
    flow_id: str
    tenant: str

    @property
    def meta(self) -> Path:
        return self.pcm.with_suffix(".json")


class RecordingFiles:
    """The spool directory. Blocking calls."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def prepare(self) -> list[SpooledRecording]:
        """Create the folder; seal what a killed gateway left open (the audio it had accepted is kept
        and uploaded like any other); return every recording, oldest first."""
        self.root.mkdir(parents=True, exist_ok=True)
        found = []
        for meta in sorted(self.root.glob("*/*.json"), key=lambda p: p.name):
            rec = self._load(meta)
            if rec is None:
                continue
            if not json.loads(meta.read_text()).get("sealed"):
                self.seal(rec)
            found.append(rec)
        return found

    def create(self, flow_id: str, tenant: str) -> SpooledRecording:
        folder = self.root / namespace(tenant)
        folder.mkdir(parents=True, exist_ok=True)
        seq = f"{time.time_ns():020d}{next(_counter) % 1000:03d}"
        rec = SpooledRecording(folder / f"{seq}-{flow_id}.pcm", flow_id, tenant)
        rec.pcm.touch(exist_ok=False)
        self._write_meta(rec, sealed=False)
        return rec

    @staticmethod
    def open(rec: SpooledRecording) -> BinaryIO:
        """The recording's file for appends, unbuffered: each `append` is a write(2)."""
        return rec.pcm.open("ab", buffering=0)

    @staticmethod
    def append(f: BinaryIO, pcm: bytes) -> None:
        view = memoryview(pcm)
        while view:
            view = view[f.write(view) or 0 :]

    def seal(self, rec: SpooledRecording, f: BinaryIO | None = None) -> None:
        """The recording is complete: its bytes and then its sealed mark reach the disk (`f`: the
        recording's file still open for appends, closed here)."""
        if f is not None:
            with f:
                os.fsync(f.fileno())
        else:
            with rec.pcm.open("rb+") as g:
                os.fsync(g.fileno())
        self._write_meta(rec, sealed=True)

    @staticmethod
    def discard(rec: SpooledRecording, f: BinaryIO | None = None) -> None:
        if f is not None:
            f.close()
        rec.meta.unlink(missing_ok=True)
        rec.pcm.unlink(missing_ok=True)

    def sealed(self) -> list[SpooledRecording]:
        """Sealed recordings, oldest first (a flow's later session is uploaded after its earlier one)."""
        out = []
        for meta in sorted(self.root.glob("*/*.json"), key=lambda p: p.name):
            with contextlib.suppress(OSError, ValueError):
                if json.loads(meta.read_text()).get("sealed"):
                    rec = self._load(meta)
                    if rec is not None:
                        out.append(rec)
        return out

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*/*.pcm") if p.is_file())

    @staticmethod
    def read(rec: SpooledRecording, offset: int, size: int) -> bytes:
        with rec.pcm.open("rb") as f:
            f.seek(offset)
            return f.read(size)

    @staticmethod
    def _load(meta: Path) -> SpooledRecording | None:
        try:
            body = json.loads(meta.read_text())
            rec = SpooledRecording(meta.with_suffix(".pcm"), str(body["flow_id"]), str(body["tenant"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return rec if rec.pcm.is_file() else None

    @staticmethod
    def _write_meta(rec: SpooledRecording, sealed: bool) -> None:
        tmp = rec.meta.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"flow_id": rec.flow_id, "tenant": rec.tenant, "sealed": sealed}))
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(rec.meta)


class SpoolWriter:
    """One session's recording, written as the session accepts its audio.

    `take` runs on the event loop once per accepted block and only queues the bytes; the spool's
    next write turn (`ArchiveSpool.due`) writes them to the file, in the executor, created with the
    first audio and kept open until `seal`. `kept` turns false for good once the budget refused a
    block or the disk failed: from then on that session's audio is not kept (its file is removed).
    Between write turns the writer is the loop's; during one its file is the executor's.
    """

    def __init__(self, spool: ArchiveSpool, flow_id: str, tenant: str) -> None:
        self.spool, self.flow_id, self.tenant = spool, flow_id, tenant
        self.rec: SpooledRecording | None = None  # the file, once the first audio is written
        self.bytes = 0
        self.kept = True
        self.is_due = False  # queued for the next write turn
        self.in_turn = False  # in the write turn under way
        self._queued = bytearray()
        self._remove = False  # the next turn removes the file instead of writing
        self._error: BaseException | None = None
        self._file: BinaryIO | None = None
        self._closed = False  # sealed (or being sealed): nothing more is taken

    def take(self, pcm: bytes) -> None:
        """An accepted block: to the file with the next write turn."""
        if not self.kept or self._closed or not pcm:
            return
        if self._error is not None or not self.spool.budget.reserve(len(pcm)):
            self._drop()
            return
        if not self.bytes:
            self.spool.recordings += 1  # a recording from its first byte on
        self.bytes += len(pcm)
        self._queued += pcm
        self.spool.due(self)
        self.spool.refresh()

    async def flush(self) -> None:
        """Wait until every byte taken is in the file; a write that failed drops the recording."""
        while self.is_due or self.in_turn:
            await self.spool.write_now()
        if self._error is not None and self.kept:
            self._drop()
            await self.flush()

    async def seal(self) -> None:
        """Take nothing more; the recording reaches the disk, marked complete."""
        self._closed = True
        await self.flush()
        if self.rec is None or not self.kept:
            return  # nothing was written, or it was dropped
        f, self._file = self._file, None
        await self.spool.run(self.spool.files.seal, self.rec, f)

    async def discard(self) -> None:
        """The archive has the session (or the spool cannot keep it): forget the file."""
        if self.kept:
            self._closed = True
            await self.flush()
            if not self.kept:
                return  # a failed write dropped it meanwhile
            self.kept = False
            f, self._file = self._file, None
            if self.rec is not None:
                await self.spool.run(self.spool.files.discard, self.rec, f)
            self._forget()

    def queued_out(self) -> tuple[bytes, bool]:
        """For the write turn: the bytes queued, and whether the file is to be removed instead."""
        out = bytes(self._queued), self._remove
        self._queued.clear()
        self.is_due, self.in_turn = False, True
        return out

    def write_out(self, pcm: bytes, remove: bool) -> None:
        """In the executor, during a write turn: append `pcm` (creating the file first), or remove it."""
        try:
            if remove:
                if self.rec is not None:
                    f, self._file = self._file, None
                    self.spool.files.discard(self.rec, f)
                    self.rec = None
                return
            if self._error is not None:
                return
            if self._file is None:
                self.rec = self.spool.files.create(self.flow_id, self.tenant)
                self._file = self.spool.files.open(self.rec)
            self.spool.files.append(self._file, pcm)
        except OSError as exc:
            self._error = exc

    def turn_done(self, failure: BaseException | None) -> None:
        """The write turn is over (`failure`: the job itself failed, which drops the recording)."""
        self.in_turn = False
        if failure is not None and self._error is None:
            self._error = failure

    def _drop(self) -> None:
        """Refused by the budget, or the disk failed: the next write turn removes the file."""
        self.kept = False
        self.spool.refused()
        self._queued.clear()
        self._remove = True
        self.spool.due(self)
        self._forget()

    def _forget(self) -> None:
        if self.bytes:
            self.spool.forget(self.bytes)


class ArchiveSpool:
    """`RecordingFiles` for the event loop: every file call in `executor`, within `budget`; `on_change`
    is told the spool's size and recording count (the metrics).

    The writers' blocks go to their files in write turns: one executor job writes what every writer
    queued since the last turn, one turn at a time (so each file gets its blocks in order), a turn at
    most every `write_interval_s` while audio comes. A thread hop per block would cost the gateway more
    than the rest of a session's audio path; a turn every 10 ms keeps what a killed gateway had not
    written yet to those milliseconds.
    """

    def __init__(
        self,
        files: RecordingFiles,
        budget: SpoolBudget,
        executor: Executor,
        on_change: Callable[[int, int], None] | None = None,
        on_refused: Callable[[], None] | None = None,
        *,
        write_interval_s: float = 0.01,
    ) -> None:
        self.files, self.budget, self.executor = files, budget, executor
        self._on_change, self._on_refused = on_change, on_refused
        self.write_interval_s = write_interval_s
        self.recordings = 0
        self._due: list[SpoolWriter] = []
        self._next_turn: asyncio.TimerHandle | None = None
        self._turn: asyncio.Future[None] | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def prepare(self) -> list[SpooledRecording]:
        found = await self.run(self.files.prepare)
        self.budget.used = await self.run(self.files.size_bytes)
        self.recordings = len(found)
        self.refresh()
        return found

    def writer(self, flow_id: str, tenant: str) -> SpoolWriter | None:
        """A writer for a new session's audio (its file is created with the first audio); None when
        the spool is off."""
        return SpoolWriter(self, flow_id, tenant) if self.budget.enabled else None

    def due(self, writer: SpoolWriter) -> None:
        """`writer` has something for the next write turn."""
        if writer.is_due:
            return
        writer.is_due = True
        self._due.append(writer)
        if self._next_turn is None and self._turn is None:
            self._next_turn = asyncio.get_running_loop().call_later(self.write_interval_s, self._start_turn)

    async def write_now(self) -> None:
        """Start a write turn now unless one is under way; wait for the one under way."""
        if self._turn is None and self._due:
            self._start_turn()
        if self._turn is not None:
            await asyncio.shield(self._turn)

    def _start_turn(self) -> None:
        if self._next_turn is not None:
            self._next_turn.cancel()
            self._next_turn = None
        turn = [(w, *w.queued_out()) for w in self._due]
        self._due = []
        loop = asyncio.get_running_loop()
        # Resolved once the writers know the turn is over (not when the job is: a flush woken between
        # the two would find its writer still in the turn, and wait on a future already done).
        over = self._turn = loop.create_future()
        job = loop.run_in_executor(self.executor, _write_turn, turn)
        job.add_done_callback(lambda job: self._turn_done(job, turn, over))

    def _turn_done(
        self, job: asyncio.Future[None], turn: list[tuple[SpoolWriter, bytes, bool]], over: asyncio.Future[None]
    ) -> None:
        self._turn = None
        failure = job.exception() if not job.cancelled() else asyncio.CancelledError()
        for writer, _, _ in turn:
            writer.turn_done(failure)
        over.set_result(None)
        if self._due:
            self._next_turn = asyncio.get_running_loop().call_later(self.write_interval_s, self._start_turn)

    def forget(self, size: int) -> None:
        """A recording of `size` bytes left the spool (stored by the archive, or dropped)."""
        self.budget.release(size)
        self.recordings = max(0, self.recordings - 1)
        self.refresh()

    def refused(self) -> None:
        if self._on_refused is not None:
            self._on_refused()

    def refresh(self) -> None:
        if self._on_change is not None:
            self._on_change(self.budget.used, self.recordings)


def _write_turn(turn: list[tuple[SpoolWriter, bytes, bool]]) -> None:
    """In the executor: every writer's queued bytes to its file, one write(2) each."""
    for writer, pcm, remove in turn:
        writer.write_out(pcm, remove)
