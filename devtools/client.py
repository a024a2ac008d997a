"""`speechgw-client`: stream an audio file or raw PCM16 from stdin to the gateway and print the events.

    speechgw-client clip.wav                       # real time
    speechgw-client --speed 4 clip.wav             # four times real time
    speechgw-client talk.mp3                       # any format libsndfile or ffmpeg reads
    sox in.mp3 -t raw -r 16000 -c 1 -b 16 -e signed - | speechgw-client --raw -

Each event is printed as one JSON line. The exit status is 0 when the stream ended with `end` and
no `error` event, 1 otherwise. A connection that drops is resumed (docs/protocol.md#resume): each
event is printed once, and a note on stderr tells of the resume.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from devtools.devauth import default_token
from orchestrator.transcripts.srt import to_srt
from orchestrator.transcripts.vtt import to_vtt
from speechgw_client import Event, ResumePolicy, StreamResult, connect_kwargs, load_audio
from speechgw_client import stream_pcm as _stream_pcm
from speechgw_client.audio import SAMPLE_RATE
from speechgw_client.stream import DEFAULT_RESUME

__all__ = ["DEFAULT_URL", "StreamResult", "connect_kwargs", "load_wav", "main", "stream_pcm"]

DEFAULT_URL = "ws://127.0.0.1:8080/ws/stream"
DEV_CA = Path("var/certs/ca.pem")  # written by `speechgw-stack run --tls` (devtools/certs.py)
TOKEN_VIA = ("header", "subprotocol", "start")

load_wav = load_audio  # any format libsndfile or ffmpeg reads, as PCM16 LE mono 16 kHz


async def stream_pcm(
    url: str,
    pcm: bytes,
    *,
    start: Mapping[str, Any] | None = None,
    chunk_ms: int = 20,
    speed: float = 1.0,
    flush: bool = True,
    on_event: Callable[[Event], None] | None = None,
    open_timeout_s: float = 10.0,
    token: str | None = None,
    token_via: str = "header",
    ca_file: str | Path | None = None,
    finalize_at_s: Sequence[float] = (),
    resume: ResumePolicy | None = DEFAULT_RESUME,
) -> StreamResult:
    """`speechgw_client.stream_pcm` with the local stack's token by default: `token` None mints one from
    the development key (`devauth.default_token()`); "" sends none."""
    return await _stream_pcm(
        url,
        pcm,
        start=start,
        chunk_ms=chunk_ms,
        speed=speed,
        flush=flush,
        on_event=on_event,
        open_timeout_s=open_timeout_s,
        token=default_token() if token is None else token,
        token_via=token_via,
        ca_file=ca_file,
        finalize_at_s=finalize_at_s,
        resume=resume,
    )


def add_resume_argument(p: argparse.ArgumentParser) -> None:
    """`--resume-attempts N`, as both CLIs take it (`resume_policy` reads it)."""
    p.add_argument(
        "--resume-attempts",
        type=int,
        default=ResumePolicy.attempts,
        metavar="N",
        help="after a dropped connection, reconnect and resume the session up to N times, with backoff (0: never)",
    )


def resume_policy(args: argparse.Namespace) -> ResumePolicy | None:
    return ResumePolicy(attempts=args.resume_attempts) if args.resume_attempts > 0 else None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="speechgw-client", description=__doc__.split("\n")[1])
    p.add_argument("input", help="audio file (any format, rate, channels) or '-' for raw PCM16 LE 16 kHz mono on stdin")
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
    add_resume_argument(p)
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

    def show(event: Event) -> None:
        print(json.dumps(event.raw, ensure_ascii=False), flush=True)

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
            resume=resume_policy(args),
        )
    )
    for ack in result.resumes:
        assert ack.resume is not None
        print(
            f"resumed flow {ack.flow_id} after a dropped connection: audio from {ack.resume.resume_from_s:.3f} s",
            file=sys.stderr,
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
