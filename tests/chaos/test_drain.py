"""SIGTERM to the gateway of the real stack under 50 live real-time sessions (issue 11, item 5).

Half the sessions are short and end by themselves within DRAIN_GRACE_SEC; the other half stream on
and are ended by the gateway (`end` with `reason: "shutdown"`, close 1001). Every session gets its
`end` and its `record_url`, and every second the gateway accepted is in the archive: the stored
object, decoded, lasts what `end.audio_s` says, within one 20 ms frame. Meanwhile `/readyz` answers
503 and a new session is refused with `server_draining` (1013); the gateway then exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from devtools.client import StreamResult, load_wav, stream_pcm
from devtools.stack import Stack
from speechgw_client import Event
from tests.poll import seconds
from tests.records import decoded_s, fetch

pytestmark = pytest.mark.chaos
SESSIONS = 50
SHORT_S, LONG_S = 2.0, 12.0
FRAME_S = 0.02


def test_sigterm_drains_fifty_live_sessions(tmp_path: Path, clips: Path) -> None:
    env = {
        "LOG_LEVEL": "WARNING",
        "STORAGE_BACKEND": "local",
        "DRAIN_GRACE_SEC": str(seconds(4)),
        "STAGE_TIMEOUT_SEC": "10",
        "FLUSH_IDLE_SEC": "10",
    }
    clip = load_wav(clips / "en" / "counting.wav")
    pcm = (clip * 5)[: int(LONG_S * 32000)]
    with Stack(("vad", "compress"), env=env, workdir=tmp_path) as stack:
        gateway = stack.running["gateway"]
        token = stack.token()

        async def scenario() -> tuple[list[StreamResult], StreamResult, int, float]:
            acked = 0
            all_acked = asyncio.Event()

            def on_event(event: Event) -> None:
                nonlocal acked
                if event.type == "ack":
                    acked += 1
                    if acked == SESSIONS:
                        all_acked.set()

            def session(i: int) -> asyncio.Task[StreamResult]:
                audio = pcm[: int(SHORT_S * 32000)] if i % 2 == 0 else pcm
                start = {"flowId": f"drain-{i:02d}", "return": ["record_url", "metrics", "vad"]}
                return asyncio.create_task(
                    stream_pcm(stack.url, audio, speed=1.0, chunk_ms=100, start=start, on_event=on_event, token=token)
                )

            tasks = [session(i) for i in range(SESSIONS)]
            await asyncio.wait_for(all_acked.wait(), seconds(30))
            sigterm_at = time.monotonic()
            gateway.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            ready_status, _ = await asyncio.to_thread(fetch, stack.http_base + "/readyz")
            late = await stream_pcm(stack.url, pcm[:3200], speed=0, start={"flowId": "drain-late"}, token=token)
            results = await asyncio.wait_for(asyncio.gather(*tasks), seconds(60))
            return results, late, ready_status, sigterm_at

        results, late, ready_status, sigterm_at = asyncio.run(scenario())
        exit_code = gateway.proc.wait(seconds(30))
        drained_s = time.monotonic() - sigterm_at

        assert ready_status == 503
        assert [e["code"] for e in late.of_type("error")] == ["server_draining"] and late.close_code == 1013
        assert exit_code == 0
        reasons: dict[str, int] = {}
        given_up = 0
        for i, result in enumerate(results):
            end = result.events[-1]
            assert end["type"] == "end", f"session {i} got no end: {result.events[-3:]}"
            reasons[end["reason"]] = reasons.get(end["reason"], 0) + 1
            expected = ("flush", 1000) if i % 2 == 0 else ("shutdown", 1001)
            assert (end["reason"], result.close_code) == expected, f"session {i}"
            # A VAD still behind when the gateway cannot wait longer is given up (the events say so);
            # nothing else may fail.
            codes = {e["code"] for e in result.of_type("error")}
            assert codes <= {"vad_unavailable"}, f"session {i}: {result.of_type('error')}"
            given_up += bool(codes)
            (record,) = result.of_type("record_url")
            status, data = fetch(record["url"])
            assert status == 200
            stored_s = decoded_s(data)
            accepted_s = end["audio_s"]
            assert abs(stored_s - accepted_s) <= FRAME_S, f"session {i}: stored {stored_s}, accepted {accepted_s}"
            if i % 2 == 0:
                assert end["audio_s"] == SHORT_S  # the short ones, all of their audio
            else:
                assert 1.0 < end["audio_s"] < LONG_S  # cut where the gateway stopped
        print(
            f"\n{SESSIONS} sessions: ends {reasons}, VAD given up in {given_up}; "
            f"drained and exited {drained_s:.1f} s after SIGTERM"
        )
