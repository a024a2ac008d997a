"""The gateway's edge checks over real sockets (docs/security.md): tokens before any audio, ownership of
flowIds and transcripts, methods and paths of the HTTP side. An in-process gateway on 127.0.0.1:0 with
no stages (a session ends at once after `flush`) or, for transcripts, with a job store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from common.envconf import load_env
from devtools.devauth import mint
from orchestrator.config import GatewayConfig
from orchestrator.gateway import Gateway
from speechgw_client import connect_kwargs
from tests.poll import seconds

pytestmark = pytest.mark.integration

SECRET = "gateway-auth-test-secret-0123456789abcdef"
AUD, ISS = "speechgw", "test-issuer"
AUDIO = b"\x01\x00" * 3200


def token(sub: str = "tenant-a", ttl_s: float = 300, secret: str = SECRET, **limits: Any) -> str:
    return mint(secret, sub, ttl_s, audience=AUD, issuer=ISS, **limits)


def start(flow: str = "f1", **over: Any) -> str:
    return json.dumps({"type": "start", "flowId": flow, "return": ["metrics"], **over})


async def running_gateway(tmp_path: Path, **env: str) -> Gateway:
    base = {
        "GATEWAY_PORT": "0",
        "AUTH_JWT_SECRET": SECRET,
        "AUTH_JWT_AUDIENCE": AUD,
        "AUTH_JWT_ISSUER": ISS,
        "ENABLE_VAD": "false",
        "JOBS_DB": str(tmp_path / "jobs.sqlite"),
    }
    gw = Gateway(load_env(GatewayConfig, {**base, **env}))
    await gw.start()
    return gw


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = await running_gateway(tmp_path)
    try:
        yield gw
    finally:
        await gw.stop()


def ws_url(gw: Gateway) -> str:
    return f"ws://127.0.0.1:{gw.port}/ws/stream"


async def read_all(ws: ClientConnection) -> list[dict[str, Any]]:
    events = []
    try:
        async for raw in ws:
            events.append(json.loads(raw))
    except ConnectionClosed:
        pass
    return events


async def session(
    gw: Gateway, messages: list[str | bytes], tok: str | None = None, via: str = "header", **kw: Any
) -> tuple[list[dict[str, Any]], int | None]:
    async with connect(ws_url(gw), **connect_kwargs(tok, via), **kw) as ws:
        try:
            for m in messages:
                await ws.send(m)
        except ConnectionClosed:
            pass
        events = await asyncio.wait_for(read_all(ws), seconds(10))
        return events, ws.close_code


FLUSH = json.dumps({"type": "flush"})


# --- tokens before any audio ----------------------------------------------------------------------------


async def test_no_token_is_auth_required_then_1008_and_no_audio_is_accepted(gateway: Gateway) -> None:
    events, code = await session(gateway, [start(), AUDIO, AUDIO, FLUSH])
    assert [(e["type"], e.get("code")) for e in events] == [("error", "auth_required")] and code == 1008
    assert events[0]["flowId"] == "f1" and events[0]["fatal"] is True


async def test_a_garbage_token_is_refused_at_the_handshake(gateway: Gateway) -> None:
    events, code = await session(gateway, [start(), AUDIO, FLUSH], "garbage")
    assert events[0]["flowId"] is None  # refused before `start` was even read
    assert [e.get("code") for e in events] == ["auth_invalid"] and code == 1008
    # From a browser on an origin nobody allowed, it does not even get the upgrade.
    with pytest.raises(InvalidStatus) as err:
        evil = {"Authorization": "Bearer garbage", "Origin": "https://evil.example"}
        await session(gateway, [start()], additional_headers=evil)
    assert err.value.response.status_code == 403


async def test_a_garbage_token_in_start_is_auth_invalid(gateway: Gateway) -> None:
    events, code = await session(gateway, [start(auth={"token": "garbage"}), AUDIO, FLUSH])
    assert [e.get("code") for e in events] == ["auth_invalid"] and code == 1008


@pytest.mark.parametrize(
    ("tok", "code"),
    [
        (token(ttl_s=-120), "auth_expired"),
        (token(secret=SECRET + "x"), "auth_invalid"),
        # Minted at collection: a day's TTL, so a long suite reaching them late still tests aud/iss, not exp.
        (mint(SECRET, "tenant-a", 86_400, audience="someone-else", issuer=ISS), "auth_invalid"),
        (mint(SECRET, "tenant-a", 86_400, audience=AUD, issuer="evil"), "auth_invalid"),
    ],
    ids=["expired", "bad-signature", "wrong-aud", "wrong-iss"],
)
@pytest.mark.parametrize("via", ["header", "subprotocol", "start"])
async def test_a_bad_token_is_refused_whichever_way_it_comes(gateway: Gateway, tok: str, code: str, via: str) -> None:
    msg = start(auth={"token": tok}) if via == "start" else start()
    events, close = await session(gateway, [msg, AUDIO, FLUSH], tok, via)
    assert [e.get("code") for e in events] == [code] and close == 1008


@pytest.mark.parametrize("via", ["header", "subprotocol", "start"])
async def test_a_valid_token_streams_whichever_way_it_comes(gateway: Gateway, via: str) -> None:
    async with connect(ws_url(gateway), **connect_kwargs(token(), via)) as ws:
        assert ws.subprotocol == ("speechgw.v1" if via == "subprotocol" else None)
        msg = start()
        if via == "start":
            msg = start(auth={"token": token()})
        await ws.send(msg)
        await ws.send(AUDIO)
        await ws.send(FLUSH)
        events = await asyncio.wait_for(read_all(ws), seconds(10))
    assert [e["type"] for e in events] == ["ack", "metrics", "end"] and ws.close_code == 1000
    assert events[-1]["audio_s"] == pytest.approx(len(AUDIO) / 32000)


async def test_the_token_is_never_echoed_as_the_subprotocol(gateway: Gateway) -> None:
    async with connect(ws_url(gateway), subprotocols=["bearer." + token()]) as ws:  # no speechgw.v1 offered
        assert ws.subprotocol is None
        await ws.send(start())
        assert json.loads(await ws.recv())["type"] == "ack"


async def test_the_start_token_must_name_the_handshake_tokens_tenant(gateway: Gateway) -> None:
    events, code = await session(gateway, [start(auth={"token": token("tenant-b")})], token("tenant-a"))
    assert [e.get("code") for e in events] == ["auth_invalid"] and code == 1008


# --- the claims' limits ---------------------------------------------------------------------------------


async def test_a_token_limited_to_some_families_is_forbidden_the_others(gateway: Gateway) -> None:
    limited = token(**{"return": ["metrics"]})
    events, code = await session(gateway, [start(**{"return": ["metrics", "record_url"]})], limited)
    assert [e.get("code") for e in events] == ["auth_forbidden"] and code == 1008
    events, code = await session(gateway, [start(), FLUSH], limited)
    assert events[0]["type"] == "ack" and code == 1000


async def test_max_sessions_of_a_token_is_enforced_per_tenant(gateway: Gateway) -> None:
    one = token(max_sessions=1)
    async with connect(ws_url(gateway), **connect_kwargs(one)) as first:
        await first.send(start("first"))
        assert json.loads(await first.recv())["type"] == "ack"
        events, code = await session(gateway, [start("second")], one)
        assert [e.get("code") for e in events] == ["tenant_session_limit"] and code == 1008
        events, code = await session(gateway, [start("other-tenant"), FLUSH], token("tenant-b", max_sessions=1))
        assert events[0]["type"] == "ack"
        await first.send(FLUSH)
        await read_all(first)
    events, code = await session(gateway, [start("third"), FLUSH], one)  # the slot is free again
    assert events[0]["type"] == "ack" and code == 1000


# --- ownership of flowIds -------------------------------------------------------------------------------


async def test_a_live_flow_id_is_refused_to_a_second_session_of_its_tenant(gateway: Gateway) -> None:
    async with connect(ws_url(gateway), **connect_kwargs(token())) as first:
        await first.send(start("shared"))
        assert json.loads(await first.recv())["type"] == "ack"
        events, code = await session(gateway, [start("shared"), AUDIO, FLUSH], token())
        assert [e.get("code") for e in events] == ["flow_in_use"] and code == 1008
        # Another tenant's flow of the same id is another flow.
        events, code = await session(gateway, [start("shared"), AUDIO, FLUSH], token("tenant-b"))
        assert events[0]["type"] == "ack" and code == 1000
        await first.send(AUDIO)
        await first.send(FLUSH)
        rest = await read_all(first)
    assert rest[-1]["type"] == "end" and rest[-1]["audio_s"] == pytest.approx(len(AUDIO) / 32000)
    events, code = await session(gateway, [start("shared"), FLUSH], token())  # the tenant's retry, later
    assert events[0]["type"] == "ack" and code == 1000


async def test_with_auth_off_flow_in_use_still_holds(tmp_path: Path) -> None:
    gw = await running_gateway(tmp_path, AUTH_MODE="off")
    try:
        async with connect(ws_url(gw)) as first:
            await first.send(start("shared"))
            assert json.loads(await first.recv())["type"] == "ack"
            events, code = await session(gw, [start("shared")], "ignored-when-off")
            assert [e.get("code") for e in events] == ["flow_in_use"] and code == 1008
    finally:
        await gw.stop()


# --- the HTTP side: transcripts, methods, paths ---------------------------------------------------------


async def http(
    gw: Gateway, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 request, byte for byte (no client-side normalisation of the path)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{gw.port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), seconds(10))
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    hdrs = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), hdrs, body


@pytest.fixture
async def transcripts(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway with a job store (ASR configured, nothing listening there), one job per tenant."""
    gw = await running_gateway(tmp_path, ASR_ADDR="127.0.0.1:1", JOBS_MAX_ATTEMPTS="1")
    assert gw._job_store is not None and gw.jobs is not None
    await gw.jobs.stop()  # keep the jobs pending: this is about who may read them
    await gw._job_store.enqueue("call-1", "http://h/a.flac", "en", "d", tenant="tenant-a")
    await gw._job_store.enqueue("call-1", "http://h/b.flac", "en", "d", tenant="tenant-b")
    try:
        yield gw
    finally:
        await gw.stop()


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def test_the_transcript_is_served_to_its_owner_only(transcripts: Gateway) -> None:
    path = "/v1/flows/call-1/transcript"
    status, _, body = await http(transcripts, path, headers=bearer(token("tenant-a")))
    assert status == 200 and json.loads(body)["flowId"] == "call-1"
    status, _, body = await http(transcripts, path, headers=bearer(token("tenant-c")))
    assert status == 404  # another tenant cannot even learn that the flow exists
    status, headers, body = await http(transcripts, path)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer") and b"auth_required" in body
    for bad in (token(ttl_s=-120), "garbage", token(secret=SECRET + "x")):
        status, headers, _ = await http(transcripts, path, headers=bearer(bad))
        assert status == 401 and "www-authenticate" in headers
    status, _, body = await http(transcripts, path, headers=bearer(token(**{"return": ["record_url"]})))
    assert status == 403 and b"auth_forbidden" in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_other_methods_answer_405(transcripts: Gateway, method: str) -> None:
    for path in ("/v1/flows/call-1/transcript", "/healthz", "/ws/stream"):
        status, headers, _ = await http(transcripts, path, method, bearer(token()))
        assert status == 405 and headers["allow"] == "GET", path


