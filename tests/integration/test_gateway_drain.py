"""The gateway's drain on SIGTERM (issue 11, item 5) on a real WebSocket server in this process, with a
fake archive: not ready at once, new sessions refused with `server_draining` (1013), live sessions
finish within DRAIN_GRACE_SEC, the rest end with `reason: "shutdown"` (their `record_url` first), close
1001. The same against the real stack with 50 live sessions: tests/chaos/test_drain.py."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from orchestrator.config import AsrLinkConfig, GatewayConfig, ListenConfig
from orchestrator.core.events import RecordReady, StageName
from orchestrator.core.session import SessionConfig
from orchestrator.gateway import Gateway
from orchestrator.stages.base import StageContext
from orchestrator.transcripts.store import JobsConfig
from tests.fakes import NOT_SERVING, SECOND, FakeAsrServer, FakeStage
from tests.poll import seconds, until

pytestmark = pytest.mark.integration
FRAME = SECOND[:640]


class FakeArchive(FakeStage):
    """Takes each session's audio and answers a record_url with the duration it took, at its end."""

    def __init__(self) -> None:
        super().__init__(StageName.COMPRESS)
        self.taken: dict[str, int] = {}

    async def run(self, ctx: StageContext) -> None:
        taken = 0
        async for block in ctx.feed.blocks():
            taken += len(block.pcm)
        self.taken[ctx.flow_id] = taken
        ctx.report(RecordReady(f"http://h/{ctx.flow_id}.ogg", taken / 32000, 1, "ogg/opus", "stored"))


def http_status(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=seconds(5)) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def live_session(port: int, flow: str, audio_s: float) -> tuple[list[dict[str, Any]], int | None]:
    """A client streaming 20 ms frames in real time for `audio_s`, then flush; its events and close code."""
    events: list[dict[str, Any]] = []
    async with connect(f"ws://127.0.0.1:{port}/ws/stream") as ws:

        async def read() -> None:
            try:
                async for message in ws:
                    events.append(json.loads(message))
            except ConnectionClosed:
                pass

        reader = asyncio.create_task(read())
        try:
            await ws.send(json.dumps({"type": "start", "flowId": flow, "return": ["record_url"]}))
            for _ in range(int(audio_s * 50)):
                await ws.send(FRAME)
                await asyncio.sleep(0.02)
            await ws.send('{"type":"flush"}')
        except ConnectionClosed:
            pass
        await reader
        return events, ws.close_code


async def test_drain_lets_short_sessions_finish_and_ends_the_rest_with_shutdown() -> None:
    archive = FakeArchive()
    config = GatewayConfig(
        listen=ListenConfig(port=0, tick_s=0.05, drain_grace_s=2.5),
        session=SessionConfig(flush_idle_s=5.0),
    )
    gw = Gateway(config, stages=[archive])
    await gw.start()
    base = f"http://127.0.0.1:{gw.port}"
    try:
        assert (await asyncio.to_thread(http_status, base + "/readyz"))[0] == 200
        short = asyncio.create_task(live_session(gw.port, "short", 1.0))
        long = [asyncio.create_task(live_session(gw.port, f"long-{i}", 30.0)) for i in range(3)]
        await until(lambda: len(gw.drivers) == 4 and all(d.session.acknowledged for d in gw.drivers), 5)
        early = await connect(f"ws://127.0.0.1:{gw.port}/ws/stream")  # connected before SIGTERM
        drain = asyncio.create_task(gw.drain())
        await until(lambda: gw.draining, 5)
        status, body = await asyncio.to_thread(http_status, base + "/readyz")
        assert status == 503 and body["draining"] is True
        assert (await asyncio.to_thread(http_status, base + "/healthz"))[0] == 200  # alive, only not ready
        # A new session is refused with a coded error while the live ones go on.
        late, code = await live_session(gw.port, "late", 0.1)
        assert [e["code"] for e in late if e["type"] == "error"] == ["server_draining"] and code == 1013
        await early.send(json.dumps({"type": "start", "flowId": "early"}))  # `start` after it
        refusal = json.loads(await asyncio.wait_for(early.recv(), seconds(5)))
        assert refusal["code"] == "server_draining" and refusal["fatal"] is True
        await asyncio.wait_for(early.wait_closed(), seconds(5))
        assert early.close_code == 1013
        events, code = await asyncio.wait_for(short, seconds(5))
        assert events[-1]["type"] == "end" and events[-1]["reason"] == "flush" and code == 1000
        for task in long:
            events, code = await asyncio.wait_for(task, seconds(5))
            kinds = [e["type"] for e in events]
            assert kinds[-2:] == ["record_url", "end"] and events[-1]["reason"] == "shutdown" and code == 1001
            # The archive took every second the gateway accepted.
            assert events[-2]["duration_s"] == events[-1]["audio_s"] >= 0.9
            assert archive.taken[events[-1]["flowId"]] == round(events[-1]["audio_s"] * 32000)
        await asyncio.wait_for(drain, seconds(5))
        assert not gw.drivers
    finally:
        await gw.stop()


