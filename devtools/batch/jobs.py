"""What `speechgw-batch` does without I/O of its own: which files the arguments name, where each
file's outputs go, what the `.done` marker says, what an outcome means for a retry, and the outputs.

A job is done when its `.done` marker (JSON, written last, after every output) names the same
content (size and mtime, else the SHA-256) and every format asked for exists.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.transcripts.srt import to_srt
from orchestrator.transcripts.vtt import to_vtt

__all__ = [
    "FORMATS",
    "MEDIA_SUFFIXES",
    "Backoff",
    "Job",
    "Marker",
    "Verdict",
    "discover",
    "judge",
    "plan",
    "render",
]

FORMATS = ("srt", "vtt", "json")
# What a folder is searched for (a file named on the command line is taken whatever its name).
AUDIO_SUFFIXES = {
    *(".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".wma", ".aif", ".aiff"),
    *(".aifc", ".au", ".snd", ".caf", ".w64", ".rf64", ".mka", ".amr", ".ac3", ".spx", ".webm"),
}
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mkv", ".mov", ".avi", ".wmv", ".mpg", ".mpeg", ".ts", ".mts", ".3gp", ".flv"}
MEDIA_SUFFIXES = frozenset(AUDIO_SUFFIXES | VIDEO_SUFFIXES)
GLOB_CHARS = frozenset("*?[")
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """An input file and the folder its output path is relative to (with --out)."""

    path: Path
    root: Path


@dataclass(frozen=True)
class Job:
    source: Path
    base: Path
    """outputs are `base` + `.srt`, `.vtt`, `.json`, `.done`"""

    def output(self, fmt: str) -> Path:
        return self.base.with_name(self.base.name + "." + fmt)

    @property
    def marker(self) -> Path:
        return self.output("done")


def _expand(arg: str, missing: list[str]) -> list[Source]:
    if arg.startswith("@"):
        listed = Path(arg[1:])
        try:
            lines = listed.read_text(encoding="utf-8").splitlines()
        except OSError:
            missing.append(arg)
            return []
        entries = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        return [s for entry in entries for s in _expand(str(listed.parent / entry), missing)]
    path = Path(arg)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
        return [Source(p, path) for p in found]
    if path.is_file():
        return [Source(path, path.parent)]
    if GLOB_CHARS & set(arg):
        hits = sorted(Path(h) for h in glob.glob(arg, recursive=True))
        files = [h for h in hits if h.is_file()]
        if files:
            return [Source(h, Path(os.path.commonpath([str(f.parent) for f in files]))) for h in files]
    missing.append(arg)
    return []


def discover(args: Iterable[str]) -> tuple[list[Source], list[str]]:
    """The files the arguments name (files; folders, searched recursively for media files; globs,
    `**` recursive; `@LIST`, a file of such arguments one a line, relative to its folder), each once,
    and the arguments that named nothing."""
    missing: list[str] = []
    seen: set[Path] = set()
    sources: list[Source] = []
    for arg in args:
        for s in _expand(arg, missing):
            key = s.path.resolve()
            if key not in seen:
                seen.add(key)
                sources.append(s)
    return sources, missing


def plan(sources: Sequence[Source], out: Path | None) -> list[Job]:
    """Where each file's outputs go: next to it, or under `out` at its path relative to its folder
    argument. Files whose outputs would collide (`a.wav` and `a.mp3`) keep their suffix (`a.mp3.srt`)."""
    stems: list[Path] = []
    for s in sources:
        rel = s.path.relative_to(s.root) if out is not None else s.path
        stems.append((out / rel if out is not None else rel).with_suffix(""))
    counts = Counter(stems)
    bases = [
        stem if counts[stem] == 1 else stem.with_name(stem.name + s.path.suffix)
        for s, stem in zip(sources, stems, strict=True)
    ]
    # Still the same (`x/a.wav` and `y/a.wav` into one --out): number them in argument order.
    counts, seen = Counter(bases), Counter[Path]()
    jobs = []
    for s, base in zip(sources, bases, strict=True):
        if counts[base] > 1:
            seen[base] += 1
            base = base.with_name(f"{base.name}-{seen[base]}")
        jobs.append(Job(s.path, base))
    return jobs


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Marker:
    """The `.done` marker: which content was transcribed, into which formats."""

    sha256: str
    size: int
    mtime_ns: int
    formats: tuple[str, ...]
    audio_s: float = 0.0

    def dumps(self) -> str:
        doc = {**self.__dict__, "formats": list(self.formats)}
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def load(cls, path: Path) -> Marker | None:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                sha256=str(doc["sha256"]),
                size=int(doc["size"]),
                mtime_ns=int(doc["mtime_ns"]),
                formats=tuple(doc["formats"]),
                audio_s=float(doc.get("audio_s", 0.0)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or unreadable: not done


def is_done(job: Job, formats: Sequence[str]) -> Marker | None:
    """The job's marker when the job is done for these formats and this content, else None. The file's
    size and mtime stand for its content when they are unchanged; otherwise its SHA-256 decides."""
    marker = Marker.load(job.marker)
    if marker is None or not set(formats) <= set(marker.formats):
        return None
    if not all(job.output(f).is_file() for f in formats):
        return None
    st = job.source.stat()
    if (st.st_size, st.st_mtime_ns) == (marker.size, marker.mtime_ns):
        return marker
    return marker if sha256_of(job.source) == marker.sha256 else None


def flow_id_of(job: Job, sha256: str) -> str:
    """One flowId per (content, path): a retry overwrites its own archive, never another file's."""
    where = hashlib.sha256(str(job.source.resolve()).encode()).hexdigest()[:8]
    return f"batch-{sha256[:24]}-{where}"


