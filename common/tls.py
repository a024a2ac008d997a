"""TLS for every link (docs/security.md#tls): `wss://` at the gateway, mTLS on every internal gRPC link and
HTTPS on the services' HTTP ports, one internal CA, certificates reloaded from disk while serving.

Two configs: `TlsConfig` is a process's identity on the internal links (every process reads it:
`GRPC_TLS_*`, `TLS_CA_FILE`); `EdgeTlsConfig` is the gateway's public certificate (`TLS_CERT_FILE`,
`TLS_KEY_FILE`). With mode `auto` (the default) a link is encrypted when its files are set, and a
process without them starts only if everything it listens on and dials is loopback; `off` allows
plaintext anywhere (logged as a warning: a mesh or a proxy terminates TLS), `on` requires the files.

Reloading: a server's certificate files may be replaced in place (write the new key and certificate,
then rename). gRPC servers ask `GrpcCertFetcher` at each handshake (`grpc.dynamic_ssl_server_credentials`),
which re-reads the files when their stamp changed, at most every `TLS_RELOAD_SEC`; Python SSL servers
(`ReloadingServerContext`: the gateway's WebSocket port, the services' HTTP ports) are polled by a
background loop and swap to a new context for new handshakes. A pair that does not load (a key that does
not match its certificate, half a file) is refused and counted; the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import Counter, Gauge

from common.envconf import ConfigError, setting
from common.tracing import client_interceptors

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
HTTP_CLIENT_CERT = ("optional", "required")

CERT_EXPIRY = Gauge(
    "tls_certificate_expiry_timestamp_seconds",
    "notAfter of the certificate this process presents, by use: edge (wss), grpc and http (its servers), "
    "client (the newest outgoing gRPC channel)",
    ["use"],
)
RELOADS = Counter(
    "tls_certificate_reloads_total",
    "Certificate files re-read after they changed, by use and result (ok, error: the old pair kept serving)",
    ["use", "result"],
)


class TlsError(ConfigError):
    """A certificate, key or CA file that cannot be used."""


def _mode(raw: str) -> str:
    return raw.strip().lower()


@dataclass(frozen=True)
class TlsConfig:
    """This process's identity on the internal links: mTLS on gRPC (server and client), HTTPS on its
    HTTP port. Every process reads it; every certificate chains to the one CA of `TLS_CA_FILE`."""

    mode: str = setting("auto", env="GRPC_TLS_MODE", parse=_mode)
    cert_file: str = setting("", env="GRPC_TLS_CERT_FILE")
    key_file: str = setting("", env="GRPC_TLS_KEY_FILE")
    ca_file: str = setting("", env="TLS_CA_FILE")
    # Who may read the HTTP port (/healthz, /metrics, the archive's /records/): `optional` lets clients
    # without a certificate in (record links, probes) and refuses a certificate of another CA;
    # `required` is mTLS there too.
    http_client_cert: str = setting("optional", env="TLS_HTTP_CLIENT_CERT", parse=_mode)
    reload_s: float = setting(5.0, env="TLS_RELOAD_SEC")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"GRPC_TLS_MODE={self.mode!r}: expected one of {', '.join(MODES)}")
        if self.http_client_cert not in HTTP_CLIENT_CERT:
            raise ConfigError(f"TLS_HTTP_CLIENT_CERT={self.http_client_cert!r}: expected optional or required")
        if self.reload_s < 0:
            raise ConfigError("TLS_RELOAD_SEC must be >= 0")
        files = {"GRPC_TLS_CERT_FILE": self.cert_file, "GRPC_TLS_KEY_FILE": self.key_file, "TLS_CA_FILE": self.ca_file}
        given = {k for k, v in files.items() if v}
        if self.mode == "off" and given:
            raise ConfigError(f"GRPC_TLS_MODE=off but {', '.join(sorted(given))} set: remove one or the other")
        if given and len(given) < 3:
            missing = sorted(set(files) - given)
            raise ConfigError(f"mTLS needs all three files: {', '.join(missing)} missing")
        if self.mode == "on" and not given:
            raise ConfigError("GRPC_TLS_MODE=on needs GRPC_TLS_CERT_FILE, GRPC_TLS_KEY_FILE and TLS_CA_FILE")

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    def check_plaintext(self, what: str, hosts: Iterable[str]) -> None:
        """Refuse plaintext towards (or on) a host that is not loopback unless GRPC_TLS_MODE=off."""
        _check_plaintext(self.enabled, self.mode, "GRPC_TLS_MODE", "GRPC_TLS_CERT_FILE", what, hosts)


@dataclass(frozen=True)
class EdgeTlsConfig:
    """The gateway's public certificate: `wss://` and `https://` on its one port."""

    mode: str = setting("auto", env="TLS_MODE", parse=_mode)
    cert_file: str = setting("", env="TLS_CERT_FILE")
    key_file: str = setting("", env="TLS_KEY_FILE")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"TLS_MODE={self.mode!r}: expected one of {', '.join(MODES)}")
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("TLS_CERT_FILE and TLS_KEY_FILE go together")
        if self.mode == "off" and self.cert_file:
            raise ConfigError("TLS_MODE=off but TLS_CERT_FILE set: remove one or the other")
        if self.mode == "on" and not self.cert_file:
            raise ConfigError("TLS_MODE=on needs TLS_CERT_FILE and TLS_KEY_FILE")

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)

    def check_plaintext(self, host: str) -> None:
        _check_plaintext(self.enabled, self.mode, "TLS_MODE", "TLS_CERT_FILE", "the gateway listens", [host])


