"""Compress service as a real process (SPEC §3, §4): one archive contract, run against the local backend
and against a real SeaweedFS S3 server; then what only S3 has (presigned URLs, outage and recovery)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import grpc
import numpy as np
import pytest
import soundfile as sf

from devtools.launcher import RunningService, launch
from devtools.seaweed import SeaweedS3, running_seaweed
from proto import common_pb2, compress_pb2, compress_pb2_grpc
from services.compress.service import TENANT_METADATA
from services.compress.signing import UrlSigner
from tests.poll import seconds, wait_for
from tests.records import decoded_s

pytestmark = pytest.mark.integration

SR = 16000
FRAME_BYTES = 2 * SR  # 1 s of PCM16 mono per AudioFrame
FRAME_S = 0.020  # decoded duration must match within one 20 ms frame
BUCKET = "speechgw-records"
URL_KEY = b"integration-test-record-url-key-0123456789"


def clip_pcm(path: Path) -> bytes:
    """The clip as PCM16 LE (the clips are float WAV: scale, do not let libsndfile truncate)."""
    x, sr = sf.read(path, dtype="float32")
    assert sr == SR
    return np.clip(np.round(x * 32767), -32768, 32767).astype("<i2").tobytes()


def make_frames(flow_id: str, pcm: bytes, last: bool = False) -> list[common_pb2.AudioFrame]:
    out = []
    for i in range(0, len(pcm), FRAME_BYTES):
        chunk = pcm[i : i + FRAME_BYTES]
        out.append(
            common_pb2.AudioFrame(
                flow_id=flow_id,
                seq=i // 640,
                sr=SR,
                channels=1,
                pcm=chunk,
                ns=len(chunk) // 2 * 62_500,
                pts=i // 2 * 62_500,
            )
        )
    out[-1].last = last
    return out


async def archive(addr: str, frames: list[common_pb2.AudioFrame], tenant: str = "") -> compress_pb2.ArchiveResult:
    metadata = ((TENANT_METADATA, tenant.encode()),) if tenant else None
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = compress_pb2_grpc.CompressStub(channel)
        return await stub.Archive(iter(frames), timeout=seconds(20), metadata=metadata)


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=seconds(10)) as resp:
        return bytes(resp.read())


def metric(text: str, sample: str) -> float:
    """Value of one Prometheus sample line (`name{labels}`), 0 when absent."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=seconds(10)) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@dataclass
class Backend:
    name: str
    svc: RunningService
    keys: Callable[[str], list[str]]  # every stored object (or temp file) of one flow


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


def s3_env(server: SeaweedS3, spool: Path) -> dict[str, str]:
    return {
        **server.env(BUCKET),
        "COMPRESS_SPOOL_DIR": str(spool),
        "S3_URL_MODE": "presigned",
        "S3_CONNECT_TIMEOUT_S": "1",
        "S3_MAX_ATTEMPTS": "1",
        "COMPRESS_RETRY_BASE_S": "0.1",
        "COMPRESS_RETRY_MAX_S": "0.5",
        "COMPRESS_FORMAT": "ogg_opus",
    }


