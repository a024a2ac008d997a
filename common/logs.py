"""JSON-lines logging with the SPEC §7 field names (ts, flowId, stage, seq, ... err_code)."""

from __future__ import annotations

import json
import logging
import sys
import time

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
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO") -> None:
    """Send JSON lines to stderr at `level`; idempotent. Processes call it once, through
    `common.service.main`, which reads `LOG_LEVEL`."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    logging.Formatter.converter = time.gmtime