def _check_plaintext(enabled: bool, mode: str, mode_var: str, file_var: str, what: str, hosts: Iterable[str]) -> None:
    if enabled:
        return
    exposed = sorted({h for h in hosts if not is_loopback(h)})
    if not exposed:
        return
    if mode == "off":
        log.warning(
            "plaintext on a non-loopback address (%s=off): %s on %s",
            mode_var,
            what,
            ", ".join(exposed),
            extra={"stage": "tls", "event": "plaintext_allowed"},
        )
        return
    raise ConfigError(
        f"{what} on {', '.join(exposed)} without TLS: set {file_var} (and its key and CA), "
        f"or {mode_var}=off when something else encrypts the link"
    )


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8, ::1 and unix sockets are loopback; 0.0.0.0 and names are not."""
    host = host.strip().strip("[]")
    if host == "localhost" or host.startswith("unix:"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(addr: str) -> str:
    """The host of a gRPC target: `host:port`, `[v6]:port`, `dns:///host:port`, `ipv4:host:port`, `unix:...`."""
    addr = addr.strip()
    if addr.startswith("unix:"):
        return addr
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if addr.startswith(scheme):
            addr = addr[len(scheme) :]
            break
    if addr.startswith("["):
        return addr[1 : addr.index("]")]
    return addr.rsplit(":", 1)[0] if ":" in addr else addr


@dataclass(frozen=True)
class PemIdentity:
    """A checked certificate chain, its key, and the CA (empty when none is asked for)."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    not_after: float  # unix time

    def load_into(self, context: ssl.SSLContext) -> None:
        """`load_cert_chain` reads files only: hand it a private snapshot, never the live files."""
        with tempfile.TemporaryDirectory(prefix="speechgw-tls-") as tmp:
            cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            cert.write_bytes(self.cert_pem)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(self.key_pem)
            context.load_cert_chain(cert, key)
        if self.ca_pem:
            context.load_verify_locations(cadata=self.ca_pem.decode("ascii"))


