"""Typed events of the gateway's downstream stream (docs/protocol.md), one frozen dataclass per
JSON Schema in docs/schemas (tests/unit/test_client_events.py checks that every schema'd event has
a class here and that the fields, their types and which are required match the schema).

`parse_event` turns one decoded JSON message into its class. It is lenient the way a client of an
evolving protocol has to be: fields it does not know stay in `raw` (a newer gateway may add some),
an unknown `type` becomes an `UnknownEvent`; only a missing required field is an error.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

__all__ = [
    "WIRE_NAME",
    "Ack",
    "AsrFinal",
    "AsrPartial",
    "AudioFormat",
    "End",
    "Error",
    "Event",
    "EventBase",
    "EventParseError",
    "Lid",
    "Limits",
    "Metrics",
    "RecordUrl",
    "ResumeAnswer",
    "StageFigures",
    "UnknownEvent",
    "Vad",
    "Word",
    "parse_event",
]

WIRE_NAME = "wire"  # field metadata: the JSON name when it is not the Python one (`flowId`)
LOCAL = "local"  # field metadata: the client's own bookkeeping, not on the wire


class EventParseError(ValueError):
    """A message lacks a required field or holds a value of the wrong shape."""


def _flow_id() -> Any:
    return field(metadata={WIRE_NAME: "flowId"})


@dataclass(frozen=True, kw_only=True)
class EventBase:
    """What every event carries besides its schema'd fields."""

    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, metadata={LOCAL: True})
    """the message as received, unknown fields included"""
    received_at: float | None = field(default=None, repr=False, compare=False, metadata={LOCAL: True})
    """`time.monotonic()` when the client read it"""


@dataclass(frozen=True, kw_only=True)
class AudioFormat:
    codec: str
    sr: int
    channels: int
    chunk_ms: int
    frame_ms: int


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_frame_bytes: int | None = None
    flush_idle_s: float | None = None
    partial_interval_ms: int | None = None


@dataclass(frozen=True, kw_only=True)
class ResumeAnswer:
    """The gateway's answer to `start.resume` (docs/protocol.md#resume)."""

    last_seq: int
    resume_from_s: float
    resume_from_bytes: int
    audio_ended: bool


@dataclass(frozen=True, kw_only=True)
class Ack(EventBase):
    """First event: the session is accepted."""

    type: ClassVar[str] = "ack"
    flow_id: str | None = _flow_id()
    seq: int | None = None
    """1 on the first ack; None on the ack that answers a resume (it is not one of the flow's events)"""
    audio: AudioFormat
    return_: list[str] = field(metadata={WIRE_NAME: "return"})
    limits: Limits
    resume: ResumeAnswer | None = None
    """on the ack that answers `start.resume`: where the audio continues"""
    trace_id: str | None = None  # the session's trace, while the gateway traces (docs/observability.md)
    hotwords_applied: bool | None = None
    """present when `start` had hotwords: whether the ASR engines apply them"""


@dataclass(frozen=True, kw_only=True)
class Vad(EventBase):
    """A speech boundary (opt-in family `vad`)."""

    type: ClassVar[str] = "vad"
    flow_id: str | None = _flow_id()
    seq: int
    """the event's number in its flow, 1, 2, 3 ... (docs/protocol.md#resume)"""
    event: Literal["speech_start", "speech_end"]
    ts: float


@dataclass(frozen=True, kw_only=True)
class Lid(EventBase):
    """The session's language, settled once."""

    type: ClassVar[str] = "lid"
    flow_id: str | None = _flow_id()
    seq: int
    """the event's number in its flow, 1, 2, 3 ... (docs/protocol.md#resume)"""
    lang: str
    score: float
    source: Literal["lid", "hint"] | None = None
    pool: str | None = None


@dataclass(frozen=True, kw_only=True)
class Word:
    """One word of a transcript: seconds on the session timeline; `confidence` 0..1 when the engine gives one."""

    word: str
    start: float
    end: float
    confidence: float | None = None


@dataclass(frozen=True, kw_only=True)
class AsrPartial(EventBase):
    """Text of the open utterance so far."""

    type: ClassVar[str] = "asr_partial"
    flow_id: str | None = _flow_id()
    seq: int
    """the event's number in its flow, 1, 2, 3 ... (docs/protocol.md#resume)"""
    text: str
    ts: tuple[float, float]
    words: list[Word] | None = None
    confidence: float | None = None


@dataclass(frozen=True, kw_only=True)
class AsrFinal(EventBase):
    """Final text of one utterance; `ts` is [start, end] in seconds on the session timeline."""

    type: ClassVar[str] = "asr_final"
    flow_id: str | None = _flow_id()
    seq: int
    """the event's number in its flow, 1, 2, 3 ... (docs/protocol.md#resume)"""
    text: str
    ts: tuple[float, float]
    lang: str
    from_finalize: bool | None = None
    words: list[Word] | None = None
    """the words of `text` with their times, when the engine gives them (docs/protocol.md)"""
    confidence: float | None = None


