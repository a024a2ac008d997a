"""The archive stage with the gateway's spool against a gRPC archive on 127.0.0.1 that dies mid-stream
(tests/fakes.FakeCompress): no accepted audio is lost, and the same flow is uploaded again whole."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from orchestrator.core.events import RecordPending, RecordReady, StageEvent
from orchestrator.core.protocol import StartRequest
from orchestrator.core.reframer import AudioBlock
from orchestrator.recordings.policy import RetrySchedule, SpoolBudget
from orchestrator.recordings.spool import ArchiveSpool, RecordingFiles
from orchestrator.recordings.uploader import SpoolUploader, archive_uploader
from orchestrator.stages.base import StageContext, StageFeed
from orchestrator.stages.compress import CompressStage, SpoolLink
from proto import compress_pb2_grpc
from tests.fakes import FakeCompress
from tests.poll import until

pytestmark = pytest.mark.integration
SECOND = 32000  # bytes of PCM16 at 16 kHz


@dataclass
class FakeRecordBook:
    """The job store's `records` table, in memory."""

    records: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)

    async def record_pending(self, flow_id: str, tenant: str = "") -> None:
        self.records[(tenant, flow_id)] = ("pending", "")

    async def record_stored(self, flow_id: str, url: str, tenant: str = "") -> None:
        self.records[(tenant, flow_id)] = ("stored", url)


@dataclass
class Rig:
    fake: FakeCompress
    channel: grpc.aio.Channel
    spool: ArchiveSpool
    uploader: SpoolUploader
    records: FakeRecordBook

    def stage(self, window_s: float = 1.0) -> CompressStage:
        link = SpoolLink(self.spool, self.uploader, self.records, window_s, RetrySchedule(0.05, 0.2))
        return CompressStage(self.channel, 1000, link)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    fake = FakeCompress(keep=True)
    server = grpc.aio.server()
    compress_pb2_grpc.add_CompressServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    with ThreadPoolExecutor(2) as pool:
        spool = ArchiveSpool(RecordingFiles(tmp_path / "spool"), SpoolBudget(10 * SECOND), pool)
        await spool.prepare()
        records = FakeRecordBook()
        uploader = SpoolUploader(spool, archive_uploader(channel, spool), records, RetrySchedule(0.05, 0.2))
        yield Rig(fake, channel, spool, uploader, records)
        await channel.close()
        await server.stop(None)


def pcm_of(seconds: int) -> bytes:
    return bytes((i * 7) % 251 for i in range(seconds * SECOND))


async def run_stage(stage: CompressStage, flow_id: str, pcm: bytes, tenant: str = "") -> list[StageEvent]:
    """Feed `pcm` in 1 s blocks, end the audio, run the stage to its end; what it reported."""
    reports: list[StageEvent] = []
    feed = StageFeed(SECOND)
    for i, off in enumerate(range(0, len(pcm), SECOND)):
        feed.put(AudioBlock(i, i * 1_000_000_000, pcm[off : off + SECOND]))
    feed.close()
    start = StartRequest(flow_id=flow_id, returns=frozenset({"record_url"}))
    await stage.run(StageContext(flow_id, start, feed, reports.append, tenant=tenant))
    return reports


async def test_an_answering_archive_leaves_nothing_in_the_spool(rig: Rig) -> None:
    pcm = pcm_of(3)
    reports = await run_stage(rig.stage(), "calm", pcm)
    assert [type(r) for r in reports if isinstance(r, RecordReady | RecordPending)] == [RecordReady]
    assert rig.fake.archived == [("calm", b"", pcm)]
    assert rig.spool.budget.used == 0 and rig.spool.recordings == 0
    assert await rig.spool.run(rig.spool.files.sealed) == []


async def test_archive_dying_mid_stream_gets_the_whole_session_again(rig: Rig) -> None:
    """The measured fault: an archive killed mid-stream cost the session its record_url."""
    pcm = pcm_of(4)
    rig.fake.fail_after_frames = 2
    reports = await run_stage(rig.stage(), "cut", pcm, tenant="tenant-a")
    kinds = [type(r) for r in reports if isinstance(r, RecordReady | RecordPending)]
    assert kinds == [RecordPending, RecordReady]  # told at once, then the URL before the stage ends
    assert rig.fake.archived == [("cut", b"tenant-a", pcm)]  # every byte, same flow and tenant (same key)
    assert rig.spool.budget.used == 0 and await rig.spool.run(rig.spool.files.sealed) == []
    assert rig.records.records == {("tenant-a", "cut"): ("stored", "http://fake.invalid/records/cut.ogg")}


