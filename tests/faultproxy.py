"""A TCP fault proxy for chaos tests: one listener on loopback, every connection relayed to one target,
with network faults switchable while it runs. A test fixture, not a product part.

Faults (`Faults`, replaced at run time with `FaultProxy.set(...)`; each chunk read looks at the
current value):

- `latency_ms`, `jitter_ms`: every chunk is delivered `latency ± jitter` (uniform) after it was read;
  order is kept (TCP), so a chunk never overtakes the one before it.
- `stall_rate`, `stall_ms`: that fraction of chunks is held `stall_ms` longer, with everything behind
  it: on TCP a lost segment is a retransmission stall, so 1 % loss is `stall_rate=0.01` with a stall
  of a retransmission timeout (200 ms and more).
- `pause_up`, `pause_down`: stop forwarding client->target (up) or target->client (down) without
  closing anything: a half-open connection. Nothing more is read on that side, so the sender's
  buffers fill as they would with a peer that no longer acknowledges.
- `blackhole`: new connections are accepted and never answered (no connection to the target, nothing
  read); connections open before stop forwarding both ways. A hung host, or a firewall dropping.
- `refuse`: new connections are cut at once with a TCP RST (a host whose process is gone).
- `reset()`: cut every open connection with an RST on both sides (SO_LINGER 0): a crash, a NAT that
  forgot the mapping; neither end gets a FIN.

The decisions (delays, which chunks stall) come from `FaultPlan`, a seeded random source and no I/O,
so a seed replays the same faults. `FaultProxy` runs on the caller's event loop; `ThreadedFaultProxy`
runs one on a loop of its own thread, for tests whose stack is driven from synchronous code.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

CHUNK = 65536


@dataclass(frozen=True)
class Faults:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    stall_rate: float = 0.0
    stall_ms: float = 0.0
    pause_up: bool = False
    pause_down: bool = False
    blackhole: bool = False
    refuse: bool = False

    def __post_init__(self) -> None:
        if min(self.latency_ms, self.jitter_ms, self.stall_ms) < 0 or not 0.0 <= self.stall_rate <= 1.0:
            raise ValueError(f"bad faults: {self}")


class FaultPlan:
    """How long each chunk is held, from a seeded random source: the same seed, the same faults."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self.chunks = 0
        self.stalls = 0

    def delay_s(self, faults: Faults) -> float:
        """The hold of the next chunk, in seconds (0 without faults; never negative)."""
        self.chunks += 1
        delay = faults.latency_ms
        if faults.jitter_ms:
            delay += self._rng.uniform(-faults.jitter_ms, faults.jitter_ms)
        if faults.stall_rate and self._rng.random() < faults.stall_rate:
            self.stalls += 1
            delay += faults.stall_ms
        return max(0.0, delay) / 1000.0


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Relays each connection to 127.0.0.1:<port> to `target`, with the faults of `faults`."""

    def __init__(self, target_host: str, target_port: int, faults: Faults | None = None, seed: int = 0) -> None:
        self.target = (target_host, target_port)
        self.faults = faults or Faults()
        self.plan = FaultPlan(seed)
        self.connections = 0  # accepted so far
        self.refused = 0  # cut at accept (`refuse`)
        self.resets = 0  # connections cut by `reset()`
        self.upstream_bytes = 0  # client to target, every connection
        self.downstream_bytes = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()  # set (and replaced) whenever the faults change
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections open now (each counts its two sockets once)."""
        return len(self._writers) // 2

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, **changes: Any) -> Faults:
        """Change some faults; the others keep their values. `set()` alone keeps them all."""
        self.faults = dataclasses.replace(self.faults, **changes)
        self._wake()
        return self.faults

    def _wake(self) -> None:
        """Every relay waiting for a change looks at the faults again."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def clear(self) -> None:
        """No faults from now on."""
        self.faults = Faults()
        self._wake()

    def reset(self) -> int:
        """Cut every open connection with an RST on both sides; returns how many."""
        cut = self.open_connections
        for writer in list(self._writers):
            _rst(writer)
        self._writers.clear()
        self.resets += cut
        self._wake()
        return cut

    async def close(self) -> None:
        self._closed = True
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.faults.refuse:
            self.refused += 1
            _rst(client_w)
            return
        if self.faults.blackhole:
            self._writers.add(client_w)
            try:
                while self.faults.blackhole and not (self._closed or client_w.transport.is_closing()):
                    await self._changed.wait()
            finally:
                self._writers.discard(client_w)
            if self._closed or client_w.transport.is_closing():
                return
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            _rst(client_w)
            return
        self._writers |= {client_w, server_w}
        up = asyncio.create_task(self._pipe(client_r, server_w, upstream=True))
        down = asyncio.create_task(self._pipe(server_r, client_w, upstream=False))
        self._tasks |= {up, down}
        try:
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            self._tasks -= {up, down}
            self._writers -= {client_w, server_w}
            for writer in (client_w, server_w):
                writer.transport.abort()

    def _held(self, upstream: bool) -> bool:
        f = self.faults
        return f.blackhole or (f.pause_up if upstream else f.pause_down)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
        """Read chunks, stamp each with its due time, and deliver them in order when due."""
        loop = asyncio.get_running_loop()
        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(due, writer, upstream))
        last_due = 0.0
        try:
            while True:
                while self._held(upstream) and not writer.transport.is_closing():
                    await self._changed.wait()  # half-open or black-holed: read nothing, close nothing
                data = await reader.read(CHUNK)
                if not data:
                    break
                if upstream:
                    self.upstream_bytes += len(data)
                else:
                    self.downstream_bytes += len(data)
                last_due = max(last_due, loop.time() + self.plan.delay_s(self.faults))
                due.put_nowait((last_due, data))
            due.put_nowait((last_due, b""))  # the end, passed on as it came: a FIN for a FIN
            await deliver
        except (OSError, ConnectionError):
            pass
        finally:
            deliver.cancel()
            await asyncio.gather(deliver, return_exceptions=True)

    async def _deliver(
        self, due: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                at, data = await due.get()
                if (wait := at - loop.time()) > 0:
                    await asyncio.sleep(wait)
                while self._held(upstream) and not writer.transport.is_closing():
                    await self._changed.wait()  # read before the pause: held too
                if not data:
                    if not writer.transport.is_closing() and writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()


class ThreadedFaultProxy:
    """A `FaultProxy` on an event loop of its own thread; its methods may be called from any thread."""

    def __init__(self, target_host: str, target_port: int, faults: Faults | None = None, seed: int = 0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        self.proxy: FaultProxy = self._call(self._make, target_host, target_port, faults, seed)

    async def _make(self, host: str, port: int, faults: Faults | None, seed: int) -> FaultProxy:
        proxy = FaultProxy(host, port, faults, seed)
        await proxy.start()
        return proxy

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def run() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30.0)

    @property
    def addr(self) -> str:
        return self.proxy.addr

    def set(self, **changes: Any) -> Faults:
        return self._call(lambda: self.proxy.set(**changes))  # type: ignore[no-any-return]

    def clear(self) -> None:
        self._call(self.proxy.clear)

    def reset(self) -> int:
        return int(self._call(self.proxy.reset))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self.proxy.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        self._loop.close()

    def __enter__(self) -> ThreadedFaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def fault_proxy(target: str, faults: Faults | None = None, seed: int = 0) -> Iterator[ThreadedFaultProxy]:
    """A threaded proxy to `host:port` for the length of a `with` block."""
    host, _, port = target.rpartition(":")
    with ThreadedFaultProxy(host, int(port), faults, seed) as proxy:
        yield proxy
