"""JSON-lines logging with the SPEC §7 field names (ts, flowId, stage, seq, ... err_code), one setup for
every process (`common.service.main` calls `setup_logging`); docs/observability.md#logs.

One JSON object per line. `ts`, `level`, `logger` and `msg` are always there; the SPEC §7 fields only
when the line has them (passed through `extra={...}`). While tracing is on, a line logged under a span
also carries `trace_id` and `span_id`, and the flowId of the span's context when the line names none.
Never log audio, tokens or transcript text: lines carry sizes, codes and timings only.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

from common import tracing

# Log fields of SPEC §7; pass them through `extra={...}`.
FIELDS = (
    "flowId",
    "stage",
    "seq",
    "sr",
    "ns",
    "bytes_in",
    "bytes_out",
    "lang",
    "model",
    "latency_ms",
    "err_code",
    "asr_link_codec",
    "event",
    "trace_id",  # a line about a whole traced session names its trace (the `session closed` line)
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if tracing.enabled():
            ids = tracing.current_ids()
            if ids is not None:
                out["trace_id"], out["span_id"] = ids
                if "flowId" not in out:
                    flow_id = tracing.current_flow_id()
                    if flow_id is not None:
                        out["flowId"] = flow_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class NoWireDebug(logging.Filter):
    """Drops the DEBUG lines of the WebSocket library: they print the handshake's headers (the
    `Authorization` token, the `bearer.` subprotocol) and the start of every frame (the `start`
    frame's token, audio bytes). Its INFO lines and above (connection closed, ...) stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG or not record.name.startswith("websockets")


def json_handler(stream: TextIO) -> logging.Handler:
    """The one handler of every process: JSON lines, without the wire's DEBUG lines."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(NoWireDebug())
    return handler


def setup_logging(level: str = "INFO") -> None:
    """Send JSON lines to stderr at `level`; idempotent. Processes call it once, through
    `common.service.main`, which reads `LOG_LEVEL`."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    root.handlers[:] = [json_handler(sys.stderr)]
    logging.Formatter.converter = time.gmtime