@dataclass(frozen=True, kw_only=True)
class RecordUrl(EventBase):
    """The archive is stored."""

    type: ClassVar[str] = "record_url"
    flow_id: str | None = _flow_id()
    seq: int
    """the event's number in its flow, 1, 2, 3 ... (docs/protocol.md#resume)"""
    url: str
    duration_s: float | None = None
    bytes: int | None = None
    codec: str | None = None
    status: Literal["stored", "spooled"] | None = None


@dataclass(frozen=True, kw_only=True)
class StageFigures:
    count: int
    latency_ms_p50: float
    latency_ms_max: float


@dataclass(frozen=True, kw_only=True)
class Metrics(EventBase):
    """Per-session figures, just before `end`."""

    type: ClassVar[str] = "metrics"
    flow_id: str | None = _flow_id()
    seq: int
    """the event's number in its flow, 1, 2, 3 ... (docs/protocol.md#resume)"""
    audio_s: float
    bytes_in: int
    messages_in: int | None = None
    speech_s: float | None = None
    speech_segments: int | None = None
    stages: dict[str, StageFigures]


@dataclass(frozen=True, kw_only=True)
class End(EventBase):
    """Last event of the session."""

    type: ClassVar[str] = "end"
    flow_id: str | None = _flow_id()
    seq: int
    """the event's number in its flow, 1, 2, 3 ... (docs/protocol.md#resume)"""
    reason: Literal["flush", "disconnect", "idle", "error", "shutdown"]
    audio_s: float


@dataclass(frozen=True, kw_only=True)
class Error(EventBase):
    """Something went wrong (docs/errors.md); a fatal one is followed by `end` and a close."""

    type: ClassVar[str] = "error"
    flow_id: str | None = _flow_id()
    seq: int | None = None
    """the event's number in its flow, 1, 2, 3 ... (docs/protocol.md#resume)"""
    code: str
    message: str
    fatal: bool
    mode: Literal["record_only"] | None = None
    transcript_path: str | None = None


@dataclass(frozen=True, kw_only=True)
class UnknownEvent(EventBase):
    """An event type this client does not know (a newer gateway); everything is in `raw`."""

    type: str
    seq: int | None = None


Event = Ack | Vad | Lid | AsrPartial | AsrFinal | RecordUrl | Metrics | End | Error | UnknownEvent

EVENT_CLASSES: dict[str, type[EventBase]] = {
    cls.type: cls for cls in (Ack, Vad, Lid, AsrPartial, AsrFinal, RecordUrl, Metrics, End, Error)
}


def parse_event(message: dict[str, Any], *, received_at: float | None = None) -> Event:
    """The typed event of one decoded message; unknown fields stay in `raw`."""
    kind = message.get("type")
    if not isinstance(kind, str):
        raise EventParseError(f"event without a string type: {message!r:.200}")
    cls = EVENT_CLASSES.get(kind)
    if cls is None:
        seq = message.get("seq")
        seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        return UnknownEvent(type=kind, seq=seq, raw=message, received_at=received_at)
    values = _values(cls, message)
    return typing.cast(Event, cls(raw=message, received_at=received_at, **values))


def wire_fields(cls: type) -> list[tuple[dataclasses.Field[Any], str]]:
    """The fields of `cls` that are on the wire, with their JSON names."""
    return [(f, f.metadata.get(WIRE_NAME, f.name)) for f in dataclasses.fields(cls) if not f.metadata.get(LOCAL)]


def is_required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _values(cls: type, message: dict[str, Any]) -> dict[str, Any]:
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f, wire in wire_fields(cls):
        if wire in message:
            values[f.name] = _convert(hints[f.name], message[wire], f"{cls.__name__}.{wire}")
        elif is_required(f):
            raise EventParseError(f"{cls.__name__}: missing {wire!r} in {message!r:.200}")
    return values


def _convert(tp: Any, value: Any, where: str) -> Any:
    """`value` (decoded JSON) as the annotation `tp` says: nested dataclasses, lists, tuples, dicts."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        (inner, *_) = [a for a in get_args(tp) if a is not type(None)]
        return _convert(inner, value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise EventParseError(f"{where}: expected an object, got {value!r:.80}")
        cls = typing.cast(type, tp)
        return cls(**_values(cls, value))
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise EventParseError(f"{where}: expected an array, got {value!r:.80}")
        args = get_args(tp)
        items = [_convert(args[min(i, len(args) - 1)], v, where) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise EventParseError(f"{where}: expected an object, got {value!r:.80}")
        return {k: _convert(get_args(tp)[1], v, where) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise EventParseError(f"{where}: expected an integer, got {value!r:.80}")
    return value
