"""One streaming session with the gateway, as an async API (docs/clients.md):

    async with connect(url, token=token, families=["asr"]) as s:
        await s.send(pcm)
        await s.flush()
        async for ev in s.events():
            print(ev)

`connect` opens the WebSocket and sends `start`; it does not wait for `ack` (audio sent at once waits
in the socket while the gateway checks the token, docs/protocol.md). A reader task reads every event
as it arrives (into an unbounded queue, so a sender that does not read never stalls the gateway's
writes) and `events()` yields them until the gateway closes. `progress` holds what a reconnect needs.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from speechgw_client.audio import BYTES_PER_S, SAMPLE_RATE
from speechgw_client.events import Ack, Event, parse_event

__all__ = [
    "BEARER_PROTOCOL_PREFIX",
    "MAX_FRAME_BYTES",
    "SUBPROTOCOL",
    "ConnectError",
    "Session",
    "SessionClosed",
    "SessionProgress",
    "TokenVia",
    "connect",
    "connect_kwargs",
    "start_message",
]

# The gateway's names (orchestrator/edge/auth.py; a unit test keeps them equal).
BEARER_PROTOCOL_PREFIX = "bearer."
SUBPROTOCOL = "speechgw.v1"
MAX_FRAME_BYTES = 65_536  # the gateway's default MAX_FRAME_BYTES; `send` splits larger buffers (or by the ack's limit)
MAX_MESSAGE_BYTES = 2**22

TokenVia = Literal["header", "subprotocol", "start"]


class ConnectError(Exception):
    """The WebSocket could not be opened (refused, unreachable, TLS, HTTP status before the upgrade)."""


class SessionClosed(Exception):
    """The gateway closed the connection; the events read so far say why."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


@dataclass
class SessionProgress:
    """Where a session stands, kept up to date by `Session`: the place a reconnect and resume reads
    (send the audio after `audio_s_sent` again, skip the events up to `last_seq`)."""

    audio_bytes_sent: int = 0
    last_seq: int | None = None
    """the newest `seq` of an event read, when the gateway numbers its events"""
    events_read: int = 0
    flushed: bool = False

    @property
    def audio_s_sent(self) -> float:
        return self.audio_bytes_sent / BYTES_PER_S

    def saw(self, event: Event) -> None:
        self.events_read += 1
        seq = event.seq
        if seq is not None and (self.last_seq is None or seq > self.last_seq):
            self.last_seq = seq


def connect_kwargs(token: str | None, via: TokenVia | str = "header") -> dict[str, Any]:
    """How `websockets.connect` presents `token` before the upgrade (docs/protocol.md#authentication)."""
    if not token or via == "start":
        return {}
    if via == "subprotocol":
        return {"subprotocols": [SUBPROTOCOL, BEARER_PROTOCOL_PREFIX + token]}
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