# Error codes after which the same file may succeed later (docs/errors.md): the gateway is busy,
# draining or limiting, the flowId is still held, the ASR could not take the session (record-only).
RETRYABLE = frozenset(
    {
        "too_many_sessions",
        "server_draining",
        "too_many_pending",
        "session_rate_limited",
        "flow_in_use",
        "ip_connection_limit",
        "ip_pending_limit",
        "ip_session_limit",
        "tenant_session_limit",
        "internal_error",
        "asr_unavailable",
    }
)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    retry: bool
    reason: str = ""
    warnings: tuple[str, ...] = ()


def judge(events: Sequence[dict[str, Any]]) -> Verdict:
    """What a session's events mean for its file: transcribed (non-fatal stage errors are warnings),
    worth another try, or failed for good."""
    errors = [e for e in events if e.get("type") == "error"]
    ended = bool(events) and events[-1].get("type") == "end"
    fatal = [e for e in errors if e.get("fatal") or e.get("code") == "asr_unavailable"]
    if fatal:
        code = str(fatal[0].get("code"))
        return Verdict(False, code in RETRYABLE, f"{code}: {fatal[0].get('message', '')}")
    if not ended:
        return Verdict(False, True, "the connection closed before `end`")
    reason = events[-1].get("reason")
    if reason != "flush":
        return Verdict(False, True, f"the session ended with reason {reason!r}")
    return Verdict(True, False, warnings=tuple(str(e.get("code")) for e in errors))


@dataclass
class Backoff:
    """Exponential backoff with full jitter: attempt n waits a random time up to min(cap, base * 2**n)."""

    base_s: float = 1.0
    cap_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random)

    def delay_s(self, attempt: int) -> float:
        return self.rng.uniform(0.5, 1.0) * min(self.cap_s, self.base_s * 2**attempt)


def render(
    job: Job, events: Sequence[dict[str, Any]], *, sha256: str, audio_s: float, warnings: Sequence[str]
) -> dict[str, str]:
    """Every output's text: SRT and WebVTT of the finals, and a JSON document of the transcript."""
    finals = [e for e in events if e.get("type") == "asr_final"]
    lid = next((e for e in events if e.get("type") == "lid"), None)
    lang = lid.get("lang") if lid else next((f.get("lang") for f in finals), None)
    doc = {
        "source": str(job.source),
        "sha256": sha256,
        "flowId": next((e.get("flowId") for e in events if e.get("type") == "ack"), None),
        "audio_s": round(audio_s, 3),
        "lang": lang,
        "text": " ".join(t for f in finals if (t := str(f.get("text", "")).strip())),
        "finals": finals,
        "warnings": list(warnings),
    }
    return {
        "srt": to_srt(finals),
        "vtt": to_vtt(finals),
        "json": json.dumps(doc, ensure_ascii=False, indent=1) + "\n",
    }


def write_atomic(path: Path, text: str) -> None:
    """Write beside, then rename: a reader (or a rerun after Ctrl-C) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
