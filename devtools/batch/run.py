"""`speechgw-batch`: transcribe many files through the gateway, several at once, as fast as it goes.

    speechgw-batch talks/ --out subs --concurrency 4          # a folder, recursively
    speechgw-batch 'calls/**/*.mp3' @more.txt --formats srt   # a glob; a list file, one path a line

Each file is decoded (libsndfile, else ffmpeg: any audio, or the audio track of a video), streamed
at full speed, and its SRT, WebVTT and JSON transcripts written next to it (or under --out), then a
`.done` marker; a rerun skips what is done. Failed sessions are retried with backoff; a file that
cannot be decoded is reported and the others go on. Ctrl-C stops at once; a rerun resumes.
Exit status: 0 every file done, 1 some failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from devtools.batch.jobs import (
    FORMATS,
    Backoff,
    Job,
    Marker,
    discover,
    flow_id_of,
    is_done,
    judge,
    plan,
    render,
    sha256_of,
    write_atomic,
)
from devtools.client import DEFAULT_URL, DEV_CA, TOKEN_VIA
from devtools.devauth import default_token
from speechgw_client import ConnectError, DecodeError, audio_seconds, load_audio_async, stream_pcm

__all__ = ["BatchConfig", "Tally", "main", "run_batch"]

EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class BatchConfig:
    url: str = DEFAULT_URL
    formats: tuple[str, ...] = FORMATS
    concurrency: int = 4
    retries: int = 3
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0
    token: Callable[[], str | None] = default_token
    token_via: str = "header"
    ca_file: Path | None = None
    lang: str = "auto"
    domain: str = "default"
    chunk_ms: int = 100


@dataclass
class Tally:
    """How the batch went so far (also when it was interrupted)."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    retries: int = 0
    audio_s: float = 0.0
    """audio transcribed by this run (skipped files not counted)"""
    started_at: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        return self.done + self.skipped + len(self.failed)

    @property
    def realtime_factor(self) -> float:
        wall = time.monotonic() - self.started_at
        return self.audio_s / wall if wall > 0 else 0.0

    def summary(self, *, interrupted: bool = False) -> str:
        wall = time.monotonic() - self.started_at
        lines = [
            f"{'interrupted' if interrupted else 'finished'}: {self.done} transcribed, {self.skipped} already done, "
            f"{len(self.failed)} failed, {self.total - self.finished} left of {self.total} files",
            f"audio {self.audio_s / 3600:.3f} h ({self.audio_s:.1f} s) in {wall:.1f} s: "
            f"{self.realtime_factor:.1f}x real time; {self.retries} retries",
        ]
        lines += [f"failed: {path}: {reason}" for path, reason in self.failed]
        if interrupted:
            lines.append("rerun the same command to resume")
        return "\n".join(lines)


class Progress:
    """The progress bar (tqdm on a terminal): files, audio hours, real-time factor, ETA; per-file lines
    otherwise."""

    def __init__(self, tally: Tally, *, enabled: bool | None, stream: TextIO | None = None) -> None:
        from tqdm import tqdm

        self.tally = tally
        self.stream = stream = stream or sys.stderr
        self.bar = tqdm(
            total=tally.total,
            initial=tally.skipped,
            unit="file",
            dynamic_ncols=True,
            disable=not enabled if enabled is not None else not stream.isatty(),
            file=stream,
        )
        self._refresh()

    def _refresh(self) -> None:
        t = self.tally
        self.bar.set_postfix_str(f"{t.audio_s / 3600:.2f} h audio, {t.realtime_factor:.1f}x real time", refresh=True)

    def line(self, text: str) -> None:
        if self.bar.disable:
            print(text, file=self.stream, flush=True)
        else:
            self.bar.write(text, file=self.stream)

    def file_done(self, text: str, *, always: bool = False) -> None:
        self.bar.update(1)
        self._refresh()
        if always or self.bar.disable:
            self.line(text)

    def close(self) -> None:
        self.bar.close()


