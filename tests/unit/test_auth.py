"""JWT verification (orchestrator/edge/auth.py, keys.py): every way a token can be wrong is refused with
its code; algorithms come from the key, never from the token; JWKS keys come from a real HTTP server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from common.envconf import ConfigError, load_env
from orchestrator.config import AuthConfig, GatewayConfig
from orchestrator.core.protocol import ErrorCode
from orchestrator.edge.auth import (
    AuthError,
    Principal,
    TokenPolicy,
    algorithms_for,
    check_fresh,
    check_returns,
    may_read_transcripts,
    token_from_handshake,
    verify_token,
)
from orchestrator.edge.keys import JwksVerifier, StaticKeyVerifier, build_verifier

pytestmark = pytest.mark.unit

SECRET = "unit-test-secret-of-at-least-32-bytes!!"
POLICY = TokenPolicy(audience="speechgw", issuer="https://issuer.example", leeway_s=0)
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "tenant-a",
        "exp": now + 300,
        "iat": now,
        "aud": "speechgw",
        "iss": "https://issuer.example",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def hs(**over: Any) -> str:
    return jwt.encode(claims(**over), SECRET, algorithm="HS256")


def refused(token: str, key: Any = SECRET, policy: TokenPolicy = POLICY) -> AuthError:
    with pytest.raises(AuthError) as err:
        verify_token(token, key, policy)
    return err.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None = None) -> str:
    """A token built by hand, as an attacker would (PyJWT refuses to make some of these)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def rsa_public_pem() -> bytes:
    return RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- the secret (HS256) ---------------------------------------------------------------------------------


def test_a_valid_token_gives_its_tenant_and_limits() -> None:
    token = hs(speechgw={"max_sessions": 2, "return": ["asr", "record_url"]})
    p = verify_token(token, SECRET, POLICY)
    assert (p.sub, p.max_sessions, p.returns) == ("tenant-a", 2, frozenset({"asr", "record_url"}))


def test_an_expired_token_is_auth_expired() -> None:
    assert refused(hs(exp=int(time.time()) - 60)).code is ErrorCode.AUTH_EXPIRED


def test_leeway_tolerates_a_little_clock_skew() -> None:
    token = hs(exp=int(time.time()) - 5)
    assert verify_token(token, SECRET, TokenPolicy("speechgw", "https://issuer.example", leeway_s=30)).sub
    assert refused(token).code is ErrorCode.AUTH_EXPIRED


@pytest.mark.parametrize(
    "over",
    [
        {"aud": "someone-else"},
        {"aud": None},
        {"iss": "https://evil.example"},
        {"iss": None},
        {"sub": None},
        {"exp": None},
        {"sub": ""},
        {"sub": 42},
        {"sub": "x" * 257},
        {"nbf": int(time.time()) + 3600},
        {"exp": "tomorrow"},
        {"speechgw": "unlimited"},
        {"speechgw": {"max_sessions": 0}},
        {"speechgw": {"max_sessions": True}},
        {"speechgw": {"return": ["everything"]}},
    ],
    ids=repr,
)
def test_wrong_or_missing_claims_are_auth_invalid(over: dict[str, Any]) -> None:
    assert refused(hs(**over)).code is ErrorCode.AUTH_INVALID


def test_a_bad_signature_is_auth_invalid() -> None:
    assert refused(jwt.encode(claims(), SECRET + "x", algorithm="HS256")).code is ErrorCode.AUTH_INVALID
    head, _, sig = hs().split(".")
    other = b64(json.dumps(claims(sub="tenant-b")).encode())
    assert refused(f"{head}.{other}.{sig}").code is ErrorCode.AUTH_INVALID  # payload swapped


@pytest.mark.parametrize("garbage", ["", "garbage", "a.b.c", "a.b", "..", "x" * 9000, "é.é.é"])
def test_garbage_is_auth_invalid(garbage: str) -> None:
    assert refused(garbage).code is ErrorCode.AUTH_INVALID


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_refused(alg: str) -> None:
    token = handmade({"alg": alg, "typ": "JWT"}, claims())
    assert refused(token).code is ErrorCode.AUTH_INVALID
    assert refused(token, RSA_KEY.public_key()).code is ErrorCode.AUTH_INVALID


def test_a_secret_accepts_only_hs256() -> None:
    token = jwt.encode(claims(), SECRET * 2, algorithm="HS512")
    assert refused(token, SECRET * 2).code is ErrorCode.AUTH_INVALID
    assert algorithms_for(SECRET) == ("HS256",)


# --- public keys (RS256, ES256) and the HS/RS confusion -------------------------------------------------


