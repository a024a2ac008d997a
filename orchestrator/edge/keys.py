"""Where the verification keys come from: an HS256 secret, a PEM public key file, or a JWKS endpoint.

The thin I/O side of `orchestrator/edge/auth.py`. A JWKS endpoint is fetched by PyJWT's `PyJWKClient`
(the set cached for AUTH_JWKS_CACHE_SEC, an unknown `kid` refetched at most once per cooldown) on a
small thread pool of its own: its blocking HTTP fetch never runs on the event loop (STYLE §7).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from common.envconf import ConfigError
from orchestrator.config import AuthConfig
from orchestrator.core.protocol import ErrorCode
from orchestrator.edge.auth import (
    ASYMMETRIC_ALGORITHMS,
    AuthError,
    Principal,
    TokenPolicy,
    algorithms_for,
    check_algorithm,
    unverified_header,
    verify_token,
)

log = logging.getLogger(__name__)
JWKS_COOLDOWN_S = 30.0  # an unknown kid triggers at most one refetch per this many seconds


class Verifier(Protocol):
    async def verify(self, token: str) -> Principal:
        """The token's principal, or AuthError."""

    async def close(self) -> None: ...


class StaticKeyVerifier:
    """One key known at start (a secret or a PEM public key): verification is pure CPU (tens of µs)."""

    def __init__(self, key: Any, policy: TokenPolicy) -> None:
        self.key = key
        self.algorithms = algorithms_for(key)
        self.policy = policy

    async def verify(self, token: str) -> Principal:
        return verify_token(token, self.key, self.policy, self.algorithms)

    async def close(self) -> None:
        return None


class JwksVerifier:
    """Keys from a JWKS endpoint (RS256/ES256/...): the token's `kid` picks the key, the key's type its
    algorithm. HMAC keys in the set are ignored, so a JWKS can never turn on HS256."""

    def __init__(self, url: str, policy: TokenPolicy, cache_s: float, timeout_s: float) -> None:
        self.policy = policy
        self._client = jwt.PyJWKClient(
            url, cache_jwk_set=True, lifespan=cache_s, timeout=timeout_s, cooldown_duration=JWKS_COOLDOWN_S
        )
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="jwks")

    async def verify(self, token: str) -> Principal:
        header = unverified_header(token)
        alg = check_algorithm(header, ASYMMETRIC_ALGORITHMS)  # refused before any fetch
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError(ErrorCode.AUTH_INVALID, "token has no kid; the JWKS needs one to pick the key")
        loop = asyncio.get_running_loop()
        try:
            jwk = await loop.run_in_executor(self._pool, self._client.get_signing_key, kid)
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("JWKS unreachable: %s", exc, extra={"stage": "auth", "err_code": "jwks_unavailable"})
            raise AuthError(ErrorCode.AUTH_INVALID, "the signing keys cannot be fetched now") from None
        except jwt.PyJWKClientError:
            raise AuthError(ErrorCode.AUTH_INVALID, "no signing key matches the token's kid") from None
        allowed = algorithms_for(jwk.key)
        if alg not in allowed:
            raise AuthError(ErrorCode.AUTH_INVALID, f"token algorithm {alg!r} does not match its key ({allowed})")
        return verify_token(token, jwk.key, self.policy, allowed)

    async def warm(self) -> None:
        """Fetch the set once at start, so the first session does not wait; a failure is only logged."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._client.get_signing_keys)
        except jwt.PyJWKClientError as exc:
            log.warning("JWKS not fetched at start: %s", exc, extra={"stage": "auth", "err_code": "jwks_unavailable"})

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def load_public_key(path: str) -> Any:
    """A PEM public key (RSA, EC or Ed25519) from a file; ConfigError when unreadable or not a public key."""
    try:
        key = load_pem_public_key(Path(path).read_bytes())
        algorithms_for(key)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"AUTH_JWT_PUBLIC_KEY_FILE={path!r}: not a usable PEM public key ({exc})") from None
    return key


def build_verifier(cfg: AuthConfig) -> Verifier | None:
    """The verifier AUTH_* describe; None when authentication is off. Blocking (reads a key file): call at start."""
    if not cfg.enabled:
        return None
    policy = TokenPolicy(cfg.audience, cfg.issuer, cfg.leeway_s)
    if cfg.jwks_url:
        return JwksVerifier(cfg.jwks_url, policy, cfg.jwks_cache_s, cfg.jwks_timeout_s)
    if cfg.jwt_public_key_file:
        return StaticKeyVerifier(load_public_key(cfg.jwt_public_key_file), policy)
    return StaticKeyVerifier(cfg.jwt_secret, policy)