async def transcribe_one(job: Job, cfg: BatchConfig, tally: Tally, progress: Progress, backoff: Backoff) -> None:
    """Decode, stream (with retries), write the outputs and then the marker."""
    try:
        sha = await asyncio.to_thread(sha256_of, job.source)
        st = job.source.stat()
        pcm = await load_audio_async(job.source)
    except (DecodeError, OSError) as e:
        why = str(e).removeprefix(f"{job.source}: ")
        tally.failed.append((job.source, why))
        progress.file_done(f"FAILED {job.source}: {why}", always=True)
        return
    audio_s = audio_seconds(pcm)
    start: dict[str, Any] = {
        "flowId": flow_id_of(job, sha),
        "return": ["lid", "asr"],
        "hints": {"domain": cfg.domain, "user_lang_pref": cfg.lang},
    }
    reason = ""
    for attempt in range(cfg.retries + 1):
        if attempt:
            tally.retries += 1
            delay = backoff.delay_s(attempt - 1)
            progress.line(f"retry {attempt}/{cfg.retries} of {job.source} in {delay:.1f} s: {reason}")
            await asyncio.sleep(delay)
        t0 = time.monotonic()
        try:
            result = await stream_pcm(
                cfg.url,
                pcm,
                speed=0,
                chunk_ms=cfg.chunk_ms,
                start=start,
                token=cfg.token(),
                token_via=cfg.token_via,
                ca_file=cfg.ca_file,
            )
        except (ConnectError, OSError) as e:
            reason = f"cannot connect: {e}"
            continue
        verdict = judge(result.events)
        if verdict.ok:
            texts = render(job, result.events, sha256=sha, audio_s=audio_s, warnings=verdict.warnings)
            for fmt in cfg.formats:
                write_atomic(job.output(fmt), texts[fmt])
            marker = Marker(sha, st.st_size, st.st_mtime_ns, cfg.formats, round(audio_s, 3))
            write_atomic(job.marker, marker.dumps())
            tally.done += 1
            tally.audio_s += audio_s
            took = time.monotonic() - t0
            warn = f" (warnings: {', '.join(verdict.warnings)})" if verdict.warnings else ""
            progress.file_done(f"done {job.source}: {audio_s:.1f} s of audio in {took:.1f} s{warn}")
            return
        reason = verdict.reason
        if not verdict.retry:
            break
    tally.failed.append((job.source, reason))
    progress.file_done(f"FAILED {job.source}: {reason}", always=True)


async def run_batch(jobs: Sequence[Job], cfg: BatchConfig, tally: Tally, progress: Progress) -> None:
    """Transcribe `jobs` (those not yet done), `cfg.concurrency` at once; `tally` is kept up to date,
    so it is right after a cancellation too."""
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    backoff = Backoff(cfg.backoff_base_s, cfg.backoff_cap_s)

    async def worker() -> None:
        while not queue.empty():
            await transcribe_one(queue.get_nowait(), cfg, tally, progress, backoff)

    async with asyncio.TaskGroup() as tg:
        for _ in range(max(1, min(cfg.concurrency, len(jobs)))):
            tg.create_task(worker())


def pending_jobs(jobs: Sequence[Job], formats: Sequence[str]) -> tuple[list[Job], int]:
    """The jobs not done yet, and how many are."""
    todo = [job for job in jobs if is_done(job, formats) is None]
    return todo, len(jobs) - len(todo)


async def amain(jobs: list[Job], cfg: BatchConfig, *, progress_bar: bool | None) -> int:
    tally = Tally(total=len(jobs))
    todo, tally.skipped = await asyncio.to_thread(pending_jobs, jobs, cfg.formats)
    tally.started_at = time.monotonic()
    progress = Progress(tally, enabled=progress_bar)
    loop = asyncio.get_running_loop()
    work = asyncio.create_task(run_batch(todo, cfg, tally, progress))
    interrupted = False

    def stop() -> None:
        nonlocal interrupted
        interrupted = True
        work.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        await work
    except asyncio.CancelledError:
        if not interrupted:
            raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        progress.close()
    print(tally.summary(interrupted=interrupted), flush=True)
    if interrupted:
        return EXIT_INTERRUPTED
    return 1 if tally.failed else 0


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise argparse.ArgumentTypeError(f"formats are a comma list of {', '.join(FORMATS)}; got {text!r}")
    return formats


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="speechgw-batch", description=__doc__.split("\n")[0].split(": ", 1)[1])
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, folders (recursive), globs, or @LIST files")
    p.add_argument("--out", type=Path, default=None, help="write the outputs here (default: next to each file)")
    p.add_argument("--concurrency", type=int, default=4, help="files streamed at once (default 4)")
    p.add_argument("--formats", type=parse_formats, default=FORMATS, help="comma list of srt,vtt,json (default all)")
    p.add_argument("--retries", type=int, default=3, help="more tries of a failed session (default 3)")
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--lang", default="auto", help="hints.user_lang_pref")
    p.add_argument("--domain", default="default")
    p.add_argument("--token", default=None, help="JWT; default: $SPEECHGW_TOKEN, else minted from the dev key")
    p.add_argument("--token-via", choices=TOKEN_VIA, default="header")
    p.add_argument("--ca", type=Path, default=None, help=f"CA of a wss:// server (default {DEV_CA} if present)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="default: on a terminal")
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.retries < 0:
        p.error("--concurrency must be at least 1 and --retries at least 0")

    sources, missing = discover(args.paths)
    for arg in missing:
        print(f"nothing found at {arg}", file=sys.stderr)
    if not sources:
        print("no files to transcribe", file=sys.stderr)
        return 1
    fixed_token = args.token
    cfg = BatchConfig(
        url=args.url,
        formats=args.formats,
        concurrency=args.concurrency,
        retries=args.retries,
        token=(lambda: fixed_token) if fixed_token else default_token,
        token_via=args.token_via,
        ca_file=args.ca or (DEV_CA if DEV_CA.is_file() else None),
        lang=args.lang,
        domain=args.domain,
    )
    status = asyncio.run(amain(plan(sources, args.out), cfg, progress_bar=args.progress))
    return 1 if missing and status == 0 else status


if __name__ == "__main__":
    raise SystemExit(main())
