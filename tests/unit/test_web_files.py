"""The browser page's files (orchestrator/web, docs/web.md): every file the page loads is served, nothing in
them needs what the Content-Security-Policy forbids, and `make run` prints the page's link."""

from __future__ import annotations

import re

import pytest

from devtools.stack import page_link
from orchestrator.web import CONTENT_SECURITY_POLICY, PAGE_FILES, WEB_DIR, load_assets

pytestmark = pytest.mark.unit


def test_every_file_loads_with_its_content_type() -> None:
    assets = load_assets()
    assert set(assets) == set(PAGE_FILES)
    assert assets["/"].content_type.startswith("text/html") and b"<title>" in assets["/"].body
    assert all(a.content_type.startswith("text/javascript") for p, a in assets.items() if p.endswith(".js"))


def test_every_file_the_page_refers_to_is_served() -> None:
    html = (WEB_DIR / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert refs and all(f"/{ref}" in PAGE_FILES for ref in refs), refs
    app = (WEB_DIR / "app.js").read_text()
    worklet = re.findall(r'new URL\("([\w.-]+)", import\.meta\.url\)', app)
    assert worklet == ["capture-worklet.js"] and "/web/capture-worklet.js" in PAGE_FILES
    for name in ("capture-worklet.js", "app.js", "resampler.js"):
        for imported in re.findall(r'from "\./([\w.-]+)"', (WEB_DIR / name).read_text()):
            assert f"/web/{imported}" in PAGE_FILES, (name, imported)


def test_nothing_needs_what_the_policy_forbids() -> None:
    """No inline script or style, no event-handler attributes, no eval: the policy allows none of them."""
    html = (WEB_DIR / "index.html").read_text()
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", html))
    assert not re.search(r"\son\w+=", html) and " style=" not in html and "<style" not in html
    for name in ("app.js", "capture-worklet.js", "resampler.js"):
        code = (WEB_DIR / name).read_text()
        assert not re.search(r"\beval\(|new Function\(|innerHTML|outerHTML|insertAdjacentHTML", code), name
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "'unsafe-eval'" not in CONTENT_SECURITY_POLICY


def test_the_link_make_run_prints_carries_the_token_in_its_fragment() -> None:
    assert page_link("http://127.0.0.1:8080", "abc.def.ghi") == "http://127.0.0.1:8080/#token=abc.def.ghi"
    assert page_link("https://127.0.0.1:8080", None) == "https://127.0.0.1:8080/"
