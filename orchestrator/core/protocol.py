"""The client protocol of SPEC §2: control messages in, events out, stable error codes.

Every code here is part of the public contract and documented in docs/errors.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from common.audio import CHANNELS, SAMPLE_RATE

FLOW_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
EVENT_FAMILIES = ("lid", "asr", "record_url", "metrics", "vad")
DEFAULT_RETURN = ("lid", "asr", "record_url", "metrics")
CODEC = "pcm_s16le"

# Bounds of a control frame (docs/errors.md, docs/security.md). A `start` is three levels deep; the
# stdlib parser recurses once per level and a few thousand levels overflow the interpreter's stack.
MAX_JSON_DEPTH = 16
# Hotwords become the engine's prompt (Whisper keeps ~224 tokens of it): a long list crowds the audio
# out and the model repeats the prompt instead of transcribing.
MAX_HOTWORDS = 32
MAX_HOTWORD_CHARS = 48
MAX_HOTWORDS_TOTAL_CHARS = 512
MAX_RETURN_ENTRIES = 16
MAX_DOMAIN_CHARS = 64
MAX_TOKEN_CHARS = 16 * 1024
# `start.endpointing`: the silence that ends an utterance, per session (the VAD's VAD_MIN_SILENCE_MS
# otherwise). Below ~100 ms Silero ends utterances inside words; past 5 s a pause is not an end.
MIN_ENDPOINTING_MS = 100
MAX_ENDPOINTING_MS = 5000
# `start.traceparent`: W3C Trace Context version 00, lowercase hex, trace and parent ids not all zero.
TRACEPARENT_RE = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}\Z")
TRACEPARENT_CHARS = 55
LANG_PREF_RE = re.compile(r"^(?:auto|[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8}){0,3})?\Z")
# For the depth check: a JSON string (its brackets do not nest), and what is not a bracket.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class Close(int, Enum):
    """WebSocket close codes (RFC 6455 §7.4.1) the gateway uses."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


class ErrorCode(StrEnum):
    """Machine-readable `error.code` values and the close code each fatal one leads to."""

    INVALID_JSON = "invalid_json"
    JSON_TOO_DEEP = "json_too_deep"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    AUDIO_BEFORE_START = "audio_before_start"
    FLUSH_BEFORE_START = "flush_before_start"
    DUPLICATE_START = "duplicate_start"
    INVALID_START = "invalid_start"
    INVALID_FLOW_ID = "invalid_flow_id"
    UNSUPPORTED_CODEC = "unsupported_codec"
    UNSUPPORTED_SAMPLE_RATE = "unsupported_sample_rate"
    UNSUPPORTED_CHANNELS = "unsupported_channels"
    FRAME_TOO_LARGE = "frame_too_large"
    START_TIMEOUT = "start_timeout"
    TOO_MANY_SESSIONS = "too_many_sessions"
    SERVER_DRAINING = "server_draining"
    SESSION_TOO_LONG = "session_too_long"
    AUTH_REQUIRED = "auth_required"
    AUTH_INVALID = "auth_invalid"
    AUTH_EXPIRED = "auth_expired"
    AUTH_FORBIDDEN = "auth_forbidden"
    FLOW_IN_USE = "flow_in_use"
    # Resume by flowId (docs/protocol.md#resume): refusals of a `start` carrying `resume`.
    RESUME_EXPIRED = "resume_expired"
    RESUME_UNKNOWN = "resume_unknown"
    RESUME_FORBIDDEN = "resume_forbidden"
    SEND_TIMEOUT = "send_timeout"
    INTERNAL_ERROR = "internal_error"
    # Limits per client (orchestrator/edge/limits.py, docs/security.md).
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    IP_CONNECTION_LIMIT = "ip_connection_limit"
    IP_PENDING_LIMIT = "ip_pending_limit"
    TOO_MANY_PENDING = "too_many_pending"
    IP_SESSION_LIMIT = "ip_session_limit"
    TENANT_SESSION_LIMIT = "tenant_session_limit"
    SESSION_RATE_LIMITED = "session_rate_limited"
    # Non-fatal: the session goes on.
    ODD_BYTE_COUNT = "odd_byte_count"
    AUDIO_AFTER_FLUSH = "audio_after_flush"
    VAD_UNAVAILABLE = "vad_unavailable"
    DENOISE_UNAVAILABLE = "denoise_unavailable"
    LID_UNAVAILABLE = "lid_unavailable"
    ASR_UNAVAILABLE = "asr_unavailable"
    ARCHIVE_UNAVAILABLE = "archive_unavailable"
    RESUME_GAP = "resume_gap"


