"""Development keys of the local stack: `make run`, `make demo` and the tests turn authentication on
with them, and the CLI tools mint their tokens from them (docs/security.md).

The keys are random, made once per checkout under `var/dev-keys/` (`SPEECHGW_DEV_KEYS_DIR`), readable
by their owner only. They are for a stack on loopback: production issues tokens elsewhere and sets
AUTH_JWT_* and RECORD_URL_KEY itself.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt

DEV_AUDIENCE = "speechgw"
DEV_ISSUER = "speechgw-dev"
DEV_SUB = "dev"
AUTH_KEYS = ("AUTH_MODE", "AUTH_JWT_SECRET", "AUTH_JWT_PUBLIC_KEY_FILE", "AUTH_JWKS_URL")


def keys_dir() -> Path:
    return Path(os.environ.get("SPEECHGW_DEV_KEYS_DIR", "var/dev-keys"))


def ensure_secret(path: Path) -> str:
    """The secret in `path`, made (64 hex digits, mode 0600) if missing. Safe when several processes
    race: the file appears complete or not at all (written aside, then hard-linked into place)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            tmp.unlink()
    return path.read_text().strip()


def dev_env(directory: Path | None = None) -> dict[str, str]:
    """The gateway's and the archive's settings for the development keys."""
    directory = directory or keys_dir()
    return {
        "AUTH_MODE": "jwt",
        "AUTH_JWT_SECRET": ensure_secret(directory / "jwt-secret"),
        "AUTH_JWT_AUDIENCE": DEV_AUDIENCE,
        "AUTH_JWT_ISSUER": DEV_ISSUER,
        "RECORD_URL_KEY": ensure_secret(directory / "record-url-key"),
    }


def with_dev_keys(env: Mapping[str, str]) -> dict[str, str]:
    """`env` plus the development keys for what it does not configure itself (authentication, URL key)."""
    dev = dev_env()
    out = dict(env)
    if not any(env.get(k) for k in AUTH_KEYS):
        out.update({k: v for k, v in dev.items() if k.startswith("AUTH_")})
    out.setdefault("RECORD_URL_KEY", dev["RECORD_URL_KEY"])
    return out


def mint(
    secret: str,
    sub: str = DEV_SUB,
    ttl_s: float = 3600.0,
    audience: str = DEV_AUDIENCE,
    issuer: str = DEV_ISSUER,
    **limits: Any,
) -> str:
    """An HS256 token for `sub`; `limits` go in the `speechgw` claim (max_sessions, return)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + int(ttl_s)}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    if limits:
        claims["speechgw"] = limits
    return jwt.encode(claims, secret, algorithm="HS256")


def default_token(sub: str = DEV_SUB) -> str | None:
    """What a CLI tool sends when not told: SPEECHGW_TOKEN, else a token minted from the development
    secret if this checkout has one, else none."""
    token = os.environ.get("SPEECHGW_TOKEN")
    if token:
        return token
    secret_file = keys_dir() / "jwt-secret"
    if secret_file.is_file():
        return mint(secret_file.read_text().strip(), sub)
    return None
