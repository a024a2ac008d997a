"""The gateway's archive spool without sockets: its budget and retry schedule, its files, and the
transcript endpoint's view of a record the archive took late."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.recordings.policy import RetrySchedule, SpoolBudget
from orchestrator.recordings.spool import RecordingFiles, namespace
from orchestrator.transcripts.store import Job, Record
from orchestrator.transcripts.view import transcript_response
from tests.clock import T0

pytestmark = pytest.mark.unit


def test_budget_refuses_what_passes_the_limit_and_zero_is_off() -> None:
    budget = SpoolBudget(100)
    assert budget.enabled and budget.reserve(60) and not budget.reserve(41) and budget.reserve(40)
    budget.release(70)
    assert budget.used == 30
    budget.release(1000)
    assert budget.used == 0
    assert not SpoolBudget(0).enabled


def test_retry_schedule_doubles_to_its_cap() -> None:
    assert [RetrySchedule(1, 10).delay_s(n) for n in (1, 2, 3, 4, 5, 10_000)] == [1, 2, 4, 8, 10, 10]


def test_files_seal_what_a_killed_gateway_left_and_list_oldest_first(tmp_path: Path) -> None:
    files = RecordingFiles(tmp_path)
    files.prepare()
    first = files.create("f1", "tenant-a")
    with files.open(first) as f:
        files.append(f, b"\x01\x00" * 10)
    second = files.create("f1", "tenant-a")  # a later session of the same flow
    files.seal(second)
    assert files.sealed() == [second]  # the first one is still being written
    assert first.pcm.parent.name == namespace("tenant-a") and namespace("") == "public"
    assert [r.pcm for r in RecordingFiles(tmp_path).prepare()] == [first.pcm, second.pcm]
    assert files.sealed() == [first, second] and json.loads(first.meta.read_text())["sealed"] is True
    assert files.size_bytes() == 20
    files.discard(first)
    assert files.sealed() == [second] and not first.pcm.exists()


def test_the_endpoint_shows_a_pending_record_then_its_url() -> None:
    pending = Record("f1", "", "pending", "", T0, T0)
    status, body = transcript_response("f1", None, pending)
    assert status == 200 and body["status"] == "pending"
    assert body["record_status"] == "pending" and body["record_url"] is None and body["finals"] == []
    stored = Record("f1", "", "stored", "http://h/r/f1.flac", T0, T0 + 3)
    status, body = transcript_response("f1", None, stored)
    assert status == 200 and body["status"] == "done" and body["record_url"] == "http://h/r/f1.flac"
    job = Job("f1", "http://h/r/f1.flac", "en", "d", "pending", 0, T0, "", None, T0, T0)
    status, body = transcript_response("f1", job, stored)
    assert body["status"] == "pending" and body["record_status"] == "stored"  # the transcript is still to come
    assert "record_url" not in transcript_response("f1", job)[1]  # no late record: the view as before