def test_rs256_and_es256_tokens_verify_with_their_public_keys() -> None:
    rs = jwt.encode(claims(), RSA_KEY, algorithm="RS256")
    es = jwt.encode(claims(), EC_KEY, algorithm="ES256")
    assert verify_token(rs, RSA_KEY.public_key(), POLICY).sub == "tenant-a"
    assert verify_token(es, EC_KEY.public_key(), POLICY).sub == "tenant-a"
    assert refused(rs, EC_KEY.public_key()).code is ErrorCode.AUTH_INVALID  # an RSA token, an EC key
    assert refused(es, RSA_KEY.public_key()).code is ErrorCode.AUTH_INVALID


def test_hs256_signed_with_the_rsa_public_key_is_refused() -> None:
    """The classic confusion: the attacker knows the public key and uses its PEM as an HMAC secret."""
    token = handmade({"alg": "HS256", "typ": "JWT"}, claims(), secret=rsa_public_pem())
    assert refused(token, RSA_KEY.public_key()).code is ErrorCode.AUTH_INVALID
    assert refused(token, RSA_KEY.public_key()).message.startswith("token algorithm 'HS256' is not accepted")


async def test_public_key_file_builds_a_verifier(tmp_path: Path) -> None:
    pem = tmp_path / "key.pem"
    pem.write_bytes(rsa_public_pem())
    cfg = AuthConfig(jwt_public_key_file=str(pem), audience="speechgw", issuer="https://issuer.example")
    verifier = build_verifier(cfg)
    assert isinstance(verifier, StaticKeyVerifier) and verifier.algorithms == ("RS256",)
    assert (await verifier.verify(jwt.encode(claims(), RSA_KEY, algorithm="RS256"))).sub == "tenant-a"
    with pytest.raises(AuthError):
        await verifier.verify(handmade({"alg": "HS256"}, claims(), secret=rsa_public_pem()))


