"""Session audio kept on the gateway's disk while the archive cannot take it (SPEC §4: no accepted
audio lost through a single fault; docs/storage.md).

Layout under `ARCHIVE_SPOOL_DIR`, one pair per session (`<name>` = `<ns>/<seq>-<flowId>`, `<ns>` the
tenant's namespace as the archive's keys have it, `<seq>` wall-clock ns so names sort by age):
  <name>.pcm    the session's PCM16 LE 16 kHz mono, as the archive stage sent it
  <name>.json   {"flow_id", "tenant", "sealed"}: sealed once the session's audio is complete
`RecordingFiles` is blocking (use it from an executor); `ArchiveSpool` is its face for the event loop,
with the budget and the metrics.
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
from typing import Any, TypeVar

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
    def append(rec: SpooledRecording, pcm: bytes) -> None:
        with rec.pcm.open("ab") as f:
            f.write(pcm)

    def seal(self, rec: SpooledRecording) -> None:
        """The recording is complete: its bytes and then its sealed mark reach the disk."""
        with rec.pcm.open("rb+") as f:
            os.fsync(f.fileno())
        self._write_meta(rec, sealed=True)

    @staticmethod
    def discard(rec: SpooledRecording) -> None:
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
    """One session's recording being written. `kept` turns false for good once the budget refused a
    write or the disk failed: from then on that session's audio is not kept."""

    def __init__(self, spool: ArchiveSpool, rec: SpooledRecording) -> None:
        self.spool, self.rec = spool, rec
        self.bytes = 0
        self.kept = True

    async def append(self, pcm: bytes) -> None:
        if not self.kept or not pcm:
            return
        if not self.spool.budget.reserve(len(pcm)):
            self.spool.refused()
            await self.discard()
            return
        self.bytes += len(pcm)
        try:
            await self.spool.run(self.spool.files.append, self.rec, pcm)
        except OSError:
            self.spool.refused()
            await self.discard()
        self.spool.refresh()

    async def seal(self) -> None:
        await self.spool.run(self.spool.files.seal, self.rec)

    async def discard(self) -> None:
        """The archive has the session (or the spool cannot keep it): forget the file."""
        if self.kept:
            self.kept = False
            await self.spool.run(self.spool.files.discard, self.rec)
            self.spool.forget(self.bytes)


class ArchiveSpool:
    """`RecordingFiles` for the event loop: every file call in `executor`, within `budget`; `on_change`
    is told the spool's size and recording count (the metrics)."""

    def __init__(
        self,
        files: RecordingFiles,
        budget: SpoolBudget,
        executor: Executor,
        on_change: Callable[[int, int], None] | None = None,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.files, self.budget, self.executor = files, budget, executor
        self._on_change, self._on_refused = on_change, on_refused
        self.recordings = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def prepare(self) -> list[SpooledRecording]:
        found = await self.run(self.files.prepare)
        self.budget.used = await self.run(self.files.size_bytes)
        self.recordings = len(found)
        self.refresh()
        return found

    async def open(self, flow_id: str, tenant: str) -> SpoolWriter | None:
        """A writer for a new session's audio; None when the spool is off or cannot create the file."""
        if not self.budget.enabled:
            return None
        try:
            rec = await self.run(self.files.create, flow_id, tenant)
        except OSError:
            self.refused()
            return None
        self.recordings += 1
        self.refresh()
        return SpoolWriter(self, rec)

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
