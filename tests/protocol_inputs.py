"""What a hostile client may send on /ws/stream, as hypothesis strategies (the fuzzers of issue 10), and
what the documentation promises back: the error codes of docs/errors.md and its close codes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from orchestrator.core.protocol import EVENT_FAMILIES

ERRORS_DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
# What a client may ever see as a close code; 1011 (internal error) is documented but must never happen.
CLIENT_CLOSE_CODES = {1000, 1002, 1003, 1007, 1008, 1009, 1013}


@cache
def documented_codes() -> frozenset[str]:
    """Every `code` in a table row of docs/errors.md."""
    return frozenset(re.findall(r"^\| `([a-z_]+)` \|", ERRORS_DOC.read_text(), re.M))


@cache
def documented_close_codes() -> frozenset[int]:
    section = ERRORS_DOC.read_text().split("## Close codes", 1)[1]
    return frozenset(int(c) for c in re.findall(r"^\| (\d{4}) \|", section, re.M))


@dataclass(frozen=True)
class Big:
    """A large frame as a recipe (`pattern` times `n`, between `head` and `tail`): hypothesis prints
    every step of a failing example, and a 50 kB literal there is useless."""

    pattern: str | bytes
    n: int
    head: str = ""
    tail: str = ""

    def build(self) -> str | bytes:
        if isinstance(self.pattern, bytes):
            return self.pattern * self.n
        return self.head + self.pattern * self.n + self.tail


Frame = str | bytes | Big


def wire(frame: Frame) -> str | bytes:
    """The frame as sent."""
    return frame.build() if isinstance(frame, Big) else frame


def _deep(levels: int, head: str = "", tail: str = "") -> Big:
    return Big("[", levels, head, "]" * levels + tail)


anything_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
flow_ids = st.one_of(
    st.sampled_from(["f1", "a.b", "a" + "." * 127, "a..b", "../x", "." * 128, "", "x" * 129, "f/1"]),
    st.text(max_size=12),
    anything_json,
)
hints = st.fixed_dictionaries(
    {},
    optional={
        "domain": st.one_of(st.sampled_from(["default", "medical", "d" * 65]), st.text(max_size=10), anything_json),
        "user_lang_pref": st.one_of(st.sampled_from(["auto", "en", "zh-TW", "klingon!"]), st.text(max_size=6)),
        "hotwords": st.one_of(
            st.lists(st.text(min_size=1, max_size=10), max_size=5),
            st.builds(lambda: ["w"] * 10_000),  # built, not a constant: a strategy's repr is printed too
            st.just(["x" * 49]),
            anything_json,
        ),
    },
)
audio = st.fixed_dictionaries(
    {},
    optional={
        "codec": st.sampled_from(["pcm_s16le", "opus", 7]),
        "sr": st.sampled_from([16000, 8000, "16000", True]),
        "channels": st.sampled_from([1, 2, None]),
        "chunk_ms": st.sampled_from([20, 0, 10_001, -5, 2.5]),
    },
)
starts = st.fixed_dictionaries(
    {"type": st.just("start")},
    optional={
        "flowId": flow_ids,
        "audio": st.one_of(audio, anything_json),
        "return": st.one_of(
            st.lists(st.sampled_from([*EVENT_FAMILIES, "telepathy"]), max_size=6), st.just(["asr"] * 17), anything_json
        ),
        "hints": st.one_of(hints, anything_json),
        "auth": st.one_of(
            st.fixed_dictionaries({"token": st.one_of(st.text(max_size=8), anything_json)}), anything_json
        ),
    },
).map(json.dumps)
# A valid start that asks for `metrics` and `record_url`, so a fuzzer can follow a session to its end.
GOOD_START = json.dumps({"type": "start", "flowId": "fuzz", "return": ["record_url", "metrics"]})

control_texts = st.one_of(
    st.just(GOOD_START),
    starts,
    st.just('{"type":"flush"}'),
    st.sampled_from(['{"type":"keepalive"}', '{"type":"finalize"}']),
    st.sampled_from(['{"type":"stop"}', '{"type":7}', "[1,2]", "{nope", "", "null", '"start"', '{"type":"start"']),
    st.sampled_from([15, 17, 1000, 25_000]).map(_deep),
    st.sampled_from([10, 20_000]).map(lambda n: _deep(n, '{"type":"flush","x":', "}")),
    st.sampled_from([100, 30_000]).map(lambda n: Big("€", n, '{"type":"start","hints":{"domain":"', '"}}')),
    st.text(max_size=40),
    st.dictionaries(st.text(max_size=6), anything_json, max_size=3).map(json.dumps),
)
audio_frames = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([0, 1, 640, 641]).map(lambda n: Big(b"\x01", n)),
    st.integers(min_value=1, max_value=80_000).map(lambda n: Big(b"\x00", n)),  # around and over the frame limit
)


def frame_kinds(event: dict[str, Any]) -> str:
    return str(event.get("code") or event["type"])
