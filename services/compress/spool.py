"""On-disk spool (SPEC §4 reliability): archives being encoded, and archives waiting for storage.

Layout under COMPRESS_SPOOL_DIR (`<name>` is the archive name `<namespace>/<flow_id>`, session.py):
  pending/<name>/<seq>.<ext>.part  archive of a flow still streaming, encoded as the audio arrives
  pending/<name>/<seq>.<ext>       finished archive waiting for the store; the newest seq wins
Archives leave `pending/` only once the store has them, so a crash or an S3 outage loses nothing; a
`.part` a killed process left is recovered at the next start (what decodes of it becomes an archive).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, TypeVar

from services.compress.encoder import Encoded, StreamEncoder, salvage_archive
from services.compress.session import CONTENT_TYPES, EXTENSIONS, FLOW_ID_RE, NAMESPACE_RE, is_archive_name

FORMAT_OF_EXTENSION = {ext: fmt for fmt, ext in EXTENSIONS.items()}

_counter = itertools.count()
T = TypeVar("T")


class PendingSpool:
    """The spool directory. Blocking file-system calls: use from an executor."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pending_dir = root / "pending"

    def prepare(self) -> list[Path]:
        """Create the layout; return the `.part` files a killed process left (flows cut mid-stream),
        oldest first, for `recover`."""
        self.pending_dir.mkdir(parents=True, exist_ok=True)
        return sorted(self.pending_dir.glob("*/*/*.part"), key=lambda p: p.name)

    @staticmethod
    def recover(part: Path, sample_rate_hz: int, compression_level: float | None = None) -> Encoded | None:
        """Turn a `.part` into a finished archive of the audio that decodes in it, published under its
        own seq: older than any archive this process writes, so a later upload of the whole flow (the
        gateway re-sends a session it spooled) wins. None, and the file gone, when nothing decodes."""
        ext = part.with_suffix("").suffix.lstrip(".")
        fmt = FORMAT_OF_EXTENSION.get(ext)
        out = part.with_name(part.name.removesuffix(".part") + ".salvage")
        encoded = salvage_archive(part, out, fmt, sample_rate_hz, compression_level) if fmt else None
        part.unlink(missing_ok=True)
        if encoded is None:
            out.unlink(missing_ok=True)
            return None
        final = out.with_suffix("")  # <seq>.<ext>
        out.replace(final)
        return Encoded(final, encoded.bytes, encoded.duration_s, encoded.codec)

    def new_archive_path(self, name: str, ext: str) -> Path:
        """Create a fresh, empty `.part` file (seq = wall-clock ns + counter); `publish` renames it."""
        if not is_archive_name(name):
            raise ValueError(f"not an archive name: {name[:200]!r}")
        seq = f"{time.time_ns():020d}{next(_counter) % 1000:03d}"
        folder = self.pending_dir / name
        part = folder / f"{seq}.{ext}.part"
        for _ in range(3):  # `drop_upto` may remove the empty folder between mkdir and touch
            folder.mkdir(parents=True, exist_ok=True)
            try:
                part.touch(exist_ok=False)
                return part
            except FileNotFoundError:
                continue
        raise OSError(f"cannot create {part}")

    @staticmethod
    def publish(part: Path) -> Path:
        final = part.with_suffix("")  # drop ".part"
        part.replace(final)
        return final

    def pending_flows(self) -> list[str]:
        """Archive names with at least one finished archive waiting, oldest first."""
        flows = []
        for space in self.pending_dir.iterdir():
            if not (space.is_dir() and NAMESPACE_RE.fullmatch(space.name)):
                continue
            for folder in space.iterdir():
                name = f"{space.name}/{folder.name}"
                if folder.is_dir() and FLOW_ID_RE.fullmatch(folder.name) and self._archives(name):
                    flows.append((self._archives(name)[0].name, name))
        return [flow for _, flow in sorted(flows)]

    def newest(self, name: str) -> Path | None:
        archives = self._archives(name)
        return archives[-1] if archives else None

    def drop_upto(self, name: str, stored: Path) -> None:
        """Forget every archive of the flow up to the one just stored (older ones are superseded)."""
        for path in self._archives(name):
            if path.name <= stored.name:
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: another call of the flow is writing
            (self.pending_dir / name).rmdir()

    def count(self) -> int:
        return sum(1 for flow in self.pending_flows() for _ in self._archives(flow))

    def _archives(self, name: str) -> list[Path]:
        folder = self.pending_dir / name
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix.lstrip(".") in CONTENT_TYPES)


class ArchiveWriter:
    """Feeds a flow's PCM to its StreamEncoder in the executor (STYLE §7), keeping at most `flush_bytes`
    in memory; the encoder is only ever touched by one thread at a time."""

    def __init__(
        self,
        part: Path,
        fmt: str,
        sample_rate_hz: int,
        compression_level: float | None,
        flush_bytes: int,
        executor: Executor,
    ) -> None:
        self.part = part
        self._args = (part, fmt, sample_rate_hz, compression_level)
        self.flush_bytes = flush_bytes
        self.executor = executor
        self._buf = bytearray()
        self._encoder: StreamEncoder | None = None
        self._inflight: Future[Any] | None = None  # the executor job, which a cancelled await leaves running

    async def append(self, pcm: bytes) -> None:
        self._buf += pcm
        if len(self._buf) >= self.flush_bytes:
            await self._run(self._write, bytes(self._buf))
            self._buf = bytearray()

    async def finish(self) -> Encoded:
        """Encode what is buffered, close the stream, fsync: the `.part` file is a complete archive."""
        data, self._buf = bytes(self._buf), bytearray()
        await self._run(self._write, data)
        assert self._encoder is not None
        return await self._run(self._encoder.close)

    def abort(self) -> None:
        """Drop the unfinished archive. If an executor job still runs (its await was cancelled), the
        encoder is closed after it, in that thread, so it is never used by two threads at once."""
        job = self._inflight
        if job is not None and not job.done():
            job.add_done_callback(lambda _: self._abort_now())
        else:
            self._abort_now()

    def _abort_now(self) -> None:
        if self._encoder is not None:
            self._encoder.abort()
        self.part.unlink(missing_ok=True)

    def _write(self, data: bytes) -> None:
        if self._encoder is None:
            self._encoder = StreamEncoder(*self._args)
        if data:
            self._encoder.write(data)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        self._inflight = job = self.executor.submit(fn, *args)
        return await asyncio.wrap_future(job)
