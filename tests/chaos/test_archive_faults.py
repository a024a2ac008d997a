"""No accepted audio is lost when the archive dies mid-stream (SPEC §4; issue 11 item 2): the gateway
keeps each session's audio in its spool and hands it to the archive when it is back, under the same
key; the archive recovers what its own spool held; every record URL is reachable afterwards."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.client import StreamResult, load_wav, stream_pcm
from devtools.stack import Stack
from tests.poll import seconds, wait_for
from tests.records import decoded_s, fetch, get_transcript

pytestmark = pytest.mark.chaos
FLOWS = ("archive-cut-a", "archive-cut-b")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    env = {
        "LOG_LEVEL": "WARNING",
        "ARCHIVE_RETRY_WINDOW_SEC": "4",
        "ARCHIVE_RETRY_BASE_SEC": "0.2",
        "ARCHIVE_RETRY_MAX_SEC": "1",
        "COMPRESS_SPOOL_FLUSH_BYTES": "16000",  # the archive encodes every half second: its parts hold audio
    }
    with Stack(("vad", "compress"), env=env, workdir=tmp_path) as running:
        yield running


def record_of(stack: Stack, flow_id: str) -> dict[str, Any]:
    status, body = get_transcript(stack.http_base, flow_id)
    assert status == 200, body
    return body


def archived_parts(stack: Stack) -> list[Path]:
    return list(Path(stack.env["COMPRESS_SPOOL_DIR"]).glob("pending/*/*/*.part"))


def wait_for_parts(stack: Stack, count: int) -> None:
    """Until `count` archive calls are writing (their `.part` files exist and hold audio)."""
    wait_for(lambda: len([p for p in archived_parts(stack) if p.stat().st_size > 0]) >= count, 20, "archive writing")


def downloaded_s(url: str) -> float:
    status, body = fetch(url)
    assert status == 200, (status, body[:200])
    return decoded_s(body)


def test_archive_back_before_the_end_gives_record_url_in_the_session(stack: Stack, clips: Path) -> None:
    """Killed mid-stream and restarted while the client still streams: the client hears the archive
    failed, then, before `end`, a `record_url` for the whole session."""
    pcm = load_wav(clips / "en" / "counting.wav") * 5  # ~15 s in real time

    async def one_session() -> StreamResult:
        task = asyncio.create_task(
            stream_pcm(stack.url, pcm, speed=1.0, start={"flowId": "archive-back", "return": ["record_url"]})
        )
        await asyncio.to_thread(wait_for_parts, stack, 1)
        stack.running["compress"].kill()
        await asyncio.to_thread(stack.restart, "compress")
        return await task

    result = asyncio.run(one_session())
    kinds = [e["type"] for e in result.events]
    assert kinds[-3:] == ["error", "record_url", "end"], result.events
    error, record = result.events[-3], result.events[-2]
    assert error["code"] == "archive_unavailable" and error["mode"] == "spooled"
    assert record["status"] == "stored" and abs(record["duration_s"] - len(pcm) / 32000) <= 0.02
    assert abs(downloaded_s(record["url"]) - len(pcm) / 32000) <= 0.02


def test_archive_killed_mid_stream_loses_no_audio(stack: Stack, clips: Path) -> None:
    pcm = load_wav(clips / "en" / "counting.wav") * 2  # ~6 s in real time: the kill lands mid-stream
    sent_s = len(pcm) / 32000

    async def two_sessions() -> list[StreamResult]:
        tasks = [
            asyncio.create_task(
                stream_pcm(stack.url, pcm, speed=1.0, start={"flowId": flow, "return": ["record_url", "vad"]})
            )
            for flow in FLOWS
        ]
        await asyncio.to_thread(wait_for_parts, stack, len(FLOWS))  # both calls are writing: kill the archive
        stack.running["compress"].kill()
        return list(await asyncio.gather(*tasks))

    results = asyncio.run(two_sessions())
    for flow, result in zip(FLOWS, results, strict=True):
        errors = result.of_type("error")
        assert [e["code"] for e in errors] == ["archive_unavailable"], errors
        assert errors[0]["fatal"] is False and errors[0]["mode"] == "spooled"
        assert errors[0]["transcript_path"] == f"/v1/flows/{flow}/transcript"
        assert not result.of_type("record_url")  # the archive is still down at the end of the session
        assert result.events[-1]["type"] == "end" and result.close_code == 1000
        body = record_of(stack, flow)
        assert body["status"] == "pending" and body["record_status"] == "pending" and body["record_url"] is None

    assert len(archived_parts(stack)) == len(FLOWS)  # what the killed archive left: cut streams
    archive = stack.restart("compress")  # same ports: the gateway's channel and every URL stay valid

    wait_for(lambda: all(record_of(stack, f)["record_url"] for f in FLOWS), 30, "records stored")
    for flow in FLOWS:
        body = record_of(stack, flow)
        assert body["status"] == "done" and body["record_status"] == "stored"
        url = body["record_url"]
        assert url.startswith(archive.http_base + "/records/")
        assert abs(downloaded_s(url) - sent_s) <= 0.02, (flow, sent_s)
    # The archive recovered its own cut parts at start (then superseded by the whole sessions).
    assert not archived_parts(stack)
    with urllib.request.urlopen(f"{archive.http_base}/metrics", timeout=seconds(5)) as resp:
        metrics = resp.read().decode()
    assert f'compress_recovered_archives_total{{outcome="archived"}} {float(len(FLOWS))}' in metrics
    # Nothing is left on the gateway's spool.
    assert not list(Path(stack.env["ARCHIVE_SPOOL_DIR"]).glob("*/*.pcm"))
