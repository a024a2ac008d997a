"""Coverage-guided fuzzing of the control-message parser with atheris (`make fuzz`; issue 10).

Each input is read as the UTF-8 text of one client text frame and goes through what the gateway does with
it: `parse_control`, `parse_start` for a `start`, and a fresh session's `receive_text`. A ProtocolError
with a code documented in docs/errors.md is the expected answer to bad input; any other exception, an
undocumented code, or a close code of 1011 is a finding (atheris stops and writes the input as
`crash-*` in the working directory).

    python -m tests.fuzz.fuzz_protocol -runs=200000 [-max_len=70000] [corpus_dir]

Not in `make test`: a useful run takes minutes. The hypothesis fuzzers (tests/unit/test_fuzz_session.py,
tests/integration/test_fuzz_gateway.py) are the deterministic part that runs in the suite.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from orchestrator.core.protocol import ProtocolError, parse_control, parse_start
    from orchestrator.core.session import Session, SessionConfig

from tests.protocol_inputs import CLIENT_CLOSE_CODES, documented_codes

CONFIG = SessionConfig(stages=())
CODES = documented_codes()


def one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")  # what the WebSocket layer hands over; it refuses the rest with 1007
    except UnicodeDecodeError:
        return
    try:
        msg = parse_control(text)
        if msg["type"] == "start":
            parse_start(msg, "gen")
    except ProtocolError as exc:
        if exc.code.value not in CODES:
            raise AssertionError(f"undocumented code {exc.code.value}") from exc
    session = Session(CONFIG, 0.0, "gen")
    session.receive_text(text, 0.0)
    for event in session.events_to_send():
        if event["type"] == "error" and event["code"] not in CODES:
            raise AssertionError(f"undocumented code {event['code']}")
    if session.close is not None and int(session.close[0]) not in CLIENT_CLOSE_CODES:
        raise AssertionError(f"close code {session.close}")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
