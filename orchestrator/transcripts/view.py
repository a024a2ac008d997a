"""The body of `GET /v1/flows/{flowId}/transcript`: a job's status, finals (with their words) and SRT, and
where the recording is (`record_url`, `record_status`) when the archive took the session late."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from orchestrator.core.protocol import valid_flow_id
from orchestrator.transcripts.store import Job, Record


def normalise_finals(finals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep {text, ts:[start, end], lang} of each final with text, and its `words` and `confidence`
    when it has them; raises ValueError (or KeyError, TypeError) on a bad shape."""
    out = []
    for f in finals:
        text = str(f["text"]).strip()
        start, end = (float(x) for x in f["ts"])
        if not text:
            continue
        final: dict[str, Any] = {
            "text": text,
            "ts": [round(start, 3), round(max(start, end), 3)],
            "lang": str(f.get("lang", "")),
        }
        if f.get("words"):
            final["words"] = [_word(w) for w in f["words"]]
        if f.get("confidence") is not None:
            final["confidence"] = round(float(f["confidence"]), 4)
        out.append(final)
    return out


def _word(w: dict[str, Any]) -> dict[str, Any]:
    start, end = float(w["start"]), float(w["end"])
    word: dict[str, Any] = {"word": str(w["word"]), "start": round(start, 3), "end": round(max(start, end), 3)}
    if w.get("confidence") is not None:
        word["confidence"] = round(float(w["confidence"]), 4)
    return word


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def transcript_view(job: Job, record: Record | None = None) -> dict[str, Any]:
    """The 200 body of `GET /v1/flows/{flowId}/transcript` for a deferred job (docs/transcripts.md)."""
    body = {
        "flowId": job.flow_id,
        "status": job.status,
        "attempts": job.attempts,
        "finals": job.finals if job.status == "done" else [],
        "srt": job.srt if job.status == "done" else "",
        "error": job.last_error or None,
        "updated_at": _iso(job.updated_at),
        "next_attempt_at": _iso(job.next_attempt_at) if job.status == "pending" else None,
    }
    if record is not None:
        body |= record_fields(record)
    return body


def record_view(record: Record) -> dict[str, Any]:
    """The 200 body for a flow the archive took late and that has no deferred job (its transcript
    went to the client live): `pending` until the spooled audio is stored, then `done`."""
    return {
        "flowId": record.flow_id,
        "status": "pending" if record.status == "pending" else "done",
        "attempts": 0,
        "finals": [],
        "srt": "",
        "error": None,
        "updated_at": _iso(record.updated_at),
        "next_attempt_at": None,
        **record_fields(record),
    }


def record_fields(record: Record) -> dict[str, Any]:
    return {"record_status": record.status, "record_url": record.record_url or None}


def transcript_response(flow_id: str, job: Job | None, record: Record | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body): 200 with the view, 400 for a malformed flowId, 404 when unknown."""
    if not valid_flow_id(flow_id):
        return 400, {
            "flowId": flow_id,
            "code": "invalid_flow_id",
            "message": "flowId must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        }
    if job is None and record is not None:
        return 200, record_view(record)
    if job is None:
        return 404, {
            "flowId": flow_id,
            "code": "transcript_not_found",
            "message": "no deferred transcription is known for this flowId",
        }
    return 200, transcript_view(job, record)
