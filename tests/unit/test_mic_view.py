"""speechgw-mic without sockets: the terminal view (partials in place, finals on their own lines) and
the file stand-in for a device."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest

from devtools.mic import CLEAR_LINE, JsonView, LiveView, WavSource
from speechgw_client import load_audio, parse_event

pytestmark = pytest.mark.unit


def event(kind: str, **fields: Any) -> Any:
    return parse_event({"type": kind, "flowId": "f", "seq": 1, **fields})


def test_partials_rewrite_the_line_and_finals_take_their_own() -> None:
    out, err = io.StringIO(), io.StringIO()
    view = LiveView(out, err, in_place=True, width=40)
    view.show(event("lid", lang="en", score=0.91, source="lid"))
    view.show(event("asr_partial", text="the quick", ts=[0, 1]))
    view.show(event("asr_partial", text="the quick brown", ts=[0, 1.5]))
    view.show(event("asr_final", text=" The quick brown fox. ", ts=[0.25, 2], lang="en"))
    view.show(event("asr_partial", text="x" * 60, ts=[2, 3]))
    view.show(event("asr_final", text="", ts=[2, 3], lang="en", from_finalize=True))
    view.show(event("end", reason="flush", audio_s=3.0))
    assert out.getvalue() == (
        f"{CLEAR_LINE}the quick{CLEAR_LINE}the quick brown{CLEAR_LINE}[   0.25] The quick brown fox.\n"
        f"{CLEAR_LINE}…{'x' * 35}{CLEAR_LINE}"
    )
    assert err.getvalue() == "language: en (0.91, lid)\nend (flush): 3.0 s of audio\n"


def test_without_a_terminal_only_finals_are_printed() -> None:
    out, err = io.StringIO(), io.StringIO()
    view = LiveView(out, err, in_place=False, width=80)
    view.show(event("asr_partial", text="the quick", ts=[0, 1]))
    view.show(event("asr_final", text="The quick brown fox.", ts=[0, 2], lang="en"))
    view.show(event("error", code="asr_unavailable", message="busy", fatal=False))
    assert out.getvalue() == "[   0.00] The quick brown fox.\n"
    assert err.getvalue() == "error asr_unavailable: busy\n"


def test_json_view_prints_each_message_as_received_and_notes_apart() -> None:
    out, err = io.StringIO(), io.StringIO()
    view = JsonView(out, err)
    view.show(event("vad", event="speech_start", ts=0.5, extra=1))
    view.note("connection lost; resumed flow f: audio from 1.00 s")
    expected = '{"type": "vad", "flowId": "f", "seq": 1, "event": "speech_start", "ts": 0.5, "extra": 1}\n'
    assert out.getvalue() == expected
    assert err.getvalue() == "connection lost; resumed flow f: audio from 1.00 s\n"


def test_the_file_source_yields_the_whole_file_in_blocks_and_stops_when_told(clips: Path) -> None:
    path = clips / "en" / "hello_world.wav"

    async def collect(source: WavSource, stop_after: int | None = None) -> list[bytes]:
        blocks = []
        async for block in source.blocks():
            blocks.append(block)
            if stop_after is not None and len(blocks) == stop_after:
                source.stop()
        return blocks

    whole = asyncio.run(collect(WavSource(path, block_ms=40, realtime=False)))
    assert b"".join(whole) == load_audio(path) and {len(b) for b in whole[:-1]} == {1280}
    assert len(asyncio.run(collect(WavSource(path, block_ms=40, realtime=False), stop_after=3))) == 3