@pytest.fixture(scope="module")
def local_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    root = tmp_path_factory.mktemp("compress-local")
    store = root / "store"
    svc = launch(
        "compress",
        env={
            "STORAGE_BACKEND": "local",
            "COMPRESS_STORE_DIR": str(store),
            "COMPRESS_SPOOL_DIR": str(root / "spool"),
            "PUBLIC_BASE": "",
            "COMPRESS_FORMAT": "ogg_opus",
            "RECORD_URL_KEY": URL_KEY.decode(),
        },
    )
    try:
        yield Backend(
            "local",
            svc,
            lambda flow: sorted(str(p.relative_to(store)) for p in (store / "records").rglob(f"*{flow}*")),
        )
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def s3_backend(seaweed: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    svc = launch("compress", env=s3_env(seaweed, tmp_path_factory.mktemp("compress-s3-spool")))
    try:
        yield Backend("s3", svc, lambda flow: seaweed.keys(BUCKET, f"records/public/{flow}"))
    finally:
        svc.stop()


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(f"{request.param}_backend")  # type: ignore[no-any-return]


def new_flow(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}"


# --- the archive contract, both backends ---------------------------------------------------------------


async def test_clip_in_1s_frames_archives_to_an_absolute_downloadable_url(backend: Backend, clips: Path) -> None:
    pcm = clip_pcm(clips / "en" / "counting.wav")
    flow = new_flow("roundtrip")
    res = await archive(backend.svc.grpc_addr, make_frames(flow, pcm))
    expected_s = len(pcm) / 2 / SR
    assert (res.flow_id, res.key, res.status, res.codec) == (
        flow,
        f"records/public/{flow}.ogg",
        "stored",
        "ogg/opus",
    )
    url = urlsplit(res.record_url)
    assert url.scheme in ("http", "https") and url.netloc, res.record_url
    data = download(res.record_url)
    assert len(data) == res.bytes > 0
    assert abs(decoded_s(data) - expected_s) <= FRAME_S
    assert abs(res.duration_s - expected_s) <= FRAME_S
    assert backend.keys(flow) == [res.key]


async def test_same_flow_twice_overwrites_one_object(backend: Backend, clips: Path) -> None:
    flow = new_flow("retry")
    first = await archive(backend.svc.grpc_addr, make_frames(flow, clip_pcm(clips / "en" / "counting.wav")))
    short = clip_pcm(clips / "en" / "hello_world.wav")
    second = await archive(backend.svc.grpc_addr, make_frames(flow, short))
    assert first.key == second.key == f"records/public/{flow}.ogg"
    assert backend.keys(flow) == [first.key]
    assert abs(decoded_s(download(second.record_url)) - len(short) / 2 / SR) <= FRAME_S


async def test_last_flag_ends_the_call_without_half_close(backend: Backend, clips: Path) -> None:
    flow = new_flow("last")
    async with grpc.aio.insecure_channel(backend.svc.grpc_addr) as channel:
        call = compress_pb2_grpc.CompressStub(channel).Archive(timeout=seconds(20))
        for frame in make_frames(flow, clip_pcm(clips / "en" / "hello_world.wav"), last=True):
            await call.write(frame)
        res = await call  # answered although the client never called done_writing()
    assert res.status == "stored" and res.flow_id == flow


def _invalid(case: str, flow: str, pcm: bytes) -> list[common_pb2.AudioFrame]:
    frames = make_frames(flow, pcm)
    if case == "empty":
        return []
    bad = frames[-1]
    if case == "flow_id_mismatch":
        bad.flow_id = flow + "-other"
    elif case == "bad_sr":
        bad.sr = 8000
    elif case == "bad_channels":
        bad.channels = 2
    elif case == "odd_bytes":
        bad.pcm = bad.pcm[:-1]
    elif case == "bad_flow_id":
        for f in frames:
            f.flow_id = "../" + flow
    return frames


@pytest.mark.parametrize("case", ["flow_id_mismatch", "bad_sr", "bad_channels", "odd_bytes", "bad_flow_id", "empty"])
async def test_invalid_stream_is_refused_and_another_stream_goes_on(backend: Backend, clips: Path, case: str) -> None:
    pcm = clip_pcm(clips / "en" / "counting.wav")
    good_flow = new_flow("good")
    good_frames = make_frames(good_flow, pcm)
    async with grpc.aio.insecure_channel(backend.svc.grpc_addr) as channel:
        stub = compress_pb2_grpc.CompressStub(channel)
        good = stub.Archive(timeout=seconds(20))
        await good.write(good_frames[0])  # a stream in flight while the bad one arrives
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Archive(iter(_invalid(case, new_flow("bad"), pcm)), timeout=seconds(20))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details()
        for frame in good_frames[1:]:
            await good.write(frame)
        await good.done_writing()
        res = await good
    assert res.status == "stored"
    assert abs(res.duration_s - len(pcm) / 2 / SR) <= FRAME_S


# --- local backend only --------------------------------------------------------------------------------


def raw_get(base: str, raw_path: str) -> tuple[int, bytes]:
    """GET `raw_path` byte for byte (no client-side normalisation of dots or escapes)."""
    host, port = urlsplit(base).hostname, urlsplit(base).port
    with socket.create_connection((host, port), timeout=seconds(10)) as sock:
        sock.sendall(f"GET {raw_path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def signed(raw_path: str, clock: float | None = None, ttl_s: int = 600) -> str:
    signer = UrlSigner(URL_KEY, ttl_s, (lambda: clock) if clock is not None else time.time)
    return f"{raw_path}?{signer.query(raw_path)}"


async def test_local_record_url_is_signed_and_refuses_tampering_and_expiry(local_backend: Backend, clips: Path) -> None:
    flow = new_flow("signed")
    res = await archive(local_backend.svc.grpc_addr, make_frames(flow, clip_pcm(clips / "en" / "hello_world.wav")))
    base = local_backend.svc.http_base
    url = urlsplit(res.record_url)
    assert url.path == f"/{res.key}" and "sig=" in url.query and "exp=" in url.query
    assert len(download(res.record_url)) == res.bytes
    query = dict(parse_qsl(url.query))
    other = new_flow("other")
    tampered = [
        url.path,  # unsigned
        f"{url.path}?exp={query['exp']}",  # no signature
        f"{url.path}?exp={int(query['exp']) + 3600}&sig={query['sig']}",  # longer life
        f"{url.path}?exp={query['exp']}&sig={query['sig'][:-2]}AA",  # another signature
        f"/records/public/{other}.ogg?{url.query}",  # the signature of another path
        f"{url.path.replace('.ogg', '.flac')}?{url.query}",
        f"{url.path}?exp=%C2%B2&sig={query['sig']}",  # non-ASCII digits
        f"{url.path}?exp={query['exp']}&sig=%C3%A9",  # non-ASCII signature
        signed(url.path, clock=time.time() - 7200),  # correctly signed, expired an hour ago
    ]
    for raw in tampered:
        status, body = raw_get(base, raw)
        assert status == 403, raw
        assert b"records" not in body and flow.encode() not in body, body  # no path information
    assert raw_get(base, signed(url.path))[0] == 200  # the same path signed now is fine


TRAVERSALS = [
    "/records/public/..%2F..%2F..%2Fetc%2Fpasswd",
    "/records/public/%2e%2e/%2e%2e/etc/passwd",
    "/records/%2e%2e/%2e%2e%2fetc%2fpasswd",
    "/records/public/%252e%252e%252fx.ogg",  # double encoding
    "/records/public/..%5c..%5cx.ogg",  # backslashes, encoded
    "/records/public/..\\..\\x.ogg",  # backslashes, raw
    "/records/public/%2fetc%2fpasswd",  # an absolute path inside
    "/records//etc/passwd",
    "/records/public/../../secret.ogg",
    "/records/public/x.ogg%00.txt",
    "/records/public/notes.txt",
    "/records/tenant-name/x.ogg",  # not a namespace
]


@pytest.mark.parametrize("raw", TRAVERSALS)
def test_local_http_stays_inside_the_store_whatever_the_encoding(local_backend: Backend, raw: str) -> None:
    base = local_backend.svc.http_base
    status, _ = raw_get(base, raw)
    assert status in (400, 403, 404), (raw, status)
    # Even a path signed with the right key (which no client can forge) never leaves the store.
    status, body = raw_get(base, signed(raw))
    assert status in (400, 404), (raw, status)
    assert b"root:" not in body


async def test_tenants_sharing_a_flow_id_get_separate_objects(local_backend: Backend, clips: Path) -> None:
    flow = new_flow("shared")
    long_pcm = clip_pcm(clips / "en" / "counting.wav")
    short_pcm = clip_pcm(clips / "en" / "hello_world.wav")
    addr = local_backend.svc.grpc_addr
    a = await archive(addr, make_frames(flow, long_pcm), tenant="tenant-a")
    b = await archive(addr, make_frames(flow, short_pcm), tenant="tenant-b")
    again = await archive(addr, make_frames(flow, long_pcm), tenant="tenant-a")  # A's retry: same object
    assert a.key != b.key and a.key == again.key and a.key.endswith(f"/{flow}.ogg")
    assert len(local_backend.keys(flow)) == 2
    assert abs(decoded_s(download(a.record_url)) - len(long_pcm) / 2 / SR) <= FRAME_S
    assert abs(decoded_s(download(b.record_url)) - len(short_pcm) / 2 / SR) <= FRAME_S


# --- S3 only: presigned URLs, outage and recovery -------------------------------------------------------


async def test_s3_object_and_presigned_url_refuses_tampering(
    s3_backend: Backend, seaweed: SeaweedS3, clips: Path
) -> None:
    flow = new_flow("presign")
    res = await archive(s3_backend.svc.grpc_addr, make_frames(flow, clip_pcm(clips / "en" / "counting.wav")))
    head = seaweed.client().head_object(Bucket=BUCKET, Key=res.key)
    assert head["ContentLength"] == res.bytes and head["ContentType"] == "audio/ogg"
    assert "X-Amz-Signature=" in res.record_url
    assert http_status(res.record_url) == 200
    assert http_status(res.record_url.replace("X-Amz-Signature=", "X-Amz-Signature=0")) == 403
    assert http_status(res.record_url.replace(f"{flow}.ogg", f"{flow}x.ogg")) == 403
    assert "X-Amz-Expires=604800" in res.record_url
    assert http_status(res.record_url.replace("X-Amz-Expires=604800", "X-Amz-Expires=604799")) == 403
    assert http_status(res.record_url.split("?")[0]) == 403  # no anonymous reads


async def test_s3_outage_spools_and_loses_nothing(
    s3_backend: Backend, seaweed: SeaweedS3, clips: Path, tmp_path: Path
) -> None:
    pcm = clip_pcm(clips / "en" / "quick_brown_fox.wav")
    live_flow, restarted_flow = new_flow("outage-live"), new_flow("outage-restart")
    seaweed.stop()
    try:
        spooled = await archive(s3_backend.svc.grpc_addr, make_frames(live_flow, pcm))
        assert spooled.status == "spooled" and "X-Amz-Signature=" in spooled.record_url
        # A second process archives while S3 is down, then stops: its spool must survive it.
        other = launch("compress", env=s3_env(seaweed, tmp_path / "spool"))
        try:
            assert (await archive(other.grpc_addr, make_frames(restarted_flow, pcm))).status == "spooled"
        finally:
            assert other.stop() == 0
        assert list((tmp_path / "spool" / "pending" / "public" / restarted_flow).glob("*.ogg"))
    finally:
        seaweed.start()
    wait_for(lambda: seaweed.keys(BUCKET, f"records/public/{live_flow}") != [], 20, "background upload after outage")
    assert abs(decoded_s(download(spooled.record_url)) - len(pcm) / 2 / SR) <= FRAME_S
    again = launch("compress", env=s3_env(seaweed, tmp_path / "spool"))
    try:
        wait_for(lambda: seaweed.keys(BUCKET, f"records/public/{restarted_flow}") != [], 20, "upload at start-up")
    finally:
        again.stop()
    assert not list((tmp_path / "spool" / "pending").glob("*/*/*"))
    fresh = await archive(s3_backend.svc.grpc_addr, make_frames(new_flow("after"), pcm))
    assert fresh.status == "stored"
    metrics = download(f"{s3_backend.svc.http_base}/metrics").decode()
    assert metric(metrics, 'compress_archives_total{status="spooled"}') == 1
    assert metric(metrics, "compress_upload_failures_total") >= 1
    assert metric(metrics, 'compress_uploads_total{path="retry"}') >= 1