TRAVERSALS = [
    "/v1/flows/%2e%2e/transcript",
    "/v1/flows/..%2f..%2fcall-1/transcript",
    "/v1/flows/%252e%252e%252fcall-1/transcript",
    "/v1/flows/..%5ccall-1/transcript",
    "/v1/flows/..\\call-1/transcript",
    "/v1/flows/../flows/call-1/transcript",
    "/v1/flows//etc/passwd/transcript",
    "/v1/flows/%2fetc%2fpasswd/transcript",
    "/v1/flows/call-1%00/transcript",
    "/v1/flows/............/transcript",
]


@pytest.mark.parametrize("path", TRAVERSALS)
async def test_transcript_paths_never_reach_another_flow(transcripts: Gateway, path: str) -> None:
    status, _, body = await http(transcripts, path, headers=bearer(token("tenant-a")))
    assert status in (400, 404), (path, status, body)


# --- starting without authentication --------------------------------------------------------------------


def run_gateway(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator"],
        env={**os.environ, "GATEWAY_PORT": "0", "ENABLE_VAD": "false", **env},
        capture_output=True,
        text=True,
        timeout=seconds(60),
        check=False,
    )


def test_a_gateway_off_loopback_without_auth_refuses_to_start() -> None:
    proc = run_gateway(GATEWAY_HOST="0.0.0.0")
    assert proc.returncode == 2, proc.stderr
    errors = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert [e["err_code"] for e in errors if e["level"] == "error"] == ["config_invalid"]
    assert "AUTH_MODE=off" in errors[-1]["msg"] and "0.0.0.0" in errors[-1]["msg"]


async def test_an_explicit_auth_off_starts_anywhere_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="orchestrator.gateway"):
        gw = await running_gateway(tmp_path, GATEWAY_HOST="0.0.0.0", AUTH_MODE="off", TLS_MODE="off")
        await gw.stop()
    off = [r for r in caplog.records if getattr(r, "event", "") == "auth_off"]
    assert [r.levelname for r in off] == ["WARNING"] and "non-loopback" in off[0].getMessage()
