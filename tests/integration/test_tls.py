"""TLS on real sockets: a service's gRPC port is mTLS (no certificate, another CA, plaintext: refused), its
HTTP port is HTTPS, the gateway serves wss://, and replaced certificate files are served to new
connections without a restart while a bad replacement leaves the old pair serving."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.asyncio.client import connect

from common.envconf import load_env
from common.server import ServerConfig, ServiceRunner
from common.tls import CERT_EXPIRY, RELOADS, TlsConfig, grpc_channel
from devtools.certs import DevCA, Identity
from devtools.seaweed import SeaweedS3
from orchestrator.config import GatewayConfig
from orchestrator.gateway import Gateway
from orchestrator.transcripts.transcribe import TranscribeError, download
from services.compress.config import S3Config
from services.compress.store import S3Store, StoreUnavailable
from tests.poll import seconds, until

pytestmark = pytest.mark.integration
RELOAD_S = 0.05


@pytest.fixture()
def ca(tmp_path: Path) -> DevCA:
    return DevCA.create(tmp_path / "ca")


@pytest.fixture()
def rogue(tmp_path: Path) -> DevCA:
    """Another CA, with the same subject name as ours: only the key tells them apart."""
    return DevCA.create(tmp_path / "rogue")


def tls_of(ident: Identity, ca: DevCA, **kw: object) -> TlsConfig:
    return TlsConfig(cert_file=str(ident.cert), key_file=str(ident.key), ca_file=str(ca.cert_file), **kw)  # type: ignore[arg-type]


async def start_runner(tls: TlsConfig) -> ServiceRunner:
    runner = ServiceRunner("tls-test", ServerConfig(grace_s=0), lambda server: None, tls=tls)
    await runner.start()
    await runner.ready()
    return runner


@pytest.fixture()
async def service(ca: DevCA, tmp_path: Path) -> AsyncIterator[ServiceRunner]:
    runner = await start_runner(tls_of(ca.issue("svc", out=tmp_path), ca, reload_s=RELOAD_S))
    yield runner
    await runner.stop()


async def health_check(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=seconds(5))
    return int(reply.status)


async def served_certificate(port: int, ca: DevCA, client: Identity | None = None) -> x509.Certificate:
    """The certificate a TLS server on loopback presents to a new connection."""
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    context.set_alpn_protocols(["h2", "http/1.1"])
    _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context), seconds(5))
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return x509.load_der_x509_certificate(der)


async def test_a_client_with_a_certificate_of_the_ca_is_served(
    service: ServiceRunner, ca: DevCA, tmp_path: Path
) -> None:
    client = ca.issue("gateway", out=tmp_path)
    async with grpc_channel(f"127.0.0.1:{service.grpc_port}", tls_of(client, ca)) as ch:
        assert await health_check(ch) == health_pb2.HealthCheckResponse.SERVING
    not_after = x509.load_pem_x509_certificate(client.cert.read_bytes()).not_valid_after_utc.timestamp()
    assert CERT_EXPIRY.labels("client")._value.get() == not_after


async def refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health_check(channel)
    return err.value.code()


async def test_a_client_without_a_certificate_is_refused(service: ServiceRunner, ca: DevCA) -> None:
    creds = grpc.ssl_channel_credentials(ca.cert_file.read_bytes())  # trusts the server, shows nothing
    assert (
        await refused(grpc.aio.secure_channel(f"127.0.0.1:{service.grpc_port}", creds)) == grpc.StatusCode.UNAVAILABLE
    )


async def test_a_client_certificate_of_another_ca_is_refused(
    service: ServiceRunner, ca: DevCA, rogue: DevCA, tmp_path: Path
) -> None:
    stranger = rogue.issue("gateway", out=tmp_path / "rogue")
    creds = grpc.ssl_channel_credentials(
        ca.cert_file.read_bytes(), stranger.key.read_bytes(), stranger.cert.read_bytes()
    )
    assert (
        await refused(grpc.aio.secure_channel(f"127.0.0.1:{service.grpc_port}", creds)) == grpc.StatusCode.UNAVAILABLE
    )


async def test_a_client_that_trusts_another_ca_refuses_the_server(
    service: ServiceRunner, rogue: DevCA, tmp_path: Path
) -> None:
    # Its own certificate is of the rogue CA too: the point is that it cannot verify the server.
    misled = tls_of(rogue.issue("gateway", out=tmp_path / "rogue"), rogue)
    assert await refused(grpc_channel(f"127.0.0.1:{service.grpc_port}", misled)) == grpc.StatusCode.UNAVAILABLE


async def test_a_plaintext_client_is_refused(service: ServiceRunner) -> None:
    assert await refused(grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}")) == grpc.StatusCode.UNAVAILABLE


async def test_grpc_serves_a_replaced_certificate_to_new_connections(
    service: ServiceRunner, ca: DevCA, tmp_path: Path
) -> None:
    client = ca.issue("gateway", out=tmp_path)
    first = await served_certificate(service.grpc_port, ca, client)
    async with grpc_channel(f"127.0.0.1:{service.grpc_port}", tls_of(client, ca)) as old_channel:
        assert await health_check(old_channel) == health_pb2.HealthCheckResponse.SERVING
        ca.issue("svc", out=tmp_path)  # the same files, a new key and certificate

        async def rotated() -> bool:
            return (await served_certificate(service.grpc_port, ca, client)).serial_number != first.serial_number

        await until(rotated, 10, "the new certificate on the gRPC port")
        # The connection opened before the rotation keeps working.
        assert await health_check(old_channel) == health_pb2.HealthCheckResponse.SERVING


async def test_a_bad_replacement_is_refused_and_the_old_pair_keeps_serving(ca: DevCA, tmp_path: Path) -> None:
    ident = ca.issue("svc", out=tmp_path)
    runner = await start_runner(tls_of(ident, ca, reload_s=RELOAD_S))
    try:
        before = await served_certificate(runner.http_port, ca)
        errors = RELOADS.labels("http", "error")._value.get()
        other = ca.issue("other", out=tmp_path)
        os.replace(other.key, ident.key)  # the key no longer matches the certificate
        await until(lambda: RELOADS.labels("http", "error")._value.get() > errors, 10, "the refused reload")
        assert (await served_certificate(runner.http_port, ca)).serial_number == before.serial_number
        client = ca.issue("gateway", out=tmp_path)
        async with grpc_channel(f"127.0.0.1:{runner.grpc_port}", tls_of(client, ca)) as ch:
            assert await health_check(ch) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await runner.stop()


async def test_the_http_port_is_https_and_asks_a_certificate_only_when_required(
    ca: DevCA, rogue: DevCA, tmp_path: Path
) -> None:
    trusting = ssl.create_default_context(cafile=str(ca.cert_file))
    optional = await start_runner(tls_of(ca.issue("svc", out=tmp_path), ca))
    required = await start_runner(tls_of(ca.issue("svc2", out=tmp_path), ca, http_client_cert="required"))
    client = tls_of(ca.issue("gateway", out=tmp_path), ca)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{optional.http_port}/healthz", ssl=trusting) as resp:
                assert resp.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"https://127.0.0.1:{optional.http_port}/healthz")  # the system CAs do not know ours
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"https://127.0.0.1:{required.http_port}/healthz", ssl=trusting) as resp:
                    await resp.read()
        stranger = ssl.create_default_context(cafile=str(ca.cert_file))
        bad = rogue.issue("x", out=tmp_path / "rogue")
        stranger.load_cert_chain(bad.cert, bad.key)
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"https://127.0.0.1:{optional.http_port}/healthz", ssl=stranger) as resp:
                    await resp.read()
        # The gateway's archive download presents its certificate: it passes where mTLS is required.
        body = await download(f"https://127.0.0.1:{required.http_port}/healthz", seconds(5), 1 << 20, client)
        assert json.loads(body)["status"] == "ok"
        with pytest.raises(TranscribeError):
            await download(f"https://127.0.0.1:{required.http_port}/healthz", seconds(5), 1 << 20)
    finally:
        await optional.stop()
        await required.stop()


@pytest.fixture()
async def tls_gateway(ca: DevCA, tmp_path: Path) -> AsyncIterator[tuple[Gateway, Identity]]:
    edge = ca.issue("edge", out=tmp_path)
    env = {
        "GATEWAY_PORT": "0",
        "TLS_CERT_FILE": str(edge.cert),
        "TLS_KEY_FILE": str(edge.key),
        "TLS_RELOAD_SEC": str(RELOAD_S),
        "JOBS_DB": str(tmp_path / "jobs.sqlite"),
    }
    gateway = Gateway(load_env(GatewayConfig, env))
    await gateway.start()
    yield gateway, edge
    await gateway.stop()


async def test_the_gateway_serves_wss_and_https_and_reloads_its_certificate(
    tls_gateway: tuple[Gateway, Identity], ca: DevCA, tmp_path: Path
) -> None:
    gateway, _ = tls_gateway
    trusting = ssl.create_default_context(cafile=str(ca.cert_file))
    async with connect(f"wss://127.0.0.1:{gateway.port}/ws/stream", ssl=trusting, open_timeout=seconds(5)) as ws:
        await ws.send(json.dumps({"type": "start", "flowId": "tls-ws"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), seconds(5)))["type"] == "ack"
        first = await served_certificate(gateway.port, ca)
        ca.issue("edge", out=tmp_path)

        async def rotated() -> bool:
            return (await served_certificate(gateway.port, ca)).serial_number != first.serial_number

        await until(rotated, 10, "the new certificate on the gateway port")
        await ws.send(json.dumps({"type": "flush"}))  # the open session is not disturbed
        kinds = [json.loads(m)["type"] async for m in ws]
        assert kinds[-1] == "end"
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"https://127.0.0.1:{gateway.port}/metrics", ssl=trusting) as resp,
    ):
        text = await resp.text()
    assert 'tls_certificate_reloads_total{result="ok",use="edge"}' in text
    assert 'tls_certificate_expiry_timestamp_seconds{use="edge"}' in text


async def test_a_client_that_does_not_trust_the_gateway_ca_cannot_connect(
    tls_gateway: tuple[Gateway, Identity],
) -> None:
    gateway, _ = tls_gateway
    with pytest.raises(ssl.SSLCertVerificationError):
        async with connect(f"wss://127.0.0.1:{gateway.port}/ws/stream", open_timeout=seconds(5)):
            pass


@pytest.mark.parametrize(
    ("module", "env"),
    [
        ("orchestrator", {"GATEWAY_HOST": "0.0.0.0", "AUTH_MODE": "off"}),  # (no auth: test_gateway_auth.py)
        ("tests.fakes", {"FAKE_HOST": "0.0.0.0"}),
        ("orchestrator", {"VAD_ADDR": "192.0.2.1:50051"}),
    ],
)
def test_plaintext_off_loopback_exits_2_naming_the_fix(module: str, env: dict[str, str]) -> None:
    args = [sys.executable, "-m", module, *(["vad"] if module == "tests.fakes" else [])]
    proc = subprocess.run(
        args, env={**os.environ, **env}, capture_output=True, text=True, timeout=seconds(60), check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert "listening" not in proc.stdout
    assert "without TLS" in proc.stderr and "MODE=off" in proc.stderr


def test_the_archive_uploads_over_mtls_to_an_s3_endpoint_that_requires_it(
    ca: DevCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seaweed = ca.issue("seaweed", out=tmp_path)
    server = SeaweedS3(tmp_path / "weed", tls=(seaweed.cert, seaweed.key, ca.cert_file), verify_clients=True)
    server.start(timeout_s=seconds(45))
    try:
        env = server.env("tls-records")
        monkeypatch.setenv("AWS_CA_BUNDLE", env["AWS_CA_BUNDLE"])
        cfg = load_env(S3Config, env)
        assert cfg.endpoint_url.startswith("https://")
        archive = tmp_path / "a.flac"
        archive.write_bytes(b"fLaC" + bytes(64))
        compress = ca.issue("compress", out=tmp_path)
        S3Store(cfg, client_cert=(str(compress.cert), str(compress.key))).put(archive, "t/a.flac", "audio/flac")
        assert server.keys("tls-records", "t/") == ["t/a.flac"]
        with pytest.raises(StoreUnavailable):  # no client certificate: the handshake is refused
            S3Store(cfg).put(archive, "t/b.flac", "audio/flac")
    finally:
        server.stop()


@pytest.mark.parametrize("module", ["orchestrator", "tests.fakes"])
def test_a_missing_certificate_exits_2_naming_the_file(module: str, tmp_path: Path) -> None:
    missing = tmp_path / "gone.pem"
    env = {"TLS_CERT_FILE": str(missing), "TLS_KEY_FILE": str(missing), "JOBS_DB": str(tmp_path / "j.sqlite")}
    if module == "tests.fakes":
        env = {"GRPC_TLS_CERT_FILE": str(missing), "GRPC_TLS_KEY_FILE": str(missing), "TLS_CA_FILE": str(missing)}
    proc = subprocess.run(
        [sys.executable, "-m", module, *(["vad"] if module == "tests.fakes" else [])],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=seconds(60),
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "gone.pem" in proc.stderr
