"""A throwaway certificate authority for local TLS and mTLS (`make run TLS=1`, the TLS tests).

    python -m devtools.certs var/certs gateway vad lid asr compress

writes `ca.pem` (and `ca.key`), then `<name>.pem` / `<name>.key` for every name: one identity per
process, valid for `localhost`, `127.0.0.1` and `::1`, usable as server and as client certificate
(every service is both on the internal links). Keys are ECDSA P-256: the handshake costs a fraction
of RSA's. Never use these in production: the CA key sits next to the certificates.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_DAYS = 30


@dataclass(frozen=True)
class Identity:
    """One process's certificate and key files."""

    cert: Path
    key: Path


@dataclass
class DevCA:
    """A CA whose certificate and key live in `dir`; `issue` signs one identity per name."""

    dir: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_file(self) -> Path:
        return self.dir / "ca.pem"

    @classmethod
    def create(cls, dir: Path, name: str = "speechgw dev CA", days: int = DEFAULT_DAYS) -> DevCA:
        dir.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        ca = cls(dir, cert, key)
        _write(ca.cert_file, cert.public_bytes(serialization.Encoding.PEM))
        _write(dir / "ca.key", _key_pem(key), private=True)
        return ca

    @classmethod
    def load(cls, dir: Path) -> DevCA:
        cert = x509.load_pem_x509_certificate((dir / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((dir / "ca.key").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(dir, cert, key)

    def issue(
        self,
        name: str,
        hosts: Iterable[str] = DEFAULT_HOSTS,
        days: int = DEFAULT_DAYS,
        out: Path | None = None,
    ) -> Identity:
        """Sign a server+client certificate for `name` valid for `hosts`; write `<name>.pem`/`.key`
        (atomically, so a process reloading them never reads half a file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        out = out or self.dir
        ident = Identity(out / f"{name}.pem", out / f"{name}.key")
        # Key first: a reloader that sees the new certificate then finds its key already in place.
        _write(ident.key, _key_pem(key), private=True)
        _write(ident.cert, cert.public_bytes(serialization.Encoding.PEM))
        return ident


def dev_certs(dir: Path, names: Iterable[str], hosts: Sequence[str] = DEFAULT_HOSTS) -> dict[str, Identity]:
    """A fresh CA in `dir` and one identity per name."""
    ca = DevCA.create(dir)
    return {name: ca.issue(name, hosts) for name in names}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.certs", description="a throwaway CA and identities")
    p.add_argument("dir", type=Path)
    p.add_argument("names", nargs="+", help="one identity per name, e.g. gateway vad asr")
    p.add_argument("--host", action="append", default=None, help=f"names/IPs to certify (default {DEFAULT_HOSTS})")
    args = p.parse_args(argv)
    for name, ident in dev_certs(args.dir, args.names, tuple(args.host or DEFAULT_HOSTS)).items():
        print(f"{name}: {ident.cert} {ident.key}")
    print(f"CA: {args.dir / 'ca.pem'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