def read_identity(cert_file: str, key_file: str, ca_file: str = "") -> PemIdentity:
    """Read and check a certificate chain, its key and a CA: parseable, the key matches the certificate."""
    cert_pem, key_pem = _read(cert_file, "certificate"), _read(key_file, "key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise TlsError(f"{cert_file}: not a PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"{key_file}: not an unencrypted PEM private key ({exc})") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.PEM, spki) != chain[0].public_key().public_bytes(
        serialization.Encoding.PEM, spki
    ):
        raise TlsError(f"{key_file} is not the key of {cert_file}")
    ca_pem = b""
    if ca_file:
        ca_pem = _read(ca_file, "CA")
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError as exc:
            raise TlsError(f"{ca_file}: not a PEM certificate ({exc})") from None
    not_after = chain[0].not_valid_after_utc.timestamp()
    if not_after < time.time():
        expired = dt.datetime.fromtimestamp(not_after, dt.UTC).isoformat()
        log.warning("%s expired at %s", cert_file, expired, extra={"stage": "tls", "err_code": "certificate_expired"})
    return PemIdentity(cert_pem, key_pem, ca_pem, not_after)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"{what} file {path}: {exc.strerror or exc}") from None


Stamp = tuple[tuple[int, int, int], ...]


class FileStamps:
    """Notices a replaced or rewritten file (inode, size, mtime) among `paths`."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = [p for p in paths if p]
        self._last = self.current()

    def current(self) -> Stamp:
        out = []
        for p in self.paths:
            try:
                st = os.stat(p)
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((0, 0, 0))
        return tuple(out)

    def changed(self) -> bool:
        now = self.current()
        if now == self._last:
            return False
        self._last = now
        return True


class _Reloader:
    """Re-reads an identity when its files change; keeps the last good one when the new one is bad.

    A rotation replaces two files one after the other, so a pair that does not load is looked at again
    at the next poll and reported only if the files are still the same then: a key already replaced
    beside a certificate about to be is not an error."""

    def __init__(self, use: str, cert_file: str, key_file: str, ca_file: str) -> None:
        self.use = use
        self._files = (cert_file, key_file, ca_file)
        self._stamps = FileStamps(self._files)
        self._loaded = self._stamps.current()
        self._failing: Stamp | None = None
        self._reported: Stamp | None = None
        self.identity = read_identity(*self._files)
        CERT_EXPIRY.labels(use).set(self.identity.not_after)
        RELOADS.labels(use, "ok")
        RELOADS.labels(use, "error")

    def poll(self) -> PemIdentity | None:
        """The new identity when the files changed and load, else None."""
        stamp = self._stamps.current()
        if stamp in (self._loaded, self._reported):
            return None
        try:
            identity = read_identity(*self._files)
        except TlsError as exc:
            if stamp != self._failing:
                self._failing = stamp  # maybe half-way through a rotation: look again next time
                return None
            self._reported = stamp
            RELOADS.labels(self.use, "error").inc()
            log.error(
                "certificate reload refused, the previous one keeps serving: %s",
                exc,
                extra={"stage": "tls", "err_code": "tls_reload_failed", "event": self.use},
            )
            return None
        self._loaded, self._failing, self._reported = stamp, None, None
        self.identity = identity
        RELOADS.labels(self.use, "ok").inc()
        CERT_EXPIRY.labels(self.use).set(identity.not_after)
        log.info("certificate reloaded", extra={"stage": "tls", "event": f"tls_reloaded:{self.use}"})
        return identity


class ReloadingServerContext:
    """A server `ssl.SSLContext` whose certificate can be replaced while serving: the context handed to
    the server picks, for each new handshake, the newest loaded context (through its SNI hook, which
    runs with or without SNI). Open connections keep the certificate they started with."""

    def __init__(self, use: str, cert_file: str, key_file: str, ca_file: str = "", client_cert: str = "none") -> None:
        self._reloader = _Reloader(use, cert_file, key_file, ca_file)
        self._client_cert = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}[
            client_cert
        ]
        self.context = self._build(self._reloader.identity)
        self._current = self.context
        self.context.sni_callback = self._pick

    def _build(self, identity: PemIdentity) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        identity.load_into(context)
        context.verify_mode = self._client_cert
        return context

    def _pick(self, sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if self._current is not self.context:
            sock.context = self._current

    def reload_if_changed(self) -> bool:
        identity = self._reloader.poll()
        if identity is None:
            return False
        try:
            self._current = self._build(identity)
        except ssl.SSLError as exc:
            RELOADS.labels(self._reloader.use, "error").inc()
            log.error("certificate reload refused: %s", exc, extra={"stage": "tls", "err_code": "tls_reload_failed"})
            return False
        return True

    async def watch(self, interval_s: float) -> None:
        """Poll the files forever (run it supervised). interval 0: load once, never poll."""
        if interval_s <= 0:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(interval_s)
            self.reload_if_changed()


class GrpcCertFetcher:
    """The certificate-configuration fetcher of `grpc.dynamic_ssl_server_credentials`: gRPC calls it
    (from its own threads) at each handshake; it answers a new configuration when the files changed."""

    def __init__(self, use: str, cfg: TlsConfig) -> None:
        self._reloader = _Reloader(use, cfg.cert_file, cfg.key_file, cfg.ca_file)
        self._every_s = cfg.reload_s
        self._next_check = time.monotonic() + self._every_s
        self._lock = threading.Lock()

    def initial(self) -> Any:
        return _grpc_config(self._reloader.identity)

    def __call__(self) -> Any:
        if self._every_s <= 0:
            return None
        with self._lock:
            now = time.monotonic()
            if now < self._next_check:
                return None
            self._next_check = now + self._every_s
            identity = self._reloader.poll()
        return None if identity is None else _grpc_config(identity)


def _grpc_config(identity: PemIdentity) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(identity.key_pem, identity.cert_pem)], root_certificates=identity.ca_pem
    )


def grpc_server_credentials(cfg: TlsConfig) -> grpc.ServerCredentials:
    """mTLS for a gRPC server: its certificate, clients must present one of the CA; hot-reloaded."""
    fetcher = GrpcCertFetcher("grpc", cfg)
    return grpc.dynamic_ssl_server_credentials(fetcher.initial(), fetcher, require_client_authentication=True)


def grpc_channel(addr: str, cfg: TlsConfig | None, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A channel to an internal service: mTLS when this process has an identity, else plaintext.
    The files are read now: a channel opened after a rotation presents the new certificate."""
    if cfg is None or not cfg.enabled:
        return grpc.aio.insecure_channel(addr, options=list(options), interceptors=client_interceptors())
    identity = read_identity(cfg.cert_file, cfg.key_file, cfg.ca_file)
    CERT_EXPIRY.labels("client").set(identity.not_after)
    creds = grpc.ssl_channel_credentials(identity.ca_pem, identity.key_pem, identity.cert_pem)
    return grpc.aio.secure_channel(addr, creds, options=list(options), interceptors=client_interceptors())


def client_ssl_context(cfg: TlsConfig | None) -> ssl.SSLContext | None:
    """For HTTPS downloads by a service (the gateway fetching an archive): the system's CAs plus the
    internal CA, and this process's certificate for servers that ask for one. None without TLS."""
    if cfg is None or not cfg.enabled:
        return None
    identity = read_identity(cfg.cert_file, cfg.key_file, cfg.ca_file)
    context = ssl.create_default_context()
    identity.load_into(context)
    return context


def server_http_context(cfg: TlsConfig) -> ReloadingServerContext | None:
    """The HTTPS context of a service's HTTP port (None without TLS)."""
    if not cfg.enabled:
        return None
    return ReloadingServerContext("http", cfg.cert_file, cfg.key_file, cfg.ca_file, cfg.http_client_cert)


def edge_context(cfg: EdgeTlsConfig) -> ReloadingServerContext | None:
    """The gateway's `wss://` context (None without TLS); clients authenticate with tokens, not certificates."""
    if not cfg.enabled:
        return None
    return ReloadingServerContext("edge", cfg.cert_file, cfg.key_file)
