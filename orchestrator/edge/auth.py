"""Who a client is: JWT verification, the token's claims, where a token travels (docs/security.md).

Sans-I/O: nothing here awaits, reads a file or opens a socket. Key sources (a secret, a PEM file, a
JWKS endpoint) live in `orchestrator/edge/keys.py`; this module only checks a token against a key it
is handed and turns its claims into a `Principal`.

Rules (each one has a test in tests/unit/test_auth.py):
- the algorithms come from the key, never from the token: a secret accepts HS256 only, an RSA key
  RS256 only, an EC key ES256/ES384/ES512 by its curve; `none` is never accepted, so a token signed
  with HS256 and the RSA public key as the secret is refused (the classic HS/RS confusion);
- `exp` and `sub` are required; `aud` and `iss` when configured; `nbf` and `iat` checked when present;
- an expired token is `auth_expired`, every other defect `auth_invalid`, a valid token whose claims
  do not allow what the session asks for `auth_forbidden`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from orchestrator.core.protocol import EVENT_FAMILIES, ErrorCode

BEARER_PROTOCOL_PREFIX = "bearer."  # Sec-WebSocket-Protocol entry carrying the token
SUBPROTOCOL = "speechgw.v1"  # the subprotocol the gateway echoes (browsers need one echoed)
LIMITS_CLAIM = "speechgw"  # {"max_sessions": int, "return": [event families]}
MAX_TOKEN_BYTES = 8192
MAX_SUB_CHARS = 256
HMAC_ALGORITHMS = ("HS256",)
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
ASYMMETRIC_ALGORITHMS = ("RS256", *_EC_ALGORITHMS.values(), "EdDSA")
MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key must be at least as long as the hash output


class AuthError(Exception):
    """A token, or its absence, refused with one of the `auth_*` codes."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Principal:
    """A verified token: the tenant (`sub`) and the limits its claims carry (None = no limit)."""

    sub: str
    expires_at: float
    max_sessions: int | None = None
    returns: frozenset[str] | None = None


@dataclass(frozen=True)
class TokenPolicy:
    """What every token must satisfy besides its signature."""

    audience: str = ""
    issuer: str = ""
    leeway_s: float = 30.0


def algorithms_for(key: Any) -> tuple[str, ...]:
    """The only algorithms a key may verify. Raises ValueError for a key type the gateway does not use."""
    if isinstance(key, str | bytes):
        return HMAC_ALGORITHMS
    if isinstance(key, rsa.RSAPublicKey):
        return ("RS256",)
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHMS.get(key.curve.name)
        if alg is None:
            raise ValueError(f"EC curve {key.curve.name} is not supported")
        return (alg,)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ("EdDSA",)
    raise ValueError(f"{type(key).__name__} cannot verify tokens (a public key or an HS256 secret is needed)")


def unverified_header(token: str) -> dict[str, Any]:
    """The token's header, before anything is trusted; refuses oversize and malformed tokens."""
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthError(ErrorCode.AUTH_INVALID, f"token longer than {MAX_TOKEN_BYTES} bytes")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise AuthError(ErrorCode.AUTH_INVALID, f"malformed token: {exc}") from None
    return dict(header)


def check_algorithm(header: Mapping[str, Any], allowed: Iterable[str]) -> str:
    """The header's `alg` if the key allows it; `none` and any other algorithm are refused."""
    alg = header.get("alg")
    allowed = tuple(allowed)
    if not isinstance(alg, str) or alg not in allowed:
        raise AuthError(ErrorCode.AUTH_INVALID, f"token algorithm {alg!r} is not accepted (expected {allowed})")
    return alg


def verify_token(token: str, key: Any, policy: TokenPolicy, algorithms: tuple[str, ...] | None = None) -> Principal:
    """Verify `token` with `key` and return its principal, or raise AuthError."""
    allowed = algorithms_for(key) if algorithms is None else algorithms
    check_algorithm(unverified_header(token), allowed)
    required = ["exp", "sub"] + (["aud"] if policy.audience else []) + (["iss"] if policy.issuer else [])
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=list(allowed),
            audience=policy.audience or None,
            issuer=policy.issuer or None,
            leeway=policy.leeway_s,
            options={"require": required},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError(ErrorCode.AUTH_EXPIRED, "token has expired") from None
    except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
        # PyJWT raises InvalidKeyError (an InvalidTokenError) for a key of the wrong kind, and a bare
        # ValueError from deep inside for a few malformed signatures; all mean the same to the client.
        raise AuthError(ErrorCode.AUTH_INVALID, f"token refused: {exc}") from None
    return principal_of(claims)


def principal_of(claims: Mapping[str, Any]) -> Principal:
    """The tenant and the limits of verified claims; a malformed limits claim refuses the token."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_CHARS:
        raise AuthError(ErrorCode.AUTH_INVALID, f"sub must be a non-empty string of at most {MAX_SUB_CHARS} chars")
    limits = claims.get(LIMITS_CLAIM, {})
    if not isinstance(limits, dict):
        raise AuthError(ErrorCode.AUTH_INVALID, f"claim {LIMITS_CLAIM!r} must be an object")
    max_sessions = limits.get("max_sessions")
    if max_sessions is not None and (
        not isinstance(max_sessions, int) or isinstance(max_sessions, bool) or max_sessions < 1
    ):
        raise AuthError(ErrorCode.AUTH_INVALID, f"{LIMITS_CLAIM}.max_sessions must be a positive integer")
    return Principal(
        sub=sub,
        expires_at=float(claims["exp"]),
        max_sessions=max_sessions,
        returns=_names(limits, "return"),
    )


def _names(limits: Mapping[str, Any], key: str) -> frozenset[str] | None:
    value = limits.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v in EVENT_FAMILIES for v in value):
        raise AuthError(ErrorCode.AUTH_INVALID, f"{LIMITS_CLAIM}.{key} must list event families {EVENT_FAMILIES}")
    return frozenset(value)


def token_from_handshake(authorization: str | None, protocols: Iterable[str]) -> str | None:
    """The token a client sent before the upgrade: `Authorization: Bearer <token>`, else a
    `Sec-WebSocket-Protocol` entry `bearer.<token>` (browsers cannot set headers). `protocols` are the
    raw header values (each may list several, comma-separated)."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    for header in protocols:
        for entry in header.split(","):
            entry = entry.strip()
            if entry.lower().startswith(BEARER_PROTOCOL_PREFIX) and len(entry) > len(BEARER_PROTOCOL_PREFIX):
                return entry[len(BEARER_PROTOCOL_PREFIX) :]
    return None


def check_returns(principal: Principal, returns: Iterable[str]) -> None:
    """The `return` families the session asks for must be among those the token allows."""
    if principal.returns is None:
        return
    denied = sorted(set(returns) - principal.returns)
    if denied:
        raise AuthError(ErrorCode.AUTH_FORBIDDEN, f"the token does not allow the event families {denied}")


def check_fresh(principal: Principal, now: float, leeway_s: float) -> None:
    """A token verified at the handshake may have expired by the time `start` arrives."""
    if principal.expires_at + leeway_s < now:
        raise AuthError(ErrorCode.AUTH_EXPIRED, "token has expired")


def may_read_transcripts(principal: Principal) -> bool:
    """Transcripts are the `asr` family: a token limited to other families may not read them."""
    return principal.returns is None or "asr" in principal.returns
