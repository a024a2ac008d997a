"""`speechgw-client`: stream a WAV file or raw PCM16 from stdin to the gateway and print the events.

    speechgw-client clip.wav                       # real time
    speechgw-client --speed 4 clip.wav             # four times real time
    sox in.mp3 -t raw -r 16000 -c 1 -b 16 -e signed - | speechgw-client --raw -

Each event is printed as one JSON line. The exit status is 0 when the stream ended with `end` and
no `error` event, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from common.audio import SAMPLE_RATE
from devtools.devauth import default_token
from orchestrator.edge.auth import BEARER_PROTOCOL_PREFIX, SUBPROTOCOL
from orchestrator.transcripts.srt import to_srt
from orchestrator.transcripts.vtt import to_vtt

DEFAULT_URL = "ws://127.0.0.1:8080/ws/stream"
DEV_CA = Path("var/certs/ca.pem")  # written by `speechgw-stack run --tls` (devtools/certs.py)
TOKEN_VIA = ("header", "subprotocol", "start")


def connect_kwargs(token: str | None, via: str = "header") -> dict[str, Any]:
    """How `websockets.connect` presents `token` before the upgrade (docs/protocol.md)."""
    if not token or via == "start":
        return {}
    if via == "subprotocol":
        return {"subprotocols": [SUBPROTOCOL, BEARER_PROTOCOL_PREFIX + token]}
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


def load_wav(path: str | Path) -> bytes:
    """Any WAV/FLAC/OGG soundfile reads, as PCM16 LE mono 16 kHz."""
    import soundfile as sf
    import soxr

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return (np.clip(mono, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


@dataclass
class StreamResult:
    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    received_at: list[float] = field(default_factory=list)
    first_audio_at: float | None = None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    @property
    def ok(self) -> bool:
        return bool(self.events) and self.events[-1].get("type") == "end" and not self.of_type("error")


async def stream_pcm(
    url: str,
    pcm: bytes,
    *,
    start: dict[str, Any] | None = None,
    chunk_ms: int = 20,
    speed: float = 1.0,
    flush: bool = True,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    open_timeout_s: float = 10.0,
    token: str | None = None,
    token_via: str = "header",
    ca_file: str | Path | None = None,
    finalize_at_s: Sequence[float] = (),
) -> StreamResult:
    """Send `start`, the audio paced at `speed` x real time (0 = as fast as possible), then `flush`;
    collect events until the server closes. `token` None: `devauth.default_token()`; "": none sent.
    `token_via`: an Authorization header, a `bearer.` subprotocol, or `start.auth.token`. A `wss://`
    server is verified against `ca_file` (a private CA) or, without it, the system's CAs.
    `finalize_at_s`: audio positions (seconds) after which a `finalize` is sent."""
    if token is None:
        token = default_token()
    result = StreamResult()
    chunk = SAMPLE_RATE * chunk_ms // 1000 * 2
    finalize_after = sorted(int(s * SAMPLE_RATE) * 2 for s in finalize_at_s)  # byte offsets
    msg = {
        "type": "start",
        "audio": {"codec": "pcm_s16le", "sr": SAMPLE_RATE, "channels": 1, "chunk_ms": chunk_ms},
    }
    if token and token_via == "start":
        msg["auth"] = {"token": token}
    msg.update(start or {})
    # No ping timeout: when the gateway holds a client that sends faster than real time
    # (backpressure), the pong waits behind the audio already in the TCP buffers.
    tls = ssl_context(ca_file) if url.startswith("wss://") else None
    async with connect(
        url,
        max_size=2**22,
        compression=None,
        open_timeout=open_timeout_s,
        ping_timeout=None,
        ssl=tls,
        **connect_kwargs(token, token_via),
    ) as ws:

        async def reader() -> None:
            try:
                async for raw in ws:
                    event = json.loads(raw)
                    result.events.append(event)
                    result.received_at.append(time.monotonic())
                    if on_event is not None:
                        on_event(event)
            except ConnectionClosed:
                pass

        read_task = asyncio.create_task(reader())
        try:
            await ws.send(json.dumps(msg))
            t0 = time.monotonic()
            result.first_audio_at = t0
            for i, off in enumerate(range(0, len(pcm), chunk)):
                if speed > 0:
                    due = t0 + i * chunk_ms / 1000.0 / speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await ws.send(pcm[off : off + chunk])
                while finalize_after and finalize_after[0] <= off + chunk:
                    finalize_after.pop(0)
                    await ws.send(json.dumps({"type": "finalize"}))
            if flush:
                await ws.send(json.dumps({"type": "flush"}))
        except ConnectionClosed:
            pass
        await read_task
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""
    return result


def ssl_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """Verify the server against `ca_file`, else the system's CAs."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="speechgw-client", description=__doc__.split("\n")[1])
    p.add_argument("input", help="WAV (any rate/channels) or '-' for raw PCM16 LE 16 kHz mono on stdin")
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = as fast as possible")
    p.add_argument("--chunk-ms", type=int, default=20)
    p.add_argument("--flow-id", default=None)
    p.add_argument(
        "--return",
        dest="families",
        default=None,
        help="comma list of event families: lid,asr,record_url,metrics,vad",
    )
    p.add_argument("--lang", default="auto", help="hints.user_lang_pref")
    p.add_argument("--domain", default="default")
    p.add_argument(
        "--token",
        default=None,
        help="JWT; default: $SPEECHGW_TOKEN, else one minted from the local stack's development key",
    )
    p.add_argument("--token-via", choices=TOKEN_VIA, default="header", help="how the token is sent")
    p.add_argument(
        "--ca",
        type=Path,
        default=None,
        help=f"CA that signed a wss:// server's certificate (default: {DEV_CA} when it exists, else the system's)",
    )
    p.add_argument(
        "--finalize-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="send a finalize after every SECONDS of audio (0: never)",
    )
    p.add_argument("--hotwords", default="", help="comma-separated hints.hotwords (names, terms)")
    p.add_argument("--srt", type=Path, default=None, help="write the finals as SRT")
    p.add_argument("--vtt", type=Path, default=None, help="write the finals as WebVTT")
    p.add_argument("--json", type=Path, default=None, help="write all events as a JSON array")
    args = p.parse_args(argv)

    pcm = sys.stdin.buffer.read() if args.input == "-" else load_wav(args.input)
    start: dict[str, Any] = {"hints": {"domain": args.domain, "user_lang_pref": args.lang}}
    if args.hotwords:
        start["hints"]["hotwords"] = [w.strip() for w in args.hotwords.split(",") if w.strip()]
    if args.flow_id:
        start["flowId"] = args.flow_id
    if args.families:
        start["return"] = [f for f in args.families.split(",") if f]

    def show(event: dict[str, Any]) -> None:
        print(json.dumps(event, ensure_ascii=False), flush=True)

    ca = args.ca or (DEV_CA if DEV_CA.is_file() else None)
    audio_s = len(pcm) / 2 / SAMPLE_RATE
    every = args.finalize_every
    finalize_at = [every * k for k in range(1, int(audio_s / every) + 1)] if every > 0 else []
    result = asyncio.run(
        stream_pcm(
            args.url,
            pcm,
            start=start,
            chunk_ms=args.chunk_ms,
            speed=args.speed,
            on_event=show,
            token=args.token,
            token_via=args.token_via,
            ca_file=ca,
            finalize_at_s=finalize_at,
        )
    )
    if args.srt:
        args.srt.write_text(to_srt(result.of_type("asr_final")), encoding="utf-8")
    if args.vtt:
        args.vtt.write_text(to_vtt(result.of_type("asr_final")), encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(result.events, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
