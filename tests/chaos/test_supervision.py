"""The local stack supervises its children as Kubernetes would (issue 11, item 2): a service or the
gateway that dies is started again on the same ports after its backoff, and the exit is logged; the
gateway's `/readyz` stays ready while a side path is down, which `/healthz` and `orchestrator_stage_up`
show instead."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.client import load_wav, stream_pcm
from devtools.restarts import RestartPolicy
from devtools.stack import Stack
from tests.poll import seconds, wait_for

pytestmark = pytest.mark.chaos


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=seconds(5)) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def stage_up(stack: Stack, stage: str) -> float | None:
    with urllib.request.urlopen(stack.http_base + "/metrics", timeout=seconds(5)) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f'orchestrator_stage_up{{stage="{stage}"}}'):
                return float(line.split()[-1])
    return None


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Stack]:
    env = {"LOG_LEVEL": "WARNING", "STORAGE_BACKEND": "local"}
    policy = RestartPolicy(first_s=3.0, factor=2.0, cap_s=10.0, stable_s=60.0)
    with Stack(("vad", "compress"), env=env, workdir=tmp_path, supervise=True, restart_policy=policy) as stack:
        yield stack


def test_a_killed_service_comes_back_on_its_ports(supervised: Stack, clips: Path) -> None:
    stack = supervised
    vad = stack.running["vad"]
    wait_for(lambda: get_json(stack.http_base + "/healthz")[1]["status"] == "ok", 15, "every stage up")
    vad.proc.kill()
    # Down: the gateway stays ready (a session is served without VAD) but says it is degraded.
    wait_for(lambda: get_json(stack.http_base + "/healthz")[1]["stages"]["vad"] is False, 10, "vad seen down")
    assert get_json(stack.http_base + "/healthz")[1]["status"] == "degraded"
    status, body = get_json(stack.http_base + "/readyz")
    assert status == 200 and body["ready"] is True and body["stages"]["vad"] is False
    assert stage_up(stack, "vad") == 0.0
    # Back, on the same ports, after the first backoff.
    wait_for(lambda: stack.restarts.get("vad") == 1, 60, "vad restarted")
    again = stack.running["vad"]
    assert again.proc.pid != vad.proc.pid and again.grpc_port == vad.grpc_port
    assert stack.exits == [("vad", -9)]
    wait_for(lambda: get_json(stack.http_base + "/healthz")[1]["status"] == "ok", 15, "healthy again")
    assert stage_up(stack, "vad") == 1.0
    pcm = load_wav(clips / "en" / "hello_world.wav")
    start = {"flowId": "after-restart", "return": ["vad", "record_url"]}
    result = asyncio.run(stream_pcm(stack.url, pcm, speed=0, start=start, token=stack.token()))
    assert result.of_type("vad") and not result.of_type("error") and result.events[-1]["type"] == "end"


def test_a_killed_gateway_comes_back_on_its_port(supervised: Stack, clips: Path) -> None:
    stack = supervised
    gateway = stack.running["gateway"]
    url = stack.url
    gateway.proc.kill()
    wait_for(lambda: stack.restarts.get("gateway") == 1, 60, "gateway restarted")
    assert stack.url == url and stack.exits == [("gateway", -9)]
    assert gateway.proc.poll() is not None  # reaped: no zombie left behind
    wait_for(lambda: get_json(stack.http_base + "/readyz")[0] == 200, 15, "ready again")
    pcm = load_wav(clips / "en" / "hello_world.wav")
    result = asyncio.run(stream_pcm(url, pcm, speed=0, start={"return": ["record_url"]}, token=stack.token()))
    assert result.of_type("record_url") and result.events[-1]["type"] == "end"
