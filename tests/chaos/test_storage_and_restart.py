"""Faults of the storage behind the archive and of the gateway process itself, in the real stack:
object storage (SeaweedFS, devtools/seaweed.py) killed mid-session and started again, and a gateway
killed with SIGKILL with a deferred job pending and a session live. Each test checks what the client
receives and, where the archive is involved, that every second the gateway accepted is stored
(the object decoded against `end.audio_s`)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from devtools.client import StreamResult, stream_pcm
from devtools.launcher import launch
from devtools.stack import Stack
from speechgw_client import load_audio
from tests.archive_check import FRAME_S, assert_archived_whole, fetch
from tests.chaos.sessions import ingress_bytes, stream_until, until_accepted
from tests.poll import seconds, wait_for
from tests.records import decoded_s, get_transcript
from tests.wer import wer

pytestmark = pytest.mark.chaos
BATCH_MS = 1000  # the archive stage's messages (COMPRESS_BATCH_MS)
KILL_AT_S = 2.5  # audio the gateway has accepted of the live session when it is killed
IN_FLIGHT_S = 0.15  # what a killed gateway may lose of it: sent by the client, not in the spool yet


def test_object_storage_down_then_up(tmp_path: Path, clips: Path) -> None:
    """S3 killed while a session streams: the session ends normally with `record_url`
    (`status: "spooled"`, the URL not answering yet); once S3 is back the archive uploads the spooled
    object by itself, and the same URL serves every accepted second."""
    env = {
        "LOG_LEVEL": "WARNING",
        "STORAGE_BACKEND": "s3",
        "S3_BUCKET": "chaos-records",
        "COMPRESS_RETRY_BASE_S": "0.5",
        "COMPRESS_RETRY_MAX_S": "2",
        "S3_CONNECT_TIMEOUT_S": "1",
        "S3_MAX_ATTEMPTS": "1",
    }
    pcm = load_audio(clips / "en" / "counting.wav") * 2
    with Stack(("vad", "compress"), env=env, workdir=tmp_path) as stack:
        seaweed = stack._seaweed
        assert seaweed is not None

        async def storage_dies_mid_session() -> StreamResult:
            baseline = await asyncio.to_thread(ingress_bytes, stack.http_base)
            start = {"flowId": "s3-outage", "return": ["record_url", "vad"]}
            task = await stream_until(stack.url, pcm, start, "ack")
            await until_accepted(stack.http_base, baseline, 1.0)  # the session is under way
            await asyncio.to_thread(seaweed.stop)
            return await task

        result = asyncio.run(storage_dies_mid_session())
        assert not result.of_type("error"), result.of_type("error")
        (record,) = result.of_type("record_url")
        assert record["status"] == "spooled"
        assert result.events[-1]["type"] == "end" and result.close_code == 1000
        assert result.events[-1]["audio_s"] == pytest.approx(len(pcm) / 32000, abs=0.02)
        assert fetch_status(record["url"]) != 200  # storage is down: nothing to serve yet
        down_at = time.monotonic()
        seaweed.start()
        wait_for(lambda: bool(seaweed.keys("chaos-records", "")), 30, "the spooled archive uploaded")
        uploaded_s = time.monotonic() - down_at
        assert_archived_whole(result.events)
        print(f"\nuploaded {uploaded_s:.1f} s after storage was started again")


def fetch_status(url: str) -> int:
    try:
        return fetch(url)[0]
    except OSError:
        return 0


def test_gateway_sigkill_jobs_recovered_on_restart(tmp_path: Path, clips: Path) -> None:
    """SIGKILL to the gateway (no drain) with a record-only job pending and a session live. The live
    client sees its connection drop without `end` (close 1006) and streams again; the job stored
    before the first session's `end` survives in JOBS_DB and the new gateway runs it to `done`; the
    live session's audio, left unsealed in the gateway's archive spool, is sealed and uploaded by the
    new gateway: all the client sent but what was in flight (the spool takes every block as the
    session accepts it, not the archive stage's COMPRESS_BATCH_MS messages)."""
    env = {
        "LOG_LEVEL": "WARNING",
        "STORAGE_BACKEND": "local",
        "ASR_ENGINE": "whisper",
        "ASR_MODEL": "tiny.en",
        "STAGE_TIMEOUT_SEC": "10",
        "JOBS_BACKOFF_BASE_SEC": "0.5",
        "JOBS_CAPACITY_POLL_SEC": "0.2",
        "COMPRESS_BATCH_MS": str(BATCH_MS),  # the default; the kill comes mid-message
        "ARCHIVE_RETRY_BASE_SEC": "0.5",
    }
    hello = load_audio(clips / "en" / "hello_world.wav")
    long = load_audio(clips / "en" / "counting.wav") * 3
    with Stack(("vad", "asr", "compress"), env=env, workdir=tmp_path) as stack:
        asr = stack.running["asr"]
        asr.kill()
        pending = asyncio.run(stream_pcm(stack.url, hello, speed=0, start={"flowId": "sigkill-job"}))
        assert [e.get("mode") for e in pending.of_type("error")] == ["record_only"]
        assert_archived_whole(pending.events)
        assert get_transcript(stack.http_base, "sigkill-job")[1]["status"] in ("pending", "running")

        gateway = stack.running["gateway"]

        async def killed_under_a_live_session() -> StreamResult:
            baseline = await asyncio.to_thread(ingress_bytes, stack.http_base)
            start = {"flowId": "sigkill-live", "return": ["record_url"]}
            task = await stream_until(stack.url, long, start, "ack")
            # Half way through the archive stage's third message: it has sent the first, holds the
            # second (sent once the next is complete) and gathers this one; a spool that waited for
            # the messages would lose 1.5 s here.
            await until_accepted(stack.http_base, baseline, KILL_AT_S)
            gateway.proc.kill()
            return await asyncio.wait_for(task, seconds(20))

        cut = asyncio.run(killed_under_a_live_session())
        assert gateway.proc.wait(10) == -9
        gateway.kill()  # releases its stdout pump
        assert cut.close_code == 1006 and cut.events[-1]["type"] != "end"  # dropped: no end, no close frame
        assert not cut.of_type("record_url")

        # A new gateway on the same JOBS_DB, and the ASR back: the job is done there.
        port = asr.grpc_port
        stack.running["asr"] = launch(
            "asr", [sys.executable, "-m", "services.asr"], env={**stack.env, "ASR_GRPC_PORT": str(port)}
        )
        gw = launch("gateway", [sys.executable, "-m", "orchestrator"], env={**stack.gateway_env(), "GATEWAY_PORT": "0"})
        stack.running["gateway"] = gw
        done = lambda: get_transcript(gw.http_base, "sigkill-job")[1].get("status") == "done"  # noqa: E731
        wait_for(done, 60, "job after SIGKILL")
        body = get_transcript(gw.http_base, "sigkill-job")[1]
        text = " ".join(f["text"] for f in body["finals"])
        assert wer([(clips / "en" / "hello_world.txt").read_text()], [text]) <= 0.5, text

        # What the gateway spooled of the cut session is sealed and archived by the new gateway.
        def cut_record() -> list[Path]:
            return list((tmp_path / "records").rglob("sigkill-live.*"))

        wait_for(lambda: bool(cut_record()), 30, "the cut session's spooled audio archived")
        stored = decoded_s(cut_record()[0].read_bytes())
        print(f"\ncut after {cut.audio_s_sent:.2f} s sent; {stored:.2f} s archived from the spool")
        # Not spooled at the kill: only what was still in the sockets and the spool's next write turn.
        assert cut.audio_s_sent - IN_FLIGHT_S <= stored <= cut.audio_s_sent + FRAME_S
        # The dropped client streams again: a new session, served whole.
        again = asyncio.run(
            stream_pcm(stack.url, hello, speed=0, start={"flowId": "sigkill-again", "return": ["asr", "record_url"]})
        )
        assert not again.of_type("error") and again.of_type("asr_final")
        assert_archived_whole(again.events)
