"""The fault proxy (tests/faultproxy.py) on loopback sockets, against an echo server: it relays bytes
intact, and each fault does to a client what it claims to."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from tests.faultproxy import FaultProxy, fault_proxy
from tests.poll import seconds

pytestmark = pytest.mark.integration


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    relay = FaultProxy("127.0.0.1", server.sockets[0].getsockname()[1], seed=1)
    await relay.start()
    yield relay
    await relay.close()
    server.close()
    await server.wait_closed()


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def roundtrip(proxy: FaultProxy, payload: bytes) -> bytes:
    reader, writer = await connect(proxy)
    writer.write(payload)
    writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(-1), seconds(10))
    finally:
        writer.close()


async def test_relays_every_byte_in_order_under_latency_jitter_and_stalls(proxy: FaultProxy) -> None:
    payload = os.urandom(3_000_000)
    proxy.set(latency_ms=2, jitter_ms=2, stall_rate=0.05, stall_ms=20)
    assert await roundtrip(proxy, payload) == payload
    assert proxy.upstream_bytes == proxy.downstream_bytes == len(payload)
    assert proxy.plan.stalls > 0  # the faults were applied, not skipped


async def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    proxy.set(latency_ms=150)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await roundtrip(proxy, b"ping") == b"ping"
    assert loop.time() - started >= 0.3  # 150 ms up and 150 ms down


async def test_reset_cuts_open_connections_with_an_rst(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    writer.write(b"hello")
    assert await asyncio.wait_for(reader.readexactly(5), seconds(5)) == b"hello"
    assert proxy.reset() == 1
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), seconds(5))  # an RST, not a clean EOF
    writer.close()


async def test_refuse_resets_new_connections(proxy: FaultProxy) -> None:
    proxy.set(refuse=True)
    reader, writer = await connect(proxy)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), seconds(5))
    writer.close()
    assert proxy.refused == 1
    proxy.set(refuse=False)
    assert await roundtrip(proxy, b"back") == b"back"


async def test_blackhole_accepts_and_never_answers_until_lifted(proxy: FaultProxy) -> None:
    proxy.set(blackhole=True)
    reader, writer = await connect(proxy)  # the connect succeeds: the host is there
    writer.write(b"anyone?")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.5)
    assert proxy.upstream_bytes == 0
    proxy.set(blackhole=False)  # the hang ends: what was sent meanwhile is delivered
    assert await asyncio.wait_for(reader.readexactly(7), seconds(5)) == b"anyone?"
    writer.close()


async def test_half_open_stops_one_direction_without_closing(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    proxy.set(pause_down=True)
    writer.write(b"one")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.5)
    assert proxy.upstream_bytes == 3 and proxy.downstream_bytes == 0  # up still flows, down is held
    assert proxy.open_connections == 1 and not reader.at_eof()
    proxy.set(pause_down=False)
    assert await asyncio.wait_for(reader.readexactly(3), seconds(5)) == b"one"
    proxy.set(pause_up=True)
    writer.write(b"two")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.5)  # held before the echo server: nothing comes back
    proxy.set(pause_up=False)
    assert await asyncio.wait_for(reader.readexactly(3), seconds(5)) == b"two"
    writer.close()


def test_threaded_proxy_is_driven_from_synchronous_code() -> None:
    async def echo_once(port: int, payload: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(-1), seconds(5))
        writer.close()
        return data

    async def scenario() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        target = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        with fault_proxy(target) as threaded:
            port = int(threaded.addr.rsplit(":", 1)[1])
            assert await echo_once(port, b"abc") == b"abc"
            threaded.set(refuse=True)
            with pytest.raises(ConnectionResetError):
                await echo_once(port, b"abc")
            assert threaded.proxy.refused == 1
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
