"""Signed, expiring URLs of the local store (docs/storage.md), the way S3 presigning works.

`sig` is HMAC-SHA256, under RECORD_URL_KEY (a key of its own: not the JWT secret), of the request path
and the expiry; a URL whose path, expiry or signature was changed, or whose expiry has passed, is
refused. Sans-I/O: the clock is injected.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from urllib.parse import urlencode

MAX_EXP_DIGITS = 12


class UrlSigner:
    def __init__(self, key: bytes, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        if not key:
            raise ValueError("the URL signing key must not be empty")
        self._key = key
        self.ttl_s = ttl_s
        self._clock = clock

    def _mac(self, path: str, exp: str) -> str:
        digest = hmac.new(self._key, f"GET\n{path}\n{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def query(self, path: str) -> str:
        """The query string that makes `path` readable until now + TTL."""
        exp = str(int(self._clock()) + self.ttl_s)
        return urlencode({"exp": exp, "sig": self._mac(path, exp)})

    def valid(self, path: str, exp: str | None, sig: str | None) -> bool:
        """Whether `sig` signs exactly this path and expiry, and the expiry has not passed."""
        if not exp or not sig or not (exp.isascii() and exp.isdigit()) or len(exp) > MAX_EXP_DIGITS:
            return False
        if not sig.isascii():  # compare_digest takes ASCII text only
            return False
        if not hmac.compare_digest(self._mac(path, exp), sig):
            return False
        return int(exp) >= self._clock()
