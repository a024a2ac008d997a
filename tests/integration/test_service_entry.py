"""Every process starts through `common.service`: a bad variable exits 2 with one log line naming it
and no traceback; SIGTERM drains and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import seconds

pytestmark = pytest.mark.integration

# One bad variable per process, each of a different kind (number, enum, boolean, range, port).
BAD = [
    ("services.vad", "VAD_THRESHOLD", "loud"),
    ("services.denoise", "DENOISE_ENGINE", "speex"),
    ("services.lid", "LID_CONFIDENCE", "1.5"),
    ("services.asr", "ASR_MAX_SESSIONS", "many"),
    ("services.compress", "COMPRESS_GRPC_PORT", "70000"),
    ("orchestrator", "ENABLE_VAD", "sometimes"),
    ("services.vad", "LOG_LEVEL", "chatty"),
]


def run_module(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=seconds(120),
        check=False,
    )


@pytest.mark.parametrize(("module", "var", "value"), BAD, ids=[f"{m}-{v}" for m, v, _ in BAD])
def test_a_bad_variable_exits_2_with_one_line_naming_it(module: str, var: str, value: str) -> None:
    proc = run_module(module, **{var: value})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "listening" not in proc.stdout
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    errors = [e for e in lines if e["level"] == "error"]
    assert len(errors) == 1, proc.stderr
    assert errors[0]["err_code"] == "config_invalid"
    assert var in errors[0]["msg"], errors[0]


def test_sigterm_drains_and_exits_0() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "tests.fakes", "vad"],
        env={**os.environ, "FAKE_GRACE_S": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            listening = json.loads(proc.stdout.readline())
            assert listening["event"] == "listening"
            url = f"http://127.0.0.1:{listening['http_port']}/healthz"
            with urllib.request.urlopen(url, timeout=seconds(5)) as resp:
                assert json.loads(resp.read())["status"] == "ok"
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=seconds(30))
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(line).get("event") for line in err.splitlines() if line.startswith("{")]
    assert events.index("serving") < events.index("draining")
