"""Python client of the speech stream gateway (docs/clients.md): an async session API, typed events
checked against the protocol's JSON Schemas, and audio decoding into the gateway's format.

    from speechgw_client import connect, load_audio

    async with connect("ws://127.0.0.1:8080/ws/stream", token=jwt, families=["asr"]) as s:
        await s.send(load_audio("clip.mp3"))
        await s.flush()
        async for ev in s.events():
            print(ev)

It depends on `websockets`, `numpy`, `soundfile` and `soxr` (and `ffmpeg` on PATH for formats
libsndfile does not read), never on the gateway's own packages.
"""

from speechgw_client.audio import BYTES_PER_S, SAMPLE_RATE, DecodeError, audio_seconds, load_audio, load_audio_async
from speechgw_client.events import (
    Ack,
    AsrFinal,
    AsrPartial,
    End,
    Error,
    Event,
    EventParseError,
    Lid,
    Metrics,
    RecordUrl,
    ResumeAnswer,
    UnknownEvent,
    Vad,
    Word,
    parse_event,
)
from speechgw_client.session import (
    ConnectError,
    Session,
    SessionClosed,
    SessionProgress,
    connect,
    connect_kwargs,
    start_message,
)
from speechgw_client.stream import ResumePolicy, StreamResult, send_paced, stream_live, stream_pcm

__all__ = [
    "BYTES_PER_S",
    "SAMPLE_RATE",
    "Ack",
    "AsrFinal",
    "AsrPartial",
    "ConnectError",
    "DecodeError",
    "End",
    "Error",
    "Event",
    "EventParseError",
    "Lid",
    "Metrics",
    "RecordUrl",
    "ResumeAnswer",
    "ResumePolicy",
    "Session",
    "SessionClosed",
    "SessionProgress",
    "StreamResult",
    "UnknownEvent",
    "Vad",
    "Word",
    "audio_seconds",
    "connect",
    "connect_kwargs",
    "load_audio",
    "load_audio_async",
    "parse_event",
    "send_paced",
    "start_message",
    "stream_live",
    "stream_pcm",
]