FATAL_CLOSE: dict[ErrorCode, Close] = {
    ErrorCode.INVALID_JSON: Close.PROTOCOL_ERROR,
    ErrorCode.JSON_TOO_DEEP: Close.POLICY_VIOLATION,
    ErrorCode.INVALID_MESSAGE: Close.PROTOCOL_ERROR,
    ErrorCode.UNKNOWN_TYPE: Close.PROTOCOL_ERROR,
    ErrorCode.AUDIO_BEFORE_START: Close.PROTOCOL_ERROR,
    ErrorCode.FLUSH_BEFORE_START: Close.PROTOCOL_ERROR,
    ErrorCode.DUPLICATE_START: Close.PROTOCOL_ERROR,
    ErrorCode.INVALID_START: Close.PROTOCOL_ERROR,
    ErrorCode.INVALID_FLOW_ID: Close.PROTOCOL_ERROR,
    ErrorCode.UNSUPPORTED_CODEC: Close.UNSUPPORTED_DATA,
    ErrorCode.UNSUPPORTED_SAMPLE_RATE: Close.UNSUPPORTED_DATA,
    ErrorCode.UNSUPPORTED_CHANNELS: Close.UNSUPPORTED_DATA,
    ErrorCode.FRAME_TOO_LARGE: Close.MESSAGE_TOO_BIG,
    ErrorCode.START_TIMEOUT: Close.POLICY_VIOLATION,
    ErrorCode.TOO_MANY_SESSIONS: Close.TRY_AGAIN_LATER,
    ErrorCode.SERVER_DRAINING: Close.TRY_AGAIN_LATER,
    ErrorCode.SESSION_TOO_LONG: Close.POLICY_VIOLATION,
    ErrorCode.AUTH_REQUIRED: Close.POLICY_VIOLATION,
    ErrorCode.AUTH_INVALID: Close.POLICY_VIOLATION,
    ErrorCode.AUTH_EXPIRED: Close.POLICY_VIOLATION,
    ErrorCode.AUTH_FORBIDDEN: Close.POLICY_VIOLATION,
    ErrorCode.FLOW_IN_USE: Close.POLICY_VIOLATION,
    ErrorCode.RESUME_EXPIRED: Close.POLICY_VIOLATION,
    ErrorCode.RESUME_UNKNOWN: Close.POLICY_VIOLATION,
    ErrorCode.RESUME_FORBIDDEN: Close.POLICY_VIOLATION,
    ErrorCode.SEND_TIMEOUT: Close.POLICY_VIOLATION,  # rarely seen: the client reads nothing
    ErrorCode.INTERNAL_ERROR: Close.INTERNAL_ERROR,
    ErrorCode.ORIGIN_NOT_ALLOWED: Close.POLICY_VIOLATION,  # answered 403 before the upgrade
    ErrorCode.IP_CONNECTION_LIMIT: Close.POLICY_VIOLATION,
    ErrorCode.IP_PENDING_LIMIT: Close.POLICY_VIOLATION,
    ErrorCode.TOO_MANY_PENDING: Close.TRY_AGAIN_LATER,
    ErrorCode.IP_SESSION_LIMIT: Close.POLICY_VIOLATION,
    ErrorCode.TENANT_SESSION_LIMIT: Close.POLICY_VIOLATION,
    ErrorCode.SESSION_RATE_LIMITED: Close.TRY_AGAIN_LATER,
}


