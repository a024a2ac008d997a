"""What tracing costs, in CPU time (docs/performance.md#tracing), measured apart from the capacity
benchmark so that a loaded machine's noise does not hide it:

1. the gateway's spans of one session (`SessionTrace`: session, ws.accept, start, two stage spans, one
   utterance with a partial and a final), exported by the real batch processor and OTLP/HTTP exporter
   to a receiver in this process (tests/otlp_sink.py): CPU µs per session, the export thread included;
2. the gRPC interceptors on a bidirectional stream (a real grpc.aio server and channel on 127.0.0.1,
   both in this process): CPU µs per call and per message, without interceptors, with the client's
   only (the gateway's side of a stage), and with both; rounds alternate and the least CPU of each
   mode is kept (the machine's other load only ever adds).

    python -m tests.perf.bench_tracing [--sessions 2000] [--calls 100] [--messages 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from common import tracing
from common.tracing import TracingConfig
from orchestrator.core.events import SpeechBoundary, StageName, Transcript
from orchestrator.core.session import Session, SessionConfig
from orchestrator.session_trace import SessionTrace
from tests.otlp_sink import OtlpSink


def one_session(i: int) -> None:
    session = Session(SessionConfig(stages=(StageName.VAD, StageName.COMPRESS)), 0.0, "gen")
    session.receive_text(json.dumps({"type": "start", "flowId": f"bench-{i}"}), 0.0)
    trace = SessionTrace()
    trace.started(session)
    trace.acknowledged(session)
    for name in (StageName.VAD, StageName.COMPRESS):
        with trace.stage(name):
            pass
    trace.on_event(SpeechBoundary("start", 0))
    trace.on_event(Transcript(False, "x", 0.0, 0.5, pool="en"))
    trace.on_event(Transcript(True, "x", 0.0, 1.0, "en", pool="en"))
    session.receive_disconnect(1.0)
    trace.closed(session)


def session_spans(sessions: int, sink: OtlpSink) -> dict[str, Any]:
    cpu0 = time.process_time()
    for i in range(sessions):
        one_session(i)
    assert tracing._provider is not None
    tracing._provider.force_flush()
    cpu = time.process_time() - cpu0
    spans = len(sink.snapshot())
    return {"sessions": sessions, "spans": spans, "cpu_us_per_session": round(cpu / sessions * 1e6, 1)}


def _echo_handler() -> grpc.GenericRpcHandler:
    async def echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for item in requests:
            yield item

    handler = grpc.stream_stream_rpc_method_handler(echo)  # bytes in, bytes out: no serializers
    return grpc.method_handlers_generic_handler("bench.Echo", {"Stream": handler})


async def stream_calls(calls: int, messages: int, mode: str) -> float:
    """CPU seconds for `calls` bidirectional calls of `messages` 100-byte messages each way; `mode`:
    `off`, `client` (the client interceptors only) or `both`."""
    traced = mode != "off"
    server = grpc.aio.server(interceptors=tracing.server_interceptors() if mode == "both" else [])
    server.add_generic_rpc_handlers((_echo_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    interceptors = tracing.client_interceptors() if traced else []
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors)
    method = channel.stream_stream("/bench.Echo/Stream")
    payload = b"x" * 100

    async def requests() -> AsyncIterator[bytes]:
        for _ in range(messages):
            yield payload

    cpu0 = time.process_time()
    for i in range(calls):
        with tracing.span("bench.call", flow_id=f"bench-{i}") if traced else _nothing():
            async for _ in method(requests()):
                pass
    cpu = time.process_time() - cpu0
    await channel.close()
    await server.stop(None)
    return cpu


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sessions", type=int, default=2000)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--messages", type=int, default=200, help="messages each way per call (a 20 s VAD stream: 200)")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    with OtlpSink() as sink:
        # A queue that holds every span of the run: none is dropped, so every export is paid for.
        config = TracingConfig(endpoint=sink.endpoint, batch_delay_ms=200, batch_queue_size=4 * 6 * args.sessions)
        tracing.setup_tracing("bench", config)
        print(json.dumps({"gateway_session_spans": session_spans(args.sessions, sink)}), flush=True)
        cpu: dict[str, list[float]] = {"off": [], "client": [], "both": []}
        for _ in range(args.rounds):  # alternated, so the machine's load falls on every mode alike
            for mode, runs in cpu.items():
                runs.append(asyncio.run(stream_calls(args.calls, args.messages, mode)))
        tracing.shutdown_tracing()
    best = {mode: min(runs) for mode, runs in cpu.items()}
    row: dict[str, Any] = {"calls": args.calls, "messages_each_way": args.messages}
    row |= {f"cpu_s_{mode}": [round(x, 3) for x in runs] for mode, runs in cpu.items()}
    for mode in ("client", "both"):
        extra = (best[mode] - best["off"]) / args.calls
        row[f"{mode}_cpu_us_per_call_extra"] = round(extra * 1e6, 1)
        row[f"{mode}_cpu_us_per_message_extra"] = round(extra / args.messages * 1e6, 2)
    print(json.dumps({"grpc_stream": row}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
