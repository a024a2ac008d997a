"""The client library's event classes against the protocol's JSON Schemas (docs/schemas): every
downstream event has a class, every class's fields are the schema's properties with the same types and
the same required set; parsing keeps unknown fields and refuses a message without a required one."""

from __future__ import annotations

import ast
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest

from speechgw_client import events as ev
from speechgw_client.events import EVENT_CLASSES, EventParseError, is_required, parse_event, wire_fields
from speechgw_client.session import SessionProgress, start_message
from tests.schemas import SCHEMAS, check_event, validator

pytestmark = pytest.mark.unit

UPSTREAM = {"start", "flush", "keepalive", "finalize"}  # client messages: built, not parsed
DOWNSTREAM = sorted(p.stem for p in SCHEMAS.glob("*.json") if p.stem not in UPSTREAM)
JSON_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}


def schema(kind: str) -> dict[str, Any]:
    return dict(json.loads((SCHEMAS / f"{kind}.json").read_text()))


def test_every_downstream_schema_has_a_class_and_every_class_a_schema() -> None:
    assert sorted(EVENT_CLASSES) == DOWNSTREAM
    assert all(EVENT_CLASSES[kind].type == schema(kind)["properties"]["type"]["const"] for kind in DOWNSTREAM)


def leaf_types(prop: dict[str, Any]) -> set[type]:
    """The Python types a schema property allows (without nesting)."""
    if "const" in prop:
        return {type(prop["const"])}
    if "enum" in prop:
        return {type(v) for v in prop["enum"]}
    if "oneOf" in prop:
        return set().union(*(leaf_types(p) for p in prop["oneOf"]))
    kinds = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
    return {JSON_TYPES.get(k, dict if k == "object" else list) for k in kinds}


def annotation_types(tp: Any) -> set[type]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return set().union(*(annotation_types(a) for a in get_args(tp)))
    if origin is Literal:
        return {type(v) for v in get_args(tp)}
    if origin in (list, tuple):
        return {list}
    if origin is dict or dataclasses.is_dataclass(tp):
        return {dict}
    return {tp}


def without_none(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def assert_matches(cls: type, obj_schema: dict[str, Any], where: str) -> None:
    """`cls`'s wire fields are `obj_schema`'s properties: names, required set, types, nested objects."""
    props = {k: v for k, v in obj_schema.get("properties", {}).items() if k != "type"}
    fields = {wire: f for f, wire in wire_fields(cls)}
    assert set(fields) == set(props), f"{where}: fields {sorted(fields)} != schema {sorted(props)}"
    required = set(obj_schema.get("required", [])) - {"type"}
    assert {w for w, f in fields.items() if is_required(f)} == required, f"{where}: required set"
    hints = typing.get_type_hints(cls)
    for wire, f in fields.items():
        prop, tp = props[wire], hints[f.name]
        allowed = leaf_types(prop)
        if not is_required(f):
            allowed |= {type(None)}  # optional in the schema: absent is None
        got = annotation_types(tp)
        assert got == allowed or (got == allowed | {int} and float in allowed), f"{where}.{wire}: {got} != {allowed}"
        inner = without_none(tp)
        if dataclasses.is_dataclass(inner):
            assert_matches(typing.cast(type, inner), prop, f"{where}.{wire}")
        elif get_origin(inner) is dict:
            value_cls = get_args(inner)[1]
            assert dataclasses.is_dataclass(value_cls), f"{where}.{wire}: dict values must be a class"
            assert_matches(value_cls, prop["additionalProperties"], f"{where}.{wire}[]")
        elif get_origin(inner) in (list, tuple):
            items = prop["items"]
            item_types = set(get_args(inner)) - {Ellipsis}
            assert len(item_types) == 1, f"{where}.{wire}: one item type"
            (item,) = item_types
            if dataclasses.is_dataclass(item):
                assert_matches(typing.cast(type, item), items, f"{where}.{wire}[]")
            else:
                assert {item} <= leaf_types(items), f"{where}.{wire}[]: {item} vs {leaf_types(items)}"
            if get_origin(inner) is tuple:
                assert len(get_args(inner)) == prop["minItems"] == prop["maxItems"], f"{where}.{wire}: fixed length"


@pytest.mark.parametrize("kind", DOWNSTREAM)
def test_class_fields_match_the_schema(kind: str) -> None:
    assert_matches(EVENT_CLASSES[kind], schema(kind), kind)


SAMPLES: list[dict[str, Any]] = [
    {
        "type": "ack",
        "flowId": "f",
        "audio": {"codec": "pcm_s16le", "sr": 16000, "channels": 1, "chunk_ms": 20, "frame_ms": 20},
        "return": ["asr"],
        "limits": {"max_frame_bytes": 65536, "flush_idle_s": 3.0, "partial_interval_ms": 250},
        "resume": {"last_seq": 7, "resume_from_s": 1.5, "resume_from_bytes": 48000, "audio_ended": False},
    },
    {"type": "vad", "flowId": "f", "seq": 2, "event": "speech_start", "ts": 0},
    {"type": "lid", "flowId": "f", "seq": 3, "lang": "en", "score": 1, "source": "hint", "pool": "en"},
    {"type": "asr_partial", "flowId": "f", "seq": 4, "text": "hel", "ts": [0.5, 1]},
    {
        "type": "asr_final",
        "flowId": "f",
        "seq": 5,
        "text": "hello",
        "ts": [0.5, 1.25],
        "lang": "en",
        "from_finalize": True,
    },
    {"type": "record_url", "flowId": "f", "seq": 6, "url": "http://x/f.ogg", "duration_s": 1.5, "status": "stored"},
    {
        "type": "metrics",
        "flowId": "f",
        "seq": 7,
        "audio_s": 1.5,
        "bytes_in": 48000,
        "stages": {"vad": {"count": 2, "latency_ms_p50": 3.0, "latency_ms_max": 4}},
    },
    {"type": "end", "flowId": "f", "seq": 8, "reason": "flush", "audio_s": 1.5},
    {"type": "error", "flowId": None, "seq": 1, "code": "auth_required", "message": "no token", "fatal": True},
]


def test_the_samples_cover_every_event_and_are_valid() -> None:
    assert sorted({s["type"] for s in SAMPLES}) == DOWNSTREAM
    for sample in SAMPLES:
        check_event(sample)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s["type"])