async def test_readiness_is_only_what_stops_new_sessions() -> None:
    """A full gateway is not ready (every `start` would be refused); a stage down is not its business."""
    config = GatewayConfig(listen=ListenConfig(port=0, tick_s=0.05, max_sessions=1))
    gw = Gateway(config, stages=[FakeArchive()])
    await gw.start()
    base = f"http://127.0.0.1:{gw.port}"
    try:
        gw._stage_health["vad"] = False  # as the health watch finds a VAD down
        status, body = await asyncio.to_thread(http_status, base + "/readyz")
        assert status == 200 and body["stages"]["vad"] is False and body["full"] is False
        status, body = await asyncio.to_thread(http_status, base + "/healthz")
        assert status == 200 and body["status"] == "degraded"
        session = asyncio.create_task(live_session(gw.port, "only", 1.0))
        await until(lambda: gw.limits.live == 1, 5, "the session")
        status, body = await asyncio.to_thread(http_status, base + "/readyz")
        assert status == 503 and body["full"] is True and body["draining"] is False
        await asyncio.wait_for(session, seconds(5))
        await until(lambda: gw.limits.live == 0, 5, "the session gone")
        assert (await asyncio.to_thread(http_status, base + "/readyz"))[0] == 200
    finally:
        await gw.stop()


async def test_an_asr_pool_without_members_is_degraded_not_unready(tmp_path: Path) -> None:
    """The ASR member of the only pool stops answering SERVING: sessions go record-only, so the gateway
    stays ready, and `/healthz` says which pool lost its members."""
    async with FakeAsrServer() as asr:
        config = GatewayConfig(
            listen=ListenConfig(port=0, tick_s=0.05),
            asr=AsrLinkConfig(addr=asr.addr),
            jobs=JobsConfig(db_path=str(tmp_path / "jobs.sqlite")),
        )
        gw = Gateway(config)
        await gw.start()
        base = f"http://127.0.0.1:{gw.port}"

        async def healthz() -> dict[str, Any]:
            return (await asyncio.to_thread(http_status, base + "/healthz"))[1]

        try:
            await until(lambda: healthz_ok(gw), 10, "the member seen healthy")
            body = await healthz()
            assert body["status"] == "ok" and body["pools"] == {"default": {"members": 1, "healthy": 1}}
            await asr.health.set("", NOT_SERVING)
            await until(lambda: not healthz_ok(gw), 10, "the member seen down")
            body = await healthz()
            assert body["status"] == "degraded" and body["pools"]["default"]["healthy"] == 0
            assert body["stages"]["asr"] is False
            assert (await asyncio.to_thread(http_status, base + "/readyz"))[0] == 200
        finally:
            await gw.stop()


def healthz_ok(gw: Gateway) -> bool:
    return all(p["healthy"] for p in gw.pool_health().values())
