"""Slow and stuck clients against a real WebSocket server (issue 11, item 4): a raw client that stops
reading, a ping flood that never reads its pongs, zero-length binary frames.

The raw client speaks just enough RFC 6455 to do what a well-behaved library never would: write
frames and never read a byte back."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from devtools.launcher import launch
from orchestrator import metrics
from orchestrator.config import GatewayConfig, ListenConfig
from orchestrator.core.events import StageName, Transcript
from orchestrator.core.protocol import ErrorCode
from orchestrator.core.session import SessionConfig
from orchestrator.driver import SessionDriver
from orchestrator.gateway import Gateway
from orchestrator.stages.base import StageContext
from tests.fakes import SECOND, FakeStage
from tests.poll import seconds, until

pytestmark = pytest.mark.integration
WORDS = "word " * 6000  # a 30 KB final: the client's buffers fill within seconds of audio


class ChattyAsr(FakeStage):
    """Answers a long final for every block: plenty for a client to read, or not."""

    def __init__(self) -> None:
        super().__init__(StageName.ASR)

    async def answer(self, ctx: StageContext) -> None:
        t = self.audio_bytes / 32000
        ctx.report(Transcript(True, WORDS, max(0.0, t - 0.1), t, "en"))


class RawClient:
    """A WebSocket client on a bare socket: it writes frames and reads only when told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, rcvbuf: int = 4096) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # a small window: stalls come soon
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def frame(self, opcode: Any, payload: bytes) -> None:
        self.writer.write(Frame(opcode, payload).serialize(mask=True))

    async def send(self, opcode: Any, payload: bytes, timeout_s: float = 5.0) -> bool:
        """Write one frame; False if the peer did not take it within `timeout_s` (it stopped reading)."""
        self.frame(opcode, payload)
        try:
            await asyncio.wait_for(self.writer.drain(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def read_to_end(self, timeout_s: float) -> tuple[bytes, bool]:
        """What the server sent, and whether it closed the connection (reset or EOF) within `timeout_s`."""
        data = b""
        try:
            async with asyncio.timeout(timeout_s):
                while chunk := await self.reader.read(65536):
                    data += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        except TimeoutError:
            return data, False
        return data, True

    def close(self) -> None:
        self.writer.transport.abort()


@pytest.fixture
async def chatty_gateway() -> AsyncIterator[tuple[Gateway, FakeStage]]:
    archive = FakeStage(StageName.COMPRESS)
    config = GatewayConfig(
        listen=ListenConfig(port=0, tick_s=0.05),
        session=SessionConfig(send_timeout_s=1.0, flush_idle_s=1.0),
    )
    gw = Gateway(config, stages=[ChattyAsr(), archive])
    await gw.start()
    yield gw, archive
    await gw.stop()


def outcome(code: str) -> float:
    sample = metrics.REGISTRY.get_sample_value
    return sample("orchestrator_session_outcomes_total", {"reason": "error", "code": code}) or 0.0


async def test_a_client_that_stops_reading_is_cut_after_its_audio_is_archived(
    chatty_gateway: tuple[Gateway, FakeStage],
) -> None:
    gw, archive = chatty_gateway
    before = outcome("send_timeout")
    client = await RawClient.open(gw.port)
    start = {"type": "start", "flowId": "stuck", "return": ["asr", "record_url"]}
    await client.send(Opcode.TEXT, json.dumps(start).encode())
    await until(lambda: bool(gw.drivers), 5, "the session")
    driver: SessionDriver = next(iter(gw.drivers))
    sent = 0
    for _ in range(120):  # two minutes of audio as fast as the gateway takes it; it soon stops taking it
        if not await client.send(Opcode.BINARY, SECOND, timeout_s=seconds(0.5)):
            break
        sent += 1
    stalled_at = time.monotonic()
    await asyncio.wait_for(driver.closed.wait(), seconds(10))
    cut_after = time.monotonic() - stalled_at
    session = driver.session
    assert session.fatal_code is ErrorCode.SEND_TIMEOUT and session.output_abandoned
    assert session.end_reason == "error"
    # Every second the gateway accepted went through the stages before the end.
    assert session.audio_s > 0 and archive.audio_bytes == round(session.audio_s * 32000)
    assert cut_after < seconds(5)
    assert outcome("send_timeout") == before + 1
    # The client, reading at last, finds the connection cut (no close frame after the stall).
    data, closed = await client.read_to_end(seconds(5))
    assert closed and b"send_timeout" not in data
    client.close()
    print(f"\naccepted {session.audio_s:.0f} s of {sent} s sent; cut {cut_after:.2f} s after the client stalled")


async def test_zero_length_frames_do_not_hold_off_the_idle_flush(
    chatty_gateway: tuple[Gateway, FakeStage],
) -> None:
    gw, _ = chatty_gateway
    start = {"type": "start", "flowId": "empty", "return": ["record_url"]}
    async with connect(f"ws://127.0.0.1:{gw.port}/ws/stream") as ws:
        await ws.send(json.dumps(start))
        await ws.send(SECOND[:3200])
        opened = time.monotonic()
        events: list[dict[str, Any]] = []

        async def empties() -> None:
            while True:
                await ws.send(b"")
                await asyncio.sleep(0.05)

        sender = asyncio.create_task(empties())
        try:
            async with asyncio.timeout(seconds(10)):
                async for message in ws:
                    events.append(json.loads(message))
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
    assert events[-1]["type"] == "end" and events[-1]["reason"] == "idle"
    assert events[-1]["audio_s"] == 0.1 and not [e for e in events if e["type"] == "error"]
    assert time.monotonic() - opened < seconds(5)  # FLUSH_IDLE_SEC is 1 s


async def test_a_ping_flood_that_never_reads_cannot_grow_the_gateway() -> None:
    """300k pings with 100-byte payloads, none of whose pongs is read: the gateway (its own process,
    on uvloop as deployed) stops reading the client once its unsent pongs pass the write limit, so its
    memory stays flat; before, it buffered every pong (+28-36 MB). The client is cut SEND_TIMEOUT_S on."""
    env = {"GATEWAY_PORT": "0", "AUTH_MODE": "off", "LOG_LEVEL": "WARNING", "SEND_TIMEOUT_S": "2"}
    gw = launch("gateway", [sys.executable, "-m", "orchestrator"], env=env)
    try:
        proc = psutil.Process(gw.proc.pid)
        client = await RawClient.open(gw.http_port)
        await client.send(Opcode.TEXT, json.dumps({"type": "start", "flowId": "pings"}).encode())
        rss_before = peak = proc.memory_info().rss

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, proc.memory_info().rss)
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        payload = b"p" * 100
        written = 0
        flood_started = time.monotonic()
        try:
            while written < 300_000:
                for _ in range(1000):
                    client.frame(Opcode.PING, payload)
                written += 1000
                await asyncio.wait_for(client.writer.drain(), seconds(3))
            how = "all written"
        except TimeoutError:
            how = "the gateway stopped reading"
        except (ConnectionResetError, BrokenPipeError):
            how = "the gateway cut the connection"
        flood_s = time.monotonic() - flood_started
        # Cut by the gateway SEND_TIMEOUT_S after it stopped taking pongs.
        _, closed = await client.read_to_end(seconds(10))
        client.close()
        sampler.cancel()
        grown_mb = (peak - rss_before) / 2**20
        print(
            f"\nping flood: {written} pings written in {flood_s:.1f} s ({how}); "
            f"gateway RSS {rss_before / 2**20:.1f} MB, peak {peak / 2**20:.1f} MB ({grown_mb:+.1f} MB)"
        )
        assert grown_mb < 8 and closed
        assert gw.proc.poll() is None
    finally:
        assert gw.stop() == 0