async def test_archive_down_past_the_window_is_handed_to_the_uploader(rig: Rig) -> None:
    pcm = pcm_of(2)
    rig.fake.down = True
    reports = await run_stage(rig.stage(window_s=0.2), "later", pcm)
    assert [type(r) for r in reports if isinstance(r, RecordReady | RecordPending)] == [RecordPending]
    assert rig.records.records == {("", "later"): ("pending", "")}
    assert rig.spool.budget.used == len(pcm) and rig.spool.recordings == 1
    tried = rig.fake.calls
    task = asyncio.create_task(rig.uploader.run())
    try:
        await until(lambda: rig.fake.calls >= tried + 2, what="the uploader tries, backs off, tries again")
        assert rig.fake.archived == []
        rig.fake.down = False
        rig.uploader.wake()
        await until(lambda: rig.spool.recordings == 0, what="stored by the uploader")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert rig.fake.archived == [("later", b"", pcm)]
    assert rig.records.records[("", "later")][1] == "http://fake.invalid/records/later.ogg"
    assert rig.spool.budget.used == 0 and await rig.spool.run(rig.spool.files.sealed) == []


async def test_without_the_spool_the_stage_fails_as_before(rig: Rig) -> None:
    rig.fake.down = True
    with pytest.raises(grpc.aio.AioRpcError):
        await run_stage(CompressStage(rig.channel, 1000), "plain", pcm_of(1))


async def test_a_full_spool_keeps_nothing_and_the_failure_shows(rig: Rig) -> None:
    rig.spool.budget.max_bytes = SECOND  # one second of room for a two-second session
    rig.fake.fail_after_frames = 1
    with pytest.raises((grpc.aio.AioRpcError, asyncio.InvalidStateError)):  # the stage fails with the call
        await run_stage(rig.stage(), "big", pcm_of(2))
    assert rig.spool.budget.used == 0 and await rig.spool.run(rig.spool.files.sealed) == []


async def test_a_gateway_killed_mid_session_leaves_its_audio_for_the_next_one(rig: Rig, tmp_path: Path) -> None:
    files = RecordingFiles(tmp_path / "spool")
    rec = await rig.spool.run(files.create, "crashed", "")
    f = await rig.spool.run(files.open, rec)
    await rig.spool.run(files.append, f, pcm_of(1))  # the process dies here: never sealed
    f.close()
    again = ArchiveSpool(files, SpoolBudget(10 * SECOND), rig.spool.executor)
    assert [r.flow_id for r in await again.prepare()] == ["crashed"]
    assert again.budget.used == SECOND and again.recordings == 1
    uploader = SpoolUploader(again, archive_uploader(rig.channel, again), rig.records, RetrySchedule(0.05, 0.2))
    assert await uploader.upload_one(rec) is not None
    assert rig.fake.archived == [("crashed", b"", pcm_of(1))] and again.recordings == 0


async def test_a_re_upload_refused_as_invalid_is_dropped_not_retried_forever(rig: Rig) -> None:
    rig.fake.fail_after_frames = 1  # the live call is cut; the re-upload is refused as invalid
    rig.fake.invalid = True
    with pytest.raises(RuntimeError, match="refused the spooled session"):
        await run_stage(rig.stage(window_s=5.0), "refused", pcm_of(2))
    assert rig.spool.recordings == 0 and rig.spool.budget.used == 0 and rig.records.records == {}


async def test_every_accepted_block_is_in_the_file_before_the_batch_is_full(rig: Rig) -> None:
    """A gateway killed mid-session loses no accepted block to the archive stage's batching: each block
    the feed is given is written to the open file (no seal, no fsync) without waiting for a message."""
    feed = StageFeed(SECOND)  # one-second messages to the archive; 20 ms blocks from the session
    stage = rig.stage()
    start = StartRequest(flow_id="live", returns=frozenset({"record_url"}))
    task = asyncio.create_task(stage.run(StageContext("live", start, feed, lambda _e: None)))
    pcm = pcm_of(1)[: 640 * 10]
    for i in range(10):
        feed.put(AudioBlock(i, i * 20_000_000, pcm[i * 640 : (i + 1) * 640]))

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in (rig.spool.files.root).glob("*/*.pcm"))

    await until(lambda: on_disk() == pcm, what="the blocks in the spool file")
    assert rig.spool.budget.used == len(pcm) and rig.spool.recordings == 1
    assert rig.fake.archived == []  # the archive has had no message yet
    feed.close()
    await task
    assert rig.fake.archived == [("live", b"", pcm)] and rig.spool.recordings == 0 and not on_disk()


async def test_a_failed_write_drops_the_recording(rig: Rig, tmp_path: Path) -> None:
    (tmp_path / "file-not-folder").write_bytes(b"")  # the spool cannot create its folders
    refused: list[int] = []
    files = RecordingFiles(tmp_path / "file-not-folder")
    broken = ArchiveSpool(files, SpoolBudget(10 * SECOND), rig.spool.executor, on_refused=lambda: refused.append(1))
    writer = broken.writer("nowhere", "")
    assert writer is not None
    writer.take(b"\x00" * 640)
    await writer.flush()
    assert not writer.kept and refused == [1] and broken.budget.used == 0 and broken.recordings == 0
    writer.take(b"\x00" * 640)  # nothing more is taken
    assert broken.budget.used == 0
