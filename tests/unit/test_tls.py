"""common/tls.py without sockets: which configurations start, which files load, when a reload happens."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from common.envconf import ConfigError, load_env
from common.tls import (
    RELOADS,
    EdgeTlsConfig,
    FileStamps,
    GrpcCertFetcher,
    TlsConfig,
    TlsError,
    host_of,
    is_loopback,
    read_identity,
)
from devtools.certs import DevCA, Identity
from orchestrator.config import GatewayConfig

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    return DevCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture()
def ident(ca: DevCA, tmp_path: Path) -> Identity:
    return ca.issue("svc", out=tmp_path)


def tls_env(ident: Identity, ca: DevCA) -> dict[str, str]:
    return {
        "GRPC_TLS_CERT_FILE": str(ident.cert),
        "GRPC_TLS_KEY_FILE": str(ident.key),
        "TLS_CA_FILE": str(ca.cert_file),
    }


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        *[("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True), ("localhost", True)],
        *[("unix:/tmp/s", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("vad.internal", False)],
    ],
)
def test_loopback_is_only_the_local_host(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("addr", "host"),
    [
        *[("127.0.0.1:50051", "127.0.0.1"), ("[::1]:9", "::1"), ("dns:///asr.svc:443", "asr.svc")],
        *[("ipv4:10.1.2.3:7", "10.1.2.3"), ("vad", "vad"), ("unix:/run/vad.sock", "unix:/run/vad.sock")],
    ],
)
def test_host_of_a_grpc_target(addr: str, host: str) -> None:
    assert host_of(addr) == host


def test_internal_tls_is_off_without_files_and_on_with_all_three(ident: Identity, ca: DevCA) -> None:
    assert not load_env(TlsConfig, {}).enabled
    assert load_env(TlsConfig, tls_env(ident, ca)).enabled


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"GRPC_TLS_CERT_FILE": "c.pem"}, "GRPC_TLS_KEY_FILE, TLS_CA_FILE"),
        ({"GRPC_TLS_CERT_FILE": "c.pem", "GRPC_TLS_KEY_FILE": "k.pem"}, "TLS_CA_FILE"),
        ({"GRPC_TLS_MODE": "on"}, "GRPC_TLS_MODE=on"),
        ({"GRPC_TLS_MODE": "off", "TLS_CA_FILE": "ca.pem"}, "GRPC_TLS_MODE=off"),
        ({"GRPC_TLS_MODE": "maybe"}, "GRPC_TLS_MODE='maybe'"),
        ({"TLS_HTTP_CLIENT_CERT": "sometimes"}, "TLS_HTTP_CLIENT_CERT"),
        ({"TLS_RELOAD_SEC": "-1"}, "TLS_RELOAD_SEC"),
    ],
)
def test_incomplete_or_contradictory_internal_settings_are_refused(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_env(TlsConfig, env)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"TLS_CERT_FILE": "c.pem"}, "TLS_CERT_FILE and TLS_KEY_FILE"),
        ({"TLS_MODE": "on"}, "TLS_MODE=on"),
        ({"TLS_MODE": "off", "TLS_CERT_FILE": "c", "TLS_KEY_FILE": "k"}, "TLS_MODE=off"),
    ],
)
def test_incomplete_or_contradictory_edge_settings_are_refused(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_env(EdgeTlsConfig, env)


def test_a_service_off_loopback_needs_tls_or_an_explicit_off(
    ident: Identity, ca: DevCA, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError, match=r"0\.0\.0\.0 without TLS.*GRPC_TLS_MODE=off"):
        TlsConfig().check_plaintext("vad listens", ["0.0.0.0"])
    TlsConfig().check_plaintext("vad listens", ["127.0.0.1"])
    load_env(TlsConfig, tls_env(ident, ca)).check_plaintext("vad listens", ["0.0.0.0"])
    with caplog.at_level(logging.WARNING, logger="common.tls"):
        TlsConfig(mode="off").check_plaintext("vad listens", ["0.0.0.0"])
    assert "plaintext on a non-loopback address" in caplog.text


def test_the_gateway_refuses_plaintext_off_loopback() -> None:
    with pytest.raises(ConfigError, match=r"the gateway listens on 0\.0\.0\.0 without TLS.*TLS_MODE=off"):
        load_env(GatewayConfig, {"GATEWAY_HOST": "0.0.0.0", "AUTH_MODE": "off"})  # (the auth rule: test_auth.py)
    with pytest.raises(ConfigError, match=r"the gateway dials on 10\.0\.0\.7 without TLS"):
        load_env(GatewayConfig, {"VAD_ADDR": "127.0.0.1:1", "ASR_ADDR": "127.0.0.1:2,10.0.0.7:3"})
    # A stage that is switched off is not dialled.
    load_env(GatewayConfig, {"VAD_ADDR": "10.0.0.7:1", "ENABLE_VAD": "false"})
    load_env(
        GatewayConfig,
        {"GATEWAY_HOST": "0.0.0.0", "TLS_MODE": "off", "VAD_ADDR": "10.0.0.7:1"}
        | {"GRPC_TLS_MODE": "off", "AUTH_MODE": "off"},  # off loopback, no authentication must be explicit too
    )


def test_the_gateway_checks_the_members_of_its_routing_file(tmp_path: Path) -> None:
    routing = tmp_path / "routing.toml"
    routing.write_text('default_pool = "a"\n[pools.a]\naddrs = ["127.0.0.1:5", "asr-b.internal:5"]\n')
    cfg = load_env(GatewayConfig, {"ROUTING_FILE": str(routing)})
    with pytest.raises(ConfigError, match=r"asr-b\.internal without TLS"):
        cfg.routing_table()
    assert load_env(GatewayConfig, {"ROUTING_FILE": str(routing), "GRPC_TLS_MODE": "off"}).routing_table()


def test_an_identity_loads_and_knows_its_expiry(ident: Identity, ca: DevCA) -> None:
    loaded = read_identity(str(ident.cert), str(ident.key), str(ca.cert_file))
    assert loaded.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----") and loaded.ca_pem == ca.cert_file.read_bytes()
    assert loaded.not_after > 0


def test_a_key_of_another_certificate_is_refused(ca: DevCA, tmp_path: Path) -> None:
    a = ca.issue("a", out=tmp_path)
    b = ca.issue("b", out=tmp_path)
    with pytest.raises(TlsError, match="is not the key of"):
        read_identity(str(a.cert), str(b.key))


def test_missing_or_garbage_files_are_refused_by_name(ident: Identity, tmp_path: Path) -> None:
    with pytest.raises(TlsError, match=r"certificate file .*nope\.pem"):
        read_identity(str(tmp_path / "nope.pem"), str(ident.key))
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    with pytest.raises(TlsError, match="not a PEM certificate"):
        read_identity(str(junk), str(ident.key))
    with pytest.raises(TlsError, match="not an unencrypted PEM private key"):
        read_identity(str(ident.cert), str(junk))
    with pytest.raises(TlsError, match=r"junk\.pem: not a PEM certificate"):
        read_identity(str(ident.cert), str(ident.key), str(junk))


def test_file_stamps_notice_a_rewrite_and_a_replacement(tmp_path: Path) -> None:
    f = tmp_path / "c.pem"
    f.write_text("one")
    stamps = FileStamps([str(f), ""])
    assert not stamps.changed()
    f.write_text("two!")
    assert stamps.changed() and not stamps.changed()
    other = tmp_path / "new.pem"
    other.write_text("two!")
    os.replace(other, f)  # same size, maybe the same mtime: a new inode all the same
    assert stamps.changed()


def test_the_grpc_fetcher_answers_new_pairs_only_and_keeps_the_old_on_a_bad_one(ca: DevCA, tmp_path: Path) -> None:
    ident = ca.issue("svc", out=tmp_path)
    cfg = TlsConfig(cert_file=str(ident.cert), key_file=str(ident.key), ca_file=str(ca.cert_file), reload_s=0.000001)
    fetcher = GrpcCertFetcher("grpc", cfg)
    assert fetcher.initial() is not None
    assert fetcher() is None  # nothing changed
    ca.issue("svc", out=tmp_path)
    assert fetcher() is not None  # a new pair
    errors = RELOADS.labels("grpc", "error")._value.get()
    other = ca.issue("other", out=tmp_path)
    os.replace(other.key, ident.key)  # a key that does not match the certificate
    assert fetcher() is None
    # Maybe half-way through a rotation: reported only when the files are the same at the next look.
    assert RELOADS.labels("grpc", "error")._value.get() == errors
    assert fetcher() is None
    assert RELOADS.labels("grpc", "error")._value.get() == errors + 1
    assert fetcher() is None  # reported once
    assert RELOADS.labels("grpc", "error")._value.get() == errors + 1
    os.replace(other.cert, ident.cert)  # the rotation completes: the pair matches again
    assert fetcher() is not None


def test_a_fetcher_with_reload_off_never_looks_again(ca: DevCA, tmp_path: Path) -> None:
    ident = ca.issue("svc", out=tmp_path)
    cfg = TlsConfig(cert_file=str(ident.cert), key_file=str(ident.key), ca_file=str(ca.cert_file), reload_s=0)
    fetcher = GrpcCertFetcher("grpc", cfg)
    ca.issue("svc", out=tmp_path)
    assert fetcher() is None