def start_message(
    *,
    flow_id: str | None = None,
    families: Sequence[str] | None = None,
    lang: str | None = None,
    domain: str | None = None,
    hotwords: Sequence[str] | None = None,
    chunk_ms: int = 20,
    token: str | None = None,
    traceparent: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `start` message (docs/schemas/start.json); `extra` is merged last (fields this client does not name)."""
    msg: dict[str, Any] = {
        "type": "start",
        "audio": {"codec": "pcm_s16le", "sr": SAMPLE_RATE, "channels": 1, "chunk_ms": chunk_ms},
    }
    if flow_id:
        msg["flowId"] = flow_id
    if families is not None:
        msg["return"] = list(families)
    hints: dict[str, Any] = {k: v for k, v in (("domain", domain), ("user_lang_pref", lang)) if v is not None}
    if hotwords:
        hints["hotwords"] = list(hotwords)
    if hints:
        msg["hints"] = hints
    if token:
        msg["auth"] = {"token": token}
    if traceparent:  # the client's span: the session's trace continues it (docs/protocol.md)
        msg["traceparent"] = traceparent
    msg.update(extra or {})
    return msg


class Session:
    """An open session. Not safe to send from several tasks at once; `events()` has one consumer."""

    def __init__(self, ws: ClientConnection, start: dict[str, Any]) -> None:
        self._ws = ws
        self.start = start
        self.flow_id: str | None = start.get("flowId")
        self.progress = SessionProgress()
        self.close_code: int | None = None
        self.close_reason = ""
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._max_frame_bytes = MAX_FRAME_BYTES

    async def __aenter__(self) -> Session:
        self._reader = asyncio.create_task(self._read(), name=f"speechgw-client-reader-{self.flow_id}")
        try:
            await self._send_text(self.start)
        except SessionClosed:
            pass  # refused before `start` was read (a bad token): `events()` yields the `error`
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._ws.close()
        if self._reader is not None:
            await self._reader

    @property
    def closed(self) -> bool:
        """True once the connection is closed (every event is then in the queue)."""
        return self._closed.is_set()

    async def send(self, pcm: bytes) -> None:
        """Send PCM16 LE / 16 kHz / mono, split into frames the gateway takes (its `ack` says how large)."""
        step = self._max_frame_bytes
        for off in range(0, len(pcm), step):
            part = pcm[off : off + step]
            await self._send(part)
            self.progress.audio_bytes_sent += len(part)

    async def keepalive(self) -> None:
        await self._send_text({"type": "keepalive"})

    async def finalize(self) -> None:
        """Ask for the open utterance's final now (`asr_final` with `from_finalize`); the stream stays open."""
        await self._send_text({"type": "finalize"})

    async def flush(self) -> None:
        """End of audio: the gateway finishes, sends its last events and `end`, then closes."""
        await self._send_text({"type": "flush"})
        self.progress.flushed = True

    async def events(self) -> AsyncIterator[Event]:
        """Every event, in the order read, until the gateway closes the connection."""
        while (event := await self._queue.get()) is not None:
            yield event
        self._queue.put_nowait(None)  # a second iteration ends at once too

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def _send_text(self, message: dict[str, Any]) -> None:
        await self._send(json.dumps(message))

    async def _send(self, data: str | bytes) -> None:
        try:
            await self._ws.send(data)
        except ConnectionClosed as e:
            raise SessionClosed(self._ws.close_code, self._ws.close_reason or "") from e

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                event = parse_event(json.loads(raw), received_at=time.monotonic())
                if isinstance(event, Ack):
                    self.flow_id = self.flow_id or event.flow_id
                    self._max_frame_bytes = event.limits.max_frame_bytes or self._max_frame_bytes
                self.progress.saw(event)
                self._queue.put_nowait(event)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self._ws.close_code
            self.close_reason = self._ws.close_reason or ""
            self._closed.set()
            self._queue.put_nowait(None)


def ssl_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """Verify the server against `ca_file` (a private CA), else the system's CAs."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


@asynccontextmanager
async def connect(
    url: str,
    *,
    token: str | None = None,
    token_via: TokenVia | str = "header",
    flow_id: str | None = None,
    families: Sequence[str] | None = None,
    lang: str | None = None,
    domain: str | None = None,
    hotwords: Sequence[str] | None = None,
    chunk_ms: int = 20,
    start: Mapping[str, Any] | None = None,
    ca_file: str | Path | None = None,
    open_timeout_s: float = 10.0,
) -> AsyncIterator[Session]:
    """Open a session: the WebSocket, then `start`. `token`: a JWT, sent as `token_via` says (an
    `Authorization` header, a `bearer.` subprotocol, or `start.auth.token`); None sends none. `start`:
    more `start` fields, merged last. A `wss://` server is verified against `ca_file` or the system's CAs.
    On leaving the block the connection is closed (the gateway treats an early close as a disconnect)."""
    msg = start_message(
        flow_id=flow_id,
        families=families,
        lang=lang,
        domain=domain,
        hotwords=hotwords,
        chunk_ms=chunk_ms,
        token=token if token_via == "start" else None,
        extra=start,
    )
    try:
        # No ping timeout: when the gateway holds a client that sends faster than real time
        # (backpressure), the pong waits behind the audio already in the TCP buffers.
        ws = await ws_connect(
            url,
            max_size=MAX_MESSAGE_BYTES,
            compression=None,
            open_timeout=open_timeout_s,
            ping_timeout=None,
            ssl=ssl_context(ca_file) if url.startswith("wss://") else None,
            **connect_kwargs(token, token_via),
        )
    except (OSError, TimeoutError, InvalidHandshake) as e:
        raise ConnectError(f"{url}: {e}") from e
    async with Session(ws, msg) as session:
        yield session
