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
    INTERNAL_ERROR = "internal_error"
    # Non-fatal: the session goes on.
    ODD_BYTE_COUNT = "odd_byte_count"
    AUDIO_AFTER_FLUSH = "audio_after_flush"
    VAD_UNAVAILABLE = "vad_unavailable"
    DENOISE_UNAVAILABLE = "denoise_unavailable"
    LID_UNAVAILABLE = "lid_unavailable"
    ASR_UNAVAILABLE = "asr_unavailable"
    ARCHIVE_UNAVAILABLE = "archive_unavailable"


FATAL_CLOSE: dict[ErrorCode, Close] = {
    ErrorCode.INVALID_JSON: Close.PROTOCOL_ERROR,
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
    ErrorCode.INTERNAL_ERROR: Close.INTERNAL_ERROR,
}


class ProtocolError(Exception):
    """Bad client input, carrying its stable code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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
    extra: dict[str, Any] = field(default_factory=dict)


def parse_control(text: str) -> dict[str, Any]:
    """JSON object with a string `type`, or ProtocolError."""
    try:
        msg = json.loads(text)
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
    if not isinstance(flow_id, str) or not FLOW_ID_RE.match(flow_id):
        raise ProtocolError(ErrorCode.INVALID_FLOW_ID, "flowId must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
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
    unknown = [r for r in ret if r not in EVENT_FAMILIES]
    if unknown:
        raise ProtocolError(
            ErrorCode.INVALID_START, f"return has unknown families {unknown}; known: {list(EVENT_FAMILIES)}"
        )
    hints = _field(msg, "hints", dict, {})
    hotwords = _field(hints, "hotwords", list, [])
    if not all(isinstance(h, str) for h in hotwords):
        raise ProtocolError(ErrorCode.INVALID_START, "hints.hotwords must be a list of strings")
    auth = _field(msg, "auth", dict, {})
    return StartRequest(
        flow_id=flow_id,
        returns=frozenset(ret),
        domain=_field(hints, "domain", str, "default"),
        lang_pref=_field(hints, "user_lang_pref", str, "auto"),
        chunk_ms=chunk_ms,
        hotwords=tuple(hotwords),
        token=_field(auth, "token", str, None),
    )


def error_event(flow_id: str | None, code: ErrorCode, message: str, fatal: bool) -> dict[str, Any]:
    return {"type": "error", "flowId": flow_id, "code": code.value, "message": message, "fatal": fatal}
