"""Signed record URLs and tenant namespaces of the archive (services/compress/signing.py, session.py)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.compress.session import (
    InvalidFrame,
    archive_name,
    flow_id_of_key,
    name_of_key,
    record_key,
    tenant_namespace,
)
from services.compress.signing import UrlSigner
from services.compress.store import LocalStore
from tests.clock import FakeClock

pytestmark = pytest.mark.unit
KEY = b"k" * 32


def test_a_signed_path_is_valid_until_its_expiry() -> None:
    clock = FakeClock(1_000_000.0)
    signer = UrlSigner(KEY, ttl_s=60, clock=clock)
    q = dict(parse_qsl(signer.query("/records/public/f1.flac")))
    assert q["exp"] == "1000060"
    assert signer.valid("/records/public/f1.flac", q["exp"], q["sig"])
    clock.advance(60)
    assert signer.valid("/records/public/f1.flac", q["exp"], q["sig"])
    clock.advance(1)
    assert not signer.valid("/records/public/f1.flac", q["exp"], q["sig"])


def test_any_change_breaks_the_signature() -> None:
    signer = UrlSigner(KEY, ttl_s=60)
    path = "/records/public/f1.flac"
    q = dict(parse_qsl(signer.query(path)))
    assert not signer.valid("/records/public/f2.flac", q["exp"], q["sig"])
    assert not signer.valid(path, str(int(q["exp"]) + 1), q["sig"])
    assert not signer.valid(path, q["exp"], q["sig"][:-1] + ("A" if q["sig"][-1] != "A" else "B"))
    assert not signer.valid(path, q["exp"], None) and not signer.valid(path, None, q["sig"])
    assert not signer.valid(path, "²", q["sig"]) and not signer.valid(path, q["exp"], "é")
    assert not signer.valid(path, "9" * 13, q["sig"])
    assert not UrlSigner(b"x" * 32, ttl_s=60).valid(path, q["exp"], q["sig"])  # another key


def test_the_local_store_answers_signed_urls(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, "http://h:1/", UrlSigner(KEY, 60))
    url = urlsplit(store.url("records/public/f1.flac"))
    assert (url.scheme, url.netloc, url.path) == ("http", "h:1", "/records/public/f1.flac")
    q = dict(parse_qsl(url.query))
    assert store.signer is not None and store.signer.valid(url.path, q["exp"], q["sig"])


@pytest.mark.parametrize("key", ["../x", "records/../../x", "/etc/passwd", "records\\..\\x", "a\0b"])
def test_the_local_store_never_maps_a_key_outside_its_directory(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        LocalStore(tmp_path / "store").path_of(key)


def test_tenants_get_separate_keys_and_retries_keep_theirs() -> None:
    a, b = record_key("call-1", "flac", "tenant-a"), record_key("call-1", "flac", "tenant-b")
    assert a != b and a == record_key("call-1", "flac", "tenant-a")
    assert record_key("call-1", "flac") == "records/public/call-1.flac"
    assert name_of_key(a) == archive_name("call-1", "tenant-a") and flow_id_of_key(a) == "call-1"


@given(st.text(min_size=1, max_size=300))
def test_every_tenant_gets_a_safe_namespace_of_its_own(tenant: str) -> None:
    ns = tenant_namespace(tenant)
    assert len(ns) == 32 and all(c in "0123456789abcdef" for c in ns) and ns != tenant_namespace("")
    key = record_key("f", "flac", tenant)
    assert key == f"records/{ns}/f.flac" and name_of_key(key) == f"{ns}/f"


def test_the_archive_name_refuses_a_bad_flow_id() -> None:
    with pytest.raises(InvalidFrame):
        archive_name("../x", "tenant-a")
