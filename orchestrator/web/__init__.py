"""The browser page the gateway serves at `GET /` (docs/web.md): the static files of this folder.

The files are read once, when the gateway starts, into a table keyed by their exact URL path; a request
path is only ever looked up in that table, never joined to a file name, so no path reaches the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WEB_DIR = Path(__file__).parent
# URL path -> file of this folder. The page loads the others relative to itself (`web/app.js`).
PAGE_FILES = {
    "/": "index.html",
    "/web/app.js": "app.js",
    "/web/capture-worklet.js": "capture-worklet.js",
    "/web/resampler.js": "resampler.js",
    "/web/style.css": "style.css",
    "/web/icon.svg": "icon.svg",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Scripts, styles and the AudioWorklet from this origin only, no inline code, sockets to this origin only
# ('self' covers ws:// and wss:// of the page's own host and port, CSP Level 3); nothing may frame the page.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Permissions-Policy", "microphone=(self), camera=(), geolocation=()"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cache-Control", "no-cache"),
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


def load_assets(directory: Path = WEB_DIR) -> dict[str, Asset]:
    """Every file of the page by its URL path; raises if one is missing (a broken install)."""
    return {
        url: Asset((directory / name).read_bytes(), CONTENT_TYPES[Path(name).suffix])
        for url, name in PAGE_FILES.items()
    }