class ProtocolError(Exception):
    """Bad client input, carrying its stable code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ResumeRequest:
    """`start.resume`: the client lost its connection and continues the flow of the same `flowId`.
    `last_seq`: the last event it received (0: none); `audio_s`: the audio it had sent."""

    last_seq: int
    audio_s: float


@dataclass(frozen=True)
class StartRequest:
    """A validated `start` control frame."""

    flow_id: str
    returns: frozenset[str]
    domain: str = "default"
    lang_pref: str = "auto"
    chunk_ms: int = 20
    hotwords: tuple[str, ...] = ()
    token: str | None = None
    # `endpointing`: ms of silence that end an utterance (None: the VAD's default); `false` turns the
    # VAD's endpoints off for the ASR (utterances end at `finalize`, flush or the ASR's length cap).
    endpointing_ms: int | None = None
    vad_endpoints: bool = True
    resume: ResumeRequest | None = None
    # The client's W3C trace context: the session's trace continues it (docs/observability.md#traces).
    traceparent: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `text` nests arrays and objects deeper than `limit`, found without parsing it: a count
    of brackets rules out almost every frame; otherwise strings are cut out (their brackets do not
    nest) and only the brackets are walked, one step per bracket."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for bracket in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def parse_control(text: str) -> dict[str, Any]:
    """JSON object with a string `type`, or ProtocolError."""
    too_deep = ProtocolError(ErrorCode.JSON_TOO_DEEP, f"control frame nests deeper than {MAX_JSON_DEPTH} levels")
    if json_depth_exceeds(text):
        raise too_deep
    try:
        msg = json.loads(text)
    except RecursionError:  # the scan above makes this unreachable; kept so a parser change cannot crash
        raise too_deep from None
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"control frame is not valid JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "control frame must be a JSON object with a string 'type'")
    return msg


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError(ErrorCode.INVALID_START, f"start.{key} has the wrong type")
    return value


def parse_start(msg: dict[str, Any], new_flow_id: str) -> StartRequest:
    """Validate a `start` frame (SPEC §2); `new_flow_id` is used when the client gives none."""
    flow_id = msg.get("flowId")
    if flow_id is None or flow_id == "":
        flow_id = new_flow_id
    if not valid_flow_id(flow_id):
        raise ProtocolError(
            ErrorCode.INVALID_FLOW_ID, "flowId must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ without '..'"
        )
    audio = _field(msg, "audio", dict, {})
    codec = _field(audio, "codec", str, CODEC)
    if codec != CODEC:
        raise ProtocolError(ErrorCode.UNSUPPORTED_CODEC, f"audio.codec {codec!r} is not supported; use {CODEC!r}")
    sr = _field(audio, "sr", int, SAMPLE_RATE)
    if sr != SAMPLE_RATE:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_SAMPLE_RATE, f"audio.sr {sr} is not supported; resample to {SAMPLE_RATE}"
        )
    channels = _field(audio, "channels", int, CHANNELS)
    if channels != CHANNELS:
        raise ProtocolError(ErrorCode.UNSUPPORTED_CHANNELS, f"audio.channels {channels} is not supported; send mono")
    chunk_ms = _field(audio, "chunk_ms", int, 20)
    if not 1 <= chunk_ms <= 10_000:
        raise ProtocolError(ErrorCode.INVALID_START, "audio.chunk_ms must be between 1 and 10000")
    ret = _field(msg, "return", list, list(DEFAULT_RETURN))
    if len(ret) > MAX_RETURN_ENTRIES:
        raise ProtocolError(ErrorCode.INVALID_START, f"return has more than {MAX_RETURN_ENTRIES} entries")
    unknown = [r for r in ret if r not in EVENT_FAMILIES]
    if unknown:
        raise ProtocolError(
            ErrorCode.INVALID_START, f"return has unknown families {unknown[:5]!r}; known: {list(EVENT_FAMILIES)}"
        )
    hints = _field(msg, "hints", dict, {})
    domain = _field(hints, "domain", str, "default")
    if len(domain) > MAX_DOMAIN_CHARS or not domain.isprintable():
        raise ProtocolError(
            ErrorCode.INVALID_START, f"hints.domain must be printable and at most {MAX_DOMAIN_CHARS} characters"
        )
    lang_pref = _field(hints, "user_lang_pref", str, "auto")
    if not LANG_PREF_RE.match(lang_pref):
        raise ProtocolError(ErrorCode.INVALID_START, "hints.user_lang_pref must be 'auto' or a language code")
    hotwords = _hotwords(_field(hints, "hotwords", list, []))
    endpointing_ms, vad_endpoints = _endpointing(msg.get("endpointing"))
    auth = _field(msg, "auth", dict, {})
    token = _field(auth, "token", str, None)
    if token is not None and len(token) > MAX_TOKEN_CHARS:
        raise ProtocolError(ErrorCode.INVALID_START, f"auth.token is longer than {MAX_TOKEN_CHARS} characters")
    resume = _resume(msg, bool(msg.get("flowId")))
    traceparent = _field(msg, "traceparent", str, None)
    if traceparent is not None and (len(traceparent) > TRACEPARENT_CHARS or not TRACEPARENT_RE.match(traceparent)):
        raise ProtocolError(
            ErrorCode.INVALID_START, "traceparent must be a W3C trace context: 00-<32 hex>-<16 hex>-<2 hex>"
        )
    return StartRequest(
        flow_id=flow_id,
        returns=frozenset(ret),
        domain=domain,
        lang_pref=lang_pref,
        chunk_ms=chunk_ms,
        hotwords=hotwords,
        token=token,
        endpointing_ms=endpointing_ms,
        vad_endpoints=vad_endpoints,
        resume=resume,
        traceparent=traceparent,
    )


def _resume(msg: dict[str, Any], has_flow_id: bool) -> ResumeRequest | None:
    """`start.resume`: `{"last_seq": N, "audio_s": T}`, integers and seconds >= 0, with a `flowId`."""
    raw = _field(msg, "resume", dict, None)
    if raw is None:
        return None
    if not has_flow_id:
        raise ProtocolError(ErrorCode.INVALID_START, "resume needs the flowId of the session to resume")
    last_seq = _field(raw, "last_seq", int, 0)
    audio_s = _field(raw, "audio_s", (int, float), 0.0)
    if isinstance(audio_s, bool) or last_seq < 0 or not 0 <= audio_s < 1e9:
        raise ProtocolError(ErrorCode.INVALID_START, "resume.last_seq and resume.audio_s must be numbers >= 0")
    return ResumeRequest(last_seq=last_seq, audio_s=float(audio_s))


def valid_flow_id(flow_id: object) -> bool:
    """The flowId rule: the charset and length of FLOW_ID_RE, and no `..` anywhere (a flowId names
    files and object keys: no parent-directory or dot-only names; the first character already
    rules out `.` and `-` prefixes)."""
    return isinstance(flow_id, str) and FLOW_ID_RE.match(flow_id) is not None and ".." not in flow_id


def _endpointing(raw: object) -> tuple[int | None, bool]:
    """`start.endpointing`: absent, null or true (the VAD's default), false (no VAD endpoints), or
    the silence in ms that ends an utterance, within MIN/MAX_ENDPOINTING_MS."""
    if raw is None or raw is True:
        return None, True
    if raw is False:
        return None, False
    if not isinstance(raw, int) or not MIN_ENDPOINTING_MS <= raw <= MAX_ENDPOINTING_MS:
        raise ProtocolError(
            ErrorCode.INVALID_START,
            f"endpointing must be false, true or milliseconds between {MIN_ENDPOINTING_MS} and {MAX_ENDPOINTING_MS}",
        )
    return raw, True


def _hotwords(raw: list[Any]) -> tuple[str, ...]:
    """`hints.hotwords`, bounded: they end up in the engine's prompt (MAX_HOTWORDS* above)."""
    if len(raw) > MAX_HOTWORDS:
        raise ProtocolError(ErrorCode.INVALID_START, f"hints.hotwords has more than {MAX_HOTWORDS} entries")
    if not all(isinstance(h, str) for h in raw):
        raise ProtocolError(ErrorCode.INVALID_START, "hints.hotwords must be a list of strings")
    words = tuple(h.strip() for h in raw)
    if any(not w or len(w) > MAX_HOTWORD_CHARS or not w.isprintable() for w in words):
        raise ProtocolError(
            ErrorCode.INVALID_START,
            f"each of hints.hotwords must be printable text of 1..{MAX_HOTWORD_CHARS} characters",
        )
    if sum(len(w) for w in words) > MAX_HOTWORDS_TOTAL_CHARS:
        raise ProtocolError(
            ErrorCode.INVALID_START, f"hints.hotwords hold more than {MAX_HOTWORDS_TOTAL_CHARS} characters in all"
        )
    return words


def error_event(flow_id: str | None, code: ErrorCode, message: str, fatal: bool) -> dict[str, Any]:
    return {"type": "error", "flowId": flow_id, "code": code.value, "message": message, "fatal": fatal}