def test_parse_gives_the_typed_event_with_every_value(sample: dict[str, Any]) -> None:
    event = parse_event(sample, received_at=12.5)
    assert type(event) is EVENT_CLASSES[sample["type"]] and event.type == sample["type"]
    assert event.raw is sample and event.received_at == 12.5
    hints = typing.get_type_hints(type(event))
    for f, wire in wire_fields(type(event)):
        value = getattr(event, f.name)
        if wire not in sample:
            assert value is None
        elif hints[f.name] is float or without_none(hints[f.name]) is float:
            assert isinstance(value, float) and value == sample[wire]
        elif dataclasses.is_dataclass(value):
            assert dataclasses.asdict(value) == {
                **dict.fromkeys(n for _, n in wire_fields(type(value))),
                **sample[wire],
            }
        elif isinstance(value, tuple):
            assert list(value) == sample[wire]
        elif isinstance(value, dict):
            assert {k: dataclasses.asdict(v) for k, v in value.items()} == sample[wire]
        else:
            assert value == sample[wire]


def test_nested_values_are_typed() -> None:
    ack = parse_event(SAMPLES[0])
    assert isinstance(ack, ev.Ack) and ack.audio.frame_ms == 20 and ack.limits.flush_idle_s == 3.0
    assert ack.seq is None and ack.resume is not None and ack.resume.resume_from_bytes == 48000
    assert ack.return_ == ["asr"]
    metrics = parse_event(SAMPLES[6])
    assert isinstance(metrics, ev.Metrics) and metrics.stages["vad"].latency_ms_max == 4.0
    final = parse_event(SAMPLES[4])
    assert isinstance(final, ev.AsrFinal) and final.ts == (0.5, 1.25) and final.from_finalize is True


def test_words_and_confidence_are_typed() -> None:
    words = [{"word": "hello", "start": 0.5, "end": 0.9, "confidence": 0.93}, {"word": "there", "start": 1, "end": 1.2}]
    message = {"type": "asr_final", "flowId": "f", "seq": 3, "text": "hello there", "ts": [0.5, 1.25], "lang": "en"}
    check_event({**message, "words": words, "confidence": 0.8})
    final = parse_event({**message, "words": words, "confidence": 0.8})
    assert isinstance(final, ev.AsrFinal) and final.confidence == 0.8
    assert final.words == [
        ev.Word(word="hello", start=0.5, end=0.9, confidence=0.93),
        ev.Word(word="there", start=1.0, end=1.2),
    ]
    assert isinstance(final.words[1].start, float)
    bare = parse_event(message)
    assert isinstance(bare, ev.AsrFinal) and bare.words is None and bare.confidence is None
    ack = parse_event({**SAMPLES[0], "hotwords_applied": False})
    assert isinstance(ack, ev.Ack) and ack.hotwords_applied is False