def test_a_key_file_that_is_not_a_public_key_is_a_config_error(tmp_path: Path) -> None:
    private = tmp_path / "private.pem"
    private.write_bytes(
        RSA_KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    for path in (private, tmp_path / "missing.pem"):
        with pytest.raises(ConfigError, match="AUTH_JWT_PUBLIC_KEY_FILE"):
            build_verifier(AuthConfig(jwt_public_key_file=str(path)))


# --- JWKS from a real HTTP server -----------------------------------------------------------------------


class JwksServer:
    """A loopback HTTP server answering GET /jwks.json with the keys it holds; counts its fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, kid: str, key: Any, kind: type[Any] = RSAAlgorithm, **extra: Any) -> None:
        jwk = json.loads(kind.to_jwk(key.public_key()))
        self.keys.append({**jwk, "kid": kid, "use": "sig", **extra})


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


async def test_jwks_keys_verify_rs256_and_es256_and_are_cached(jwks: JwksServer) -> None:
    jwks.add("rsa-1", RSA_KEY)
    jwks.add("ec-1", EC_KEY, ECAlgorithm)
    verifier = JwksVerifier(jwks.url, POLICY, cache_s=300, timeout_s=5)
    try:
        await verifier.warm()
        rs = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
        es = jwt.encode(claims(sub="tenant-b"), EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})
        assert (await verifier.verify(rs)).sub == "tenant-a"
        assert (await verifier.verify(es)).sub == "tenant-b"
        assert (await verifier.verify(rs)).sub == "tenant-a"
        assert jwks.fetches == 1  # the set is cached
    finally:
        await verifier.close()


async def test_jwks_refuses_unknown_kids_confusion_and_none(jwks: JwksServer) -> None:
    jwks.add("rsa-1", RSA_KEY)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verifier = JwksVerifier(jwks.url, POLICY, cache_s=300, timeout_s=5)
    try:
        cases = {
            "unknown kid": jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "rsa-2"}),
            "wrong key for the kid": jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "rsa-1"}),
            "no kid": jwt.encode(claims(), RSA_KEY, algorithm="RS256"),
            "HS256 with the public key": handmade({"alg": "HS256", "kid": "rsa-1"}, claims(), rsa_public_pem()),
            "ES256 header on an RSA key": handmade({"alg": "ES256", "kid": "rsa-1"}, claims(), b"x"),
            "alg none": handmade({"alg": "none", "kid": "rsa-1"}, claims()),
        }
        for name, token in cases.items():
            with pytest.raises(AuthError) as err:
                await verifier.verify(token)
            assert err.value.code is ErrorCode.AUTH_INVALID, name
        expired = jwt.encode(claims(exp=int(time.time()) - 60), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
        with pytest.raises(AuthError) as err:
            await verifier.verify(expired)
        assert err.value.code is ErrorCode.AUTH_EXPIRED
        # A second unknown kid within the cooldown does not hit the endpoint again.
        before = jwks.fetches
        with pytest.raises(AuthError):
            await verifier.verify(jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "rsa-3"}))
        assert jwks.fetches == before
    finally:
        await verifier.close()


async def test_jwks_that_cannot_be_reached_refuses_without_blocking() -> None:
    verifier = JwksVerifier("http://127.0.0.1:9/jwks.json", POLICY, cache_s=300, timeout_s=1)
    try:
        token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "k"})
        with pytest.raises(AuthError) as err:
            await verifier.verify(token)
        assert err.value.code is ErrorCode.AUTH_INVALID
    finally:
        await verifier.close()


# --- where the token travels, and the claims' limits ----------------------------------------------------


def test_token_from_the_handshake() -> None:
    assert token_from_handshake("Bearer abc.def.ghi", []) == "abc.def.ghi"
    assert token_from_handshake("bearer   abc ", []) == "abc"
    assert token_from_handshake("Basic dXNlcjpwYXNz", []) is None
    assert token_from_handshake(None, ["speechgw.v1, bearer.abc.def.ghi"]) == "abc.def.ghi"
    assert token_from_handshake(None, ["speechgw.v1", "bearer.x.y.z"]) == "x.y.z"
    assert token_from_handshake(None, ["speechgw.v1", "bearer."]) is None
    assert token_from_handshake("Bearer from-header", ["bearer.from-protocol"]) == "from-header"
    assert token_from_handshake(None, []) is None


def test_limits_in_the_claims() -> None:
    p = Principal("t", time.time() + 60, max_sessions=2, returns=frozenset({"asr", "metrics"}))
    check_returns(p, ["asr"])
    with pytest.raises(AuthError) as err:
        check_returns(p, ["asr", "record_url"])
    assert err.value.code is ErrorCode.AUTH_FORBIDDEN
    assert may_read_transcripts(p)
    assert not may_read_transcripts(Principal("t", 0, returns=frozenset({"record_url"})))
    unlimited = Principal("t", time.time() + 60)
    check_returns(unlimited, ["asr", "record_url", "vad"])


def test_a_token_that_expired_after_the_handshake_is_refused_at_start() -> None:
    p = Principal("t", expires_at=1000.0)
    check_fresh(p, 1020.0, leeway_s=30)
    with pytest.raises(AuthError) as err:
        check_fresh(p, 1031.0, leeway_s=30)
    assert err.value.code is ErrorCode.AUTH_EXPIRED


# --- configuration --------------------------------------------------------------------------------------


def test_auth_off_is_only_implicit_on_loopback() -> None:
    assert not load_env(GatewayConfig, {}).auth.enabled  # 127.0.0.1, nothing configured: off
    for host in ("0.0.0.0", "::", "10.0.0.5", "gateway.example"):
        plain = {"GATEWAY_HOST": host, "TLS_MODE": "off"}  # TLS has its own rule (test_tls.py)
        with pytest.raises(ConfigError, match="AUTH_MODE"):
            load_env(GatewayConfig, plain)
        explicit = load_env(GatewayConfig, {**plain, "AUTH_MODE": "off"})
        assert not explicit.auth.enabled
        on = load_env(GatewayConfig, {**plain, "AUTH_JWT_SECRET": SECRET})
        assert on.auth.enabled
    assert load_env(GatewayConfig, {"GATEWAY_HOST": "::1"}).auth.mode == ""


@pytest.mark.parametrize(
    "env",
    [
        {"AUTH_MODE": "jwt"},  # no key
        {"AUTH_MODE": "maybe"},
        {"AUTH_JWT_SECRET": "short"},
        {"AUTH_JWT_SECRET": SECRET, "AUTH_JWKS_URL": "https://idp.example/jwks"},
        {"AUTH_JWKS_URL": "file:///etc/passwd"},
        {"AUTH_JWT_SECRET": SECRET, "AUTH_JWT_LEEWAY_SEC": "-1"},
    ],
    ids=repr,
)
def test_bad_auth_settings_are_config_errors(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_env(GatewayConfig, env)


async def test_build_verifier_follows_the_mode() -> None:
    assert build_verifier(AuthConfig()) is None
    assert build_verifier(AuthConfig(mode="off", jwt_secret=SECRET)) is None
    verifier = build_verifier(AuthConfig(jwt_secret=SECRET, audience="speechgw", issuer="https://issuer.example"))
    assert isinstance(verifier, StaticKeyVerifier)
    assert (await verifier.verify(hs())).sub == "tenant-a"
