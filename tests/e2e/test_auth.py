"""The findings of issue 10 about tokens and ownership, against the whole stack (JWT on with the
development keys, as `make run`): no token no audio, tenants never share a recording, a live flowId is
not taken over, record URLs are signed and expire."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from websockets.asyncio.client import connect

from devtools.client import stream_pcm
from devtools.stack import Stack
from services.compress.signing import UrlSigner
from speechgw_client import StreamResult, connect_kwargs
from tests.e2e.conftest import records_of
from tests.records import decoded_s, fetch

pytestmark = pytest.mark.e2e


def stream(stack: Stack, pcm: bytes, flow: str, tok: str | None, via: str = "header") -> StreamResult:
    return asyncio.run(
        stream_pcm(stack.url, pcm, speed=0, start={"flowId": flow, "return": ["record_url"]}, token=tok, token_via=via)
    )


def test_the_suite_runs_with_authentication_on(stack: Stack) -> None:
    assert stack.env["AUTH_MODE"] == "jwt" and stack.token() is not None


def test_a_stream_without_token_is_refused_and_nothing_is_archived(stack: Stack, counting_pcm: bytes) -> None:
    result = stream(stack, counting_pcm[:32000], "e2e-no-token", tok="")
    assert [(e["type"], e.get("code")) for e in result.events] == [("error", "auth_required")]
    assert result.close_code == 1008
    assert not [p for p in records_of(stack).rglob("*e2e-no-token*")]


@pytest.mark.parametrize("via", ["header", "subprotocol", "start"])
def test_a_token_streams_whichever_way_it_comes(stack: Stack, counting_pcm: bytes, via: str) -> None:
    result = stream(stack, counting_pcm[:32000], f"e2e-via-{via}", stack.token("tenant-via"), via)
    assert result.ok and result.of_type("record_url")


def test_two_tenants_with_one_flow_id_get_their_own_recordings(stack: Stack, counting_pcm: bytes) -> None:
    long_pcm, short_pcm = counting_pcm, counting_pcm[:32000]
    a = stream(stack, long_pcm, "e2e-shared", stack.token("tenant-a"))
    b = stream(stack, short_pcm, "e2e-shared", stack.token("tenant-b"))
    url_a, url_b = a.of_type("record_url")[0]["url"], b.of_type("record_url")[0]["url"]
    assert urlsplit(url_a).path != urlsplit(url_b).path
    status_a, data_a = fetch(url_a)
    status_b, data_b = fetch(url_b)
    assert (status_a, status_b) == (200, 200)
    assert decoded_s(data_a) == pytest.approx(len(long_pcm) / 32000, abs=0.05)  # A's audio, not B's
    assert decoded_s(data_b) == pytest.approx(len(short_pcm) / 32000, abs=0.05)
    again = stream(stack, long_pcm, "e2e-shared", stack.token("tenant-a"))  # A's retry: the same object
    assert urlsplit(again.of_type("record_url")[0]["url"]).path == urlsplit(url_a).path
    assert len([p for p in records_of(stack).rglob("e2e-shared.*")]) == 2


def test_a_second_session_on_a_live_flow_id_is_refused(stack: Stack, counting_pcm: bytes) -> None:
    tok = stack.token("tenant-live")

    async def go() -> tuple[StreamResult, list[dict[str, Any]], int | None]:
        async with connect(stack.url, **connect_kwargs(tok)) as first:
            await first.send('{"type":"start","flowId":"e2e-live","return":["record_url"]}')
            await first.recv()
            await first.send(counting_pcm[:64000])
            intruder = await stream_pcm(
                stack.url, counting_pcm[:16000], speed=0, start={"flowId": "e2e-live"}, token=tok
            )
            await first.send(counting_pcm[64000:])
            await first.send('{"type":"flush"}')
            events = [json.loads(m) async for m in first]
            return intruder, events, first.close_code

    intruder, events, code = asyncio.run(go())
    assert [e.get("code") for e in intruder.events] == ["flow_in_use"] and intruder.close_code == 1008
    assert code == 1000 and [e["type"] for e in events] == ["record_url", "end"]
    status, data = fetch(events[0]["url"])
    # The first session's recording holds all of its audio, none of the intruder's.
    assert status == 200 and decoded_s(data) == pytest.approx(len(counting_pcm) / 32000, abs=0.05)
    assert len([p for p in records_of(stack).rglob("e2e-live.*")]) == 1


def test_record_urls_refuse_tampering_and_expiry(stack: Stack, counting_pcm: bytes) -> None:
    result = stream(stack, counting_pcm[:32000], "e2e-signed", stack.token("tenant-url"))
    url = urlsplit(result.of_type("record_url")[0]["url"])
    base = f"{url.scheme}://{url.netloc}"
    q = dict(parse_qsl(url.query))
    assert fetch(url.geturl())[0] == 200
    assert fetch(f"{base}{url.path}")[0] == 403
    assert fetch(f"{base}{url.path}?exp={q['exp']}&sig={'A' * len(q['sig'])}")[0] == 403
    assert fetch(f"{base}{url.path}?exp={int(q['exp']) + 1}&sig={q['sig']}")[0] == 403
    expired = UrlSigner(stack.env["RECORD_URL_KEY"].encode(), 60, lambda: time.time() - 3600)
    status, body = fetch(f"{base}{url.path}?{expired.query(url.path)}")
    assert status == 403 and b"e2e-signed" not in body and b"records" not in body