def test_unknown_fields_stay_in_raw_and_unknown_types_are_kept() -> None:
    message = {"type": "asr_final", "flowId": "f", "seq": 1, "text": "x", "ts": [0, 1], "lang": "en", "sentiment": 0.9}
    final = parse_event(message)
    assert isinstance(final, ev.AsrFinal) and final.raw["sentiment"] == 0.9
    other = parse_event({"type": "speaker_change", "flowId": "f", "seq": 4, "speaker": 2})
    assert isinstance(other, ev.UnknownEvent) and other.type == "speaker_change" and other.raw["speaker"] == 2
    assert other.seq == 4


@pytest.mark.parametrize(
    "message",
    [
        {"flowId": "f"},
        {"type": 3},
        {"type": "end", "flowId": "f", "audio_s": 1.0},
        {"type": "asr_final", "flowId": "f", "text": "x", "lang": "en"},
        {"type": "ack", "flowId": "f", "audio": {"codec": "pcm_s16le"}, "return": [], "limits": {}},
        {"type": "ack", "flowId": "f", "audio": [], "return": [], "limits": {}},
        {"type": "asr_partial", "flowId": "f", "seq": 1, "text": "x", "ts": 0.5},
        {"type": "vad", "flowId": "f", "event": "speech_end", "ts": 1.0},  # no seq
        {"type": "end", "flowId": "f", "seq": True, "reason": "flush", "audio_s": 0},
        {"type": "end", "flowId": "f", "seq": "3", "reason": "flush", "audio_s": 0},
    ],
)
def test_a_message_without_a_required_field_or_of_the_wrong_shape_is_refused(message: dict[str, Any]) -> None:
    with pytest.raises(EventParseError):
        parse_event(message)


def test_progress_keeps_the_newest_seq_and_the_audio_sent() -> None:
    progress = SessionProgress(audio_bytes_sent=48_000)
    assert progress.audio_s_sent == 1.5
    progress.saw(parse_event(SAMPLES[0]))  # the ack of a resume has no seq
    for seq in (3, 5, 4):
        progress.saw(parse_event({"type": "vad", "flowId": "f", "seq": seq, "event": "speech_end", "ts": 1.0}))
    assert progress.last_seq == 5 and progress.events_read == 4


def test_start_messages_are_valid() -> None:
    full = start_message(
        flow_id="call-42",
        families=["asr", "vad"],
        lang="en",
        domain="default",
        hotwords=["Kubernetes"],
        chunk_ms=40,
        token="t" * 40,
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        extra={"endpointing": 500},
    )
    for msg in (start_message(), full):
        validator("start").validate(msg)
    assert full["hints"] == {"domain": "default", "user_lang_pref": "en", "hotwords": ["Kubernetes"]}
    assert full["auth"] == {"token": "t" * 40} and full["endpointing"] == 500 and full["audio"]["chunk_ms"] == 40
    assert full["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert not {"auth", "hints", "return", "traceparent"} & set(start_message())


def test_the_library_constants_are_the_gateways() -> None:
    from common import audio
    from orchestrator.core.session import SessionConfig
    from orchestrator.edge import auth
    from speechgw_client import audio as client_audio
    from speechgw_client import session

    assert (session.SUBPROTOCOL, session.BEARER_PROTOCOL_PREFIX) == (auth.SUBPROTOCOL, auth.BEARER_PROTOCOL_PREFIX)
    assert (client_audio.SAMPLE_RATE, client_audio.BYTES_PER_S) == (audio.SAMPLE_RATE, audio.BYTES_PER_S)
    assert SessionConfig().max_frame_bytes == session.MAX_FRAME_BYTES


def test_the_library_imports_none_of_the_gateways_packages() -> None:
    package = Path(__file__).resolve().parents[2] / "speechgw_client"
    server = {"common", "orchestrator", "services", "devtools", "proto", "tests"}
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & server, f"{path.name} imports {names}"
