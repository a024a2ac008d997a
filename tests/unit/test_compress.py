"""Compress service core without sockets or processes (SPEC §3, §4): key scheme, flow_id and frame
validation, encoder round trip, spool layout, config, and the uploader against a Fake store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.envconf import ConfigError, load_env
from proto import common_pb2
from services.compress.config import CompressConfig, S3Config
from services.compress.encoder import StreamEncoder, audio_duration_s, encode_pcm_file
from services.compress.service import ArchivePipeline
from services.compress.session import (
    ArchiveSession,
    InvalidFrame,
    SessionLimits,
    flow_id_of_key,
    record_key,
    validate_flow_id,
)
from services.compress.spool import PendingSpool
from services.compress.store import LocalStore, S3Store, StoreUnavailable
from services.compress.uploader import Uploader
from tests.poll import until

pytestmark = pytest.mark.unit

SR = 16000


def frame(flow_id: str = "f1", pcm: bytes = b"\0\0" * 320, **kw: object) -> common_pb2.AudioFrame:
    fields: dict[str, object] = {"flow_id": flow_id, "sr": SR, "channels": 1, "pcm": pcm, **kw}
    return common_pb2.AudioFrame(**fields)  # type: ignore[arg-type]


# --- key scheme and flow_id ----------------------------------------------------------------------------


@pytest.mark.parametrize("flow_id", ["a", "A.b_c-1", "0" * 128, "flow-2026.11.24_x"])
def test_valid_flow_ids_map_to_one_fixed_key(flow_id: str) -> None:
    assert record_key(flow_id, "ogg_opus") == f"records/public/{flow_id}.ogg" == record_key(flow_id, "ogg_opus")
    assert record_key(flow_id, "flac") == f"records/public/{flow_id}.flac"
    assert flow_id_of_key(record_key(flow_id, "ogg_opus")) == flow_id


@pytest.mark.parametrize("flow_id", ["", "-a", ".a", "_a", "a/b", "../etc", "a b", "a" * 129, "é", "a\n"])
def test_invalid_flow_ids_are_refused(flow_id: str) -> None:
    with pytest.raises(InvalidFrame):
        validate_flow_id(flow_id)
    with pytest.raises(InvalidFrame):
        record_key(flow_id, "ogg_opus")


@given(st.text(min_size=0, max_size=140))
def test_any_accepted_flow_id_gives_a_key_inside_records(flow_id: str) -> None:
    try:
        key = record_key(flow_id, "ogg_opus")
    except InvalidFrame:
        return
    assert key == f"records/public/{flow_id}.ogg" and "/" not in flow_id and flow_id[0].isalnum()
    assert flow_id_of_key(key) == flow_id


@pytest.mark.parametrize(
    "key",
    [
        "records/public/x.txt",
        "other/public/x.ogg",
        "records/../x.ogg",
        "records/public/../x.ogg",
        "records/",
        "x.ogg",
        "records/x.ogg",  # no namespace
        "records/tenant/x.ogg",  # not a namespace: namespaces are hashes
        "records/public/a/b.ogg",
    ],
)
def test_non_record_keys_are_not_recognised(key: str) -> None:
    assert flow_id_of_key(key) is None


# --- frame validation ----------------------------------------------------------------------------------


def test_session_counts_samples_and_finishes_on_last() -> None:
    s = ArchiveSession(SessionLimits())
    assert s.accept(frame(pcm=b"\1\0" * 16000)) == b"\1\0" * 16000
    s.accept(frame(pcm=b"\0\0" * 8000, last=True))
    assert s.finished and s.duration_s == 1.5 and s.flow_id == "f1"
    with pytest.raises(InvalidFrame, match="after last"):
        s.accept(frame())


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (frame(flow_id="f2"), "flow_id changed"),
        (frame(sr=8000), "sr=8000"),
        (frame(channels=2), "mono"),
        (frame(pcm=b"\0\0\0"), "odd byte count"),
    ],
)
def test_session_refuses_a_frame_breaking_the_flow(bad: common_pb2.AudioFrame, message: str) -> None:
    s = ArchiveSession(SessionLimits())
    s.accept(frame())
    with pytest.raises(InvalidFrame, match=message):
        s.accept(bad)


def test_session_accepts_a_bare_last_frame_without_format_fields() -> None:
    s = ArchiveSession(SessionLimits())
    s.accept(frame(pcm=b"\0\0" * 320))
    s.accept(common_pb2.AudioFrame(flow_id="f1", last=True))
    s.close()
    assert s.finished and s.samples == 320


def test_session_refuses_bad_first_flow_id_and_empty_streams() -> None:
    with pytest.raises(InvalidFrame, match="must match"):
        ArchiveSession(SessionLimits()).accept(frame(flow_id="a/b"))
    with pytest.raises(InvalidFrame, match="empty stream"):
        ArchiveSession(SessionLimits()).close()
    s = ArchiveSession(SessionLimits())
    s.accept(frame(pcm=b""))
    with pytest.raises(InvalidFrame, match="no audio"):
        s.close()


def test_session_enforces_max_flow_s() -> None:
    s = ArchiveSession(SessionLimits(max_flow_s=1.0))
    s.accept(frame(pcm=b"\0\0" * 16000))
    with pytest.raises(InvalidFrame, match="COMPRESS_MAX_FLOW_S"):
        s.accept(frame(pcm=b"\0\0"))


# --- encoder -------------------------------------------------------------------------------------------


def _tone_pcm(path: Path, seconds: float) -> Path:
    t = np.arange(int(seconds * SR)) / SR
    sig = 0.3 * np.sin(2 * np.pi * 300 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    path.write_bytes((sig * 16000).astype("<i2").tobytes())
    return path


@pytest.mark.parametrize(("fmt", "codec"), [("ogg_opus", "ogg/opus"), ("flac", "flac")])
@pytest.mark.parametrize("seconds", [0.25, 2.37])
def test_encoder_round_trip_keeps_duration(tmp_path: Path, fmt: str, codec: str, seconds: float) -> None:
    out = encode_pcm_file(_tone_pcm(tmp_path / "in.pcm", seconds), tmp_path / "out", fmt, SR)
    assert out.codec == codec and out.bytes == (tmp_path / "out").stat().st_size > 0
    assert abs(out.duration_s - seconds) < 1 / SR
    assert abs(audio_duration_s(out.path) - seconds) <= 0.020  # within one 20 ms frame


def test_flac_is_lossless(tmp_path: Path) -> None:
    import soundfile as sf

    pcm = _tone_pcm(tmp_path / "in.pcm", 1.0)
    encode_pcm_file(pcm, tmp_path / "out.flac", "flac", SR)
    decoded, _ = sf.read(tmp_path / "out.flac", dtype="int16")
    assert np.array_equal(decoded, np.frombuffer(pcm.read_bytes(), "<i2"))


# --- config --------------------------------------------------------------------------------------------


def test_config_defaults_and_env() -> None:
    assert load_env(CompressConfig, {}) == CompressConfig()
    cfg = load_env(
        CompressConfig,
        {
            "COMPRESS_FORMAT": "FLAC",
            "STORAGE_BACKEND": "s3",
            "PUBLIC_BASE": "https://x/",
            "COMPRESS_LEVEL": "0.5",
        },
    )
    assert (cfg.format, cfg.backend, cfg.public_base, cfg.compression_level) == (
        "flac",
        "s3",
        "https://x",
        0.5,
    )
    s3 = load_env(S3Config, {"S3_URL_MODE": "public", "S3_PRESIGN_EXPIRY_S": "60", "S3_BUCKET": "b"})
    assert (s3.url_mode, s3.presign_expiry_s, s3.bucket) == ("public", 60, "b")


@pytest.mark.parametrize(
    "env",
    [
        {"COMPRESS_FORMAT": "mp3"},
        {"STORAGE_BACKEND": "ftp"},
        {"COMPRESS_LEVEL": "2"},
        {"COMPRESS_MAX_FLOW_S": "0"},
        {"COMPRESS_RETRY_BASE_S": "5", "COMPRESS_RETRY_MAX_S": "1"},
    ],
)
def test_config_refuses_bad_values(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_env(CompressConfig, env)


@pytest.mark.parametrize("env", [{"S3_URL_MODE": "cdn"}, {"S3_PRESIGN_EXPIRY_S": "604801"}, {"S3_BUCKET": ""}])
def test_s3_config_refuses_bad_values(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_env(S3Config, env)


def test_s3_urls_are_computed_offline() -> None:
    cfg = S3Config(
        endpoint_url="http://127.0.0.1:9",
        bucket="b",
        presign_expiry_s=600,
        access_key_id="k",
        secret_access_key="s",
    )
    url = S3Store(cfg).url("records/f1.ogg")  # nothing listens on port 9: no network involved
    assert url.startswith("http://127.0.0.1:9/b/records/f1.ogg?") and "X-Amz-Expires=600" in url
    assert "X-Amz-Signature=" in url
    public = S3Config(endpoint_url="http://127.0.0.1:9", bucket="b", url_mode="public")
    assert S3Store(public).url("records/f1.ogg") == "http://127.0.0.1:9/b/records/f1.ogg"
    assert S3Store(public, "https://cdn.example/").url("records/f1.ogg") == "https://cdn.example/records/f1.ogg"


# --- spool ---------------------------------------------------------------------------------------------


def _pending(spool: PendingSpool, flow: str, body: bytes) -> Path:
    part = spool.new_archive_path(flow, "ogg")
    part.write_bytes(body)
    return spool.publish(part)


def test_spool_keeps_newest_and_drops_superseded(tmp_path: Path) -> None:
    spool = PendingSpool(tmp_path)
    assert spool.prepare() == []
    old, new = _pending(spool, "public/f1", b"old"), _pending(spool, "public/f1", b"new")
    assert spool.newest("public/f1") == new and spool.pending_flows() == ["public/f1"] and spool.count() == 2
    spool.drop_upto("public/f1", old)
    assert spool.newest("public/f1") == new
    spool.drop_upto("public/f1", new)
    assert spool.newest("public/f1") is None and spool.pending_flows() == []


def test_spool_prepare_lists_crash_leftovers_and_keeps_archives(tmp_path: Path) -> None:
    spool = PendingSpool(tmp_path)
    spool.prepare()
    part = spool.new_archive_path("public/f2", "ogg")
    part.write_bytes(b"half")
    kept = _pending(spool, "public/f3", b"done")
    assert PendingSpool(tmp_path).prepare() == [part]
    assert spool.recover(part, 16000) is None  # nothing in it decodes: dropped
    assert spool.pending_flows() == ["public/f3"] and kept.exists()
    assert not list(tmp_path.glob("pending/*/*/*.part")) and not list(tmp_path.glob("pending/*/*/*.salvage"))


@pytest.mark.parametrize(("fmt", "ext"), [("flac", "flac"), ("ogg_opus", "ogg")])
def test_a_part_cut_by_a_kill_is_recovered_as_an_older_archive(tmp_path: Path, fmt: str, ext: str) -> None:
    """The measured fault: an archive killed mid-stream left `.part` files that were never uploaded.
    What decodes of one (all but the encoder's unflushed tail) becomes a finished archive."""
    spool = PendingSpool(tmp_path)
    spool.prepare()
    part = spool.new_archive_path("public/cut", ext)
    enc = StreamEncoder(part, fmt, 16000)
    tone = (np.sin(np.arange(16000 * 8) / 7) * 8000).astype("<i2")
    for second in range(8):
        enc.write(tone[second * 16000 : (second + 1) * 16000].tobytes())
    left = part.read_bytes()  # the file as a SIGKILL leaves it: the stream never closed
    enc.close()
    part.write_bytes(left)
    newer = _pending(spool, "public/cut", b"a whole re-upload, later")
    assert PendingSpool(tmp_path).prepare() == [part]
    got = spool.recover(part, 16000)
    assert got is not None and got.path.suffix == f".{ext}" and not part.exists()
    assert 6.5 <= audio_duration_s(got.path) <= 8.0  # all but what the encoder still buffered
    assert spool.newest("public/cut") == newer  # the recovered one is older: a later whole upload wins


# --- uploader with a Fake store ------------------------------------------------------------------------


class FakeStore(LocalStore):
    """A LocalStore that can be switched off, as an S3 outage would."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, "http://fake")
        self.up = True
        self.puts: list[bytes] = []
        self.refused = 0

    def put(self, path: Path, key: str, content_type: str) -> None:
        if not self.up:
            self.refused += 1
            raise StoreUnavailable("fake outage")
        self.puts.append(path.read_bytes())
        super().put(path, key, content_type)


async def test_uploader_stores_spools_and_retries_until_the_store_is_back(tmp_path: Path) -> None:
    store, spool = FakeStore(tmp_path / "store"), PendingSpool(tmp_path / "spool")
    spool.prepare()
    with ThreadPoolExecutor(2) as pool:
        up = Uploader(store, spool, pool, retry_base_s=0.01, retry_max_s=0.05)
        _pending(spool, "public/f1", b"one")
        assert await up.commit("public/f1") == "stored"
        assert store.path_of("records/public/f1.ogg").read_bytes() == b"one"
        store.up = False
        _pending(spool, "public/f2", b"two")
        assert await up.commit("public/f2") == "spooled" and up.store_down
        _pending(spool, "public/f3", b"three")
        assert await up.commit("public/f3") == "spooled"  # open circuit: no attempt while down
        assert store.puts == [b"one"]
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: store.refused >= 3)  # the loop probes, backs off, probes again
            assert spool.pending_flows() == ["public/f2", "public/f3"]
            store.up = True
            await until(lambda: not spool.pending_flows())
        finally:
            task.cancel()
        assert store.path_of("records/public/f3.ogg").read_bytes() == b"three" and not up.store_down


async def test_uploader_never_lets_an_older_archive_overwrite_a_newer_one(tmp_path: Path) -> None:
    store, spool = FakeStore(tmp_path / "store"), PendingSpool(tmp_path / "spool")
    spool.prepare()
    with ThreadPoolExecutor(2) as pool:
        up = Uploader(store, spool, pool, retry_base_s=0.01, retry_max_s=0.05)
        _pending(spool, "public/f1", b"first")
        _pending(spool, "public/f1", b"second")
        assert await up.commit("public/f1") == "stored"
        assert await up.commit("public/f1") == "stored"  # the older one was dropped, nothing left to send
    assert store.puts == [b"second"] and spool.pending_flows() == []


async def test_uploader_serialises_concurrent_commits_of_one_flow(tmp_path: Path) -> None:
    store, spool = FakeStore(tmp_path / "store"), PendingSpool(tmp_path / "spool")
    spool.prepare()
    with ThreadPoolExecutor(2) as pool:
        up = Uploader(store, spool, pool, retry_base_s=0.01, retry_max_s=0.05)
        for i in range(5):
            _pending(spool, "public/f1", f"v{i}".encode())
        results = await asyncio.gather(*(up.commit("public/f1") for _ in range(5)))
    assert results == ["stored"] * 5
    assert store.puts == [b"v4"]  # the newest, once; the others found nothing left to send
    assert up._locks == {}  # no lock outlives its users


# --- the pipeline, in process (no sockets) -------------------------------------------------------------


async def _frames(flow: str, pcm: bytes, chunk: int = 2 * SR) -> AsyncIterator[common_pb2.AudioFrame]:
    for i in range(0, len(pcm), chunk):
        yield frame(flow_id=flow, pcm=pcm[i : i + chunk])


@pytest.mark.parametrize("fmt", ["ogg_opus", "flac"])
async def test_pipeline_encodes_while_streaming_and_stores(tmp_path: Path, fmt: str) -> None:
    cfg = CompressConfig(format=fmt, store_dir=tmp_path / "store", spool_dir=tmp_path / "spool", spool_flush_bytes=8000)
    store, spool = LocalStore(cfg.store_dir, "http://h"), PendingSpool(cfg.spool_dir)
    spool.prepare()
    pcm = _tone_pcm(tmp_path / "in.pcm", 3.3).read_bytes()
    with ThreadPoolExecutor(2) as pool:
        pipeline = ArchivePipeline(cfg, store, spool, Uploader(store, spool, pool, 0.01, 0.05), pool)
        out = await pipeline.archive(_frames("f1", pcm))
    ext = "ogg" if fmt == "ogg_opus" else "flac"
    assert (out.key, out.record_url, out.status) == (
        f"records/public/f1.{ext}",
        f"http://h/records/public/f1.{ext}",
        "stored",
    )
    assert abs(audio_duration_s(store.path_of(out.key)) - 3.3) <= 0.020
    assert not list(cfg.spool_dir.glob("pending/*/*/*"))


async def test_pipeline_drops_the_partial_archive_of_an_invalid_stream(tmp_path: Path) -> None:
    cfg = CompressConfig(store_dir=tmp_path / "store", spool_dir=tmp_path / "spool", spool_flush_bytes=640)
    store, spool = LocalStore(cfg.store_dir, "http://h"), PendingSpool(cfg.spool_dir)
    spool.prepare()

    async def frames() -> AsyncIterator[common_pb2.AudioFrame]:
        yield frame(pcm=b"\1\0" * 16000)
        yield frame(pcm=b"\0")

    with ThreadPoolExecutor(2) as pool:
        pipeline = ArchivePipeline(cfg, store, spool, Uploader(store, spool, pool, 0.01, 0.05), pool)
        with pytest.raises(InvalidFrame, match="odd"):
            await pipeline.archive(frames())
    assert not list(cfg.spool_dir.glob("pending/*/*/*")) and not cfg.store_dir.exists()


async def test_pipeline_cancelled_mid_stream_leaves_no_partial_archive(tmp_path: Path) -> None:
    cfg = CompressConfig(store_dir=tmp_path / "store", spool_dir=tmp_path / "spool", spool_flush_bytes=640)
    store, spool = LocalStore(cfg.store_dir, "http://h"), PendingSpool(cfg.spool_dir)
    spool.prepare()
    sent = asyncio.Event()

    async def frames() -> AsyncIterator[common_pb2.AudioFrame]:
        yield frame(pcm=b"\1\0" * 16000)
        sent.set()
        await asyncio.Event().wait()  # the client goes silent; the call is then cancelled
        yield frame()

    with ThreadPoolExecutor(2) as pool:
        pipeline = ArchivePipeline(cfg, store, spool, Uploader(store, spool, pool, 0.01, 0.05), pool)
        task = asyncio.create_task(pipeline.archive(frames()))
        await sent.wait()
        assert list(cfg.spool_dir.glob("pending/*/*/*.part"))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: not list(cfg.spool_dir.glob("pending/*/*/*.part")))
