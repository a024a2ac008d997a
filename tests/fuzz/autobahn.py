"""The Autobahn WebSocket conformance cases against the gateway (`make autobahn`; issue 10), run by
`kosoku` (PyPI: the Autobahn TestSuite's case files driven by a native client, no Python 2 or Docker).

Two targets, both in this process on 127.0.0.1:0:

- `gateway`: the real `/ws/stream` endpoint of a gateway (one fake archive stage). It is not an echo
  server: a case that expects its message echoed gets an `error` event and a close instead (a text
  frame before `start` is a protocol error, 1002; so is binary audio before `start`). Such a case is
  *expected* to fail here, and only there; every other case must pass.
- `ws-layer`: the gateway's WebSocket layer exactly as the gateway sets it up
  (`orchestrator.gateway.websocket_options`) with an echo handler, so the echo cases check framing,
  fragmentation, UTF-8 validation, ping/pong and closing of the very same stack.

    python -m tests.fuzz.autobahn [--target gateway|ws-layer|both] [--cases '1.*' ...] [--out var/autobahn]

Prints one markdown table per target (behaviour counts per case group) and every case that did not
pass with its reason; reports (JSON and HTML) go under `--out`. Exit status 1 when a case fails that is
not an expected echo failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from kosoku import FailureError, run_fuzzingclient
from kosoku._report import write_reports
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from orchestrator.config import GatewayConfig, ListenConfig
from orchestrator.core.events import StageName
from orchestrator.gateway import Gateway, websocket_options
from tests.fakes import FakeStage

CONFIG = GatewayConfig(listen=ListenConfig(port=0))
# Close codes with which the gateway answers a message it cannot take before `start` (docs/errors.md).
GATEWAY_REFUSALS = {1002, 1007, 1009}
# Failures explained one by one in docs/security.md.
EXPLAINED = {
    "7.1.5": "websockets answers a close frame that interrupts a fragmented message with 1002 "
    "'incomplete fragmented message' instead of echoing 1000 (websockets/protocol.py); nothing is lost: "
    "the unfinished text frame could not be a control message, and the session flushes as on any disconnect",
}


@asynccontextmanager
async def gateway_endpoint() -> AsyncIterator[str]:
    gw = Gateway(CONFIG, stages=[FakeStage(StageName.COMPRESS)])
    await gw.start()
    try:
        yield f"ws://127.0.0.1:{gw.port}/ws/stream"
    finally:
        await gw.stop()


@asynccontextmanager
async def ws_layer_endpoint() -> AsyncIterator[str]:
    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):  # the cases close abnormally on purpose
            async for message in ws:
                await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, **websocket_options(CONFIG)) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws/stream"


TARGETS: dict[str, Callable[[], Any]] = {"gateway": gateway_endpoint, "ws-layer": ws_layer_endpoint}


def expects_echo(result: Any) -> bool:
    """The case passes only if the server echoes a message back."""
    return any(event and event[0] == "message" for outcome in result.expected.values() for event in outcome)


def verdict(target: str, result: Any) -> str:
    """`pass`; `echo` (the gateway is no echo server), `size` (a message over WS_MAX_MESSAGE_BYTES or
    MAX_FRAME_BYTES refused with its documented code), `explained` (EXPLAINED); or `fail`."""
    passed = result.behavior.value in ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED")
    if passed and result.behavior_close.value in ("OK", "INFORMATIONAL"):
        return "pass"
    if result.case_id in EXPLAINED:
        return "explained"
    performance = result.case_id.startswith("9.")  # echo of 64 KiB .. 16 MiB messages
    if performance and result.remote_close_code == 1009:
        return "size"
    if target == "gateway" and (expects_echo(result) or performance) and result.remote_close_code in GATEWAY_REFUSALS:
        return "echo"
    return "fail"


async def run(target: str, cases: list[str] | None, out: Path) -> int:
    async with TARGETS[target]() as url:
        try:
            results = await run_fuzzingclient(url, cases, concurrency=2)
        except FailureError as exc:
            results = exc.results
    write_reports(results, str(out / target))
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    problems = []
    for r in results:
        group = r.case_id.split(".")[0]
        groups[group][r.behavior.value] += 1
        v = verdict(target, r)
        groups[group][f"verdict:{v}"] += 1
        if v != "pass":
            problems.append((v, r))
    print(f"\n### {target} ({len(results)} cases)\n")
    print(
        "| group | cases | OK | NON-STRICT | INFORMATIONAL | UNIMPLEMENTED | FAILED "
        "| of which: not an echo server | size limit | explained | unexplained |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for group in sorted(groups, key=int):
        c = groups[group]
        total = sum(v for k, v in c.items() if not k.startswith("verdict:"))
        print(
            f"| {group} | {total} | {c['OK']} | {c['NON-STRICT']} | {c['INFORMATIONAL']} | {c['UNIMPLEMENTED']} "
            f"| {c['FAILED'] + c['ERROR']} | {c['verdict:echo']} | {c['verdict:size']} | {c['verdict:explained']} "
            f"| {c['verdict:fail']} |"
        )
    for v, r in problems:
        if v == "explained":
            print(f"- explained {r.case_id}: {EXPLAINED[r.case_id]}")
        if v == "fail":
            print(
                f"- FAIL {r.case_id}: {r.behavior.value}/{r.behavior_close.value}, close {r.remote_close_code} "
                f"{r.remote_close_reason!r}: {r.result} {r.result_close}"
            )
    return sum(1 for v, _ in problems if v == "fail")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=[*TARGETS, "both"], default="both")
    parser.add_argument("--cases", nargs="*", default=None, help="case ids or globs (default: the whole suite)")
    parser.add_argument("--out", type=Path, default=Path("var/autobahn"))
    args = parser.parse_args()
    targets = list(TARGETS) if args.target == "both" else [args.target]
    failures = sum(asyncio.run(run(t, args.cases, args.out)) for t in targets)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
