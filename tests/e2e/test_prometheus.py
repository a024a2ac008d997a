"""A real Prometheus scrapes every process of the running stack while a few sessions stream, and every
PromQL expression of every dashboard panel and rule of deploy/observability/ evaluates without error and
returns data. Expressions that are empty on a healthy stack say why (`exempt` in devtools/observability.py):
alerts (their `signal`, the series they compare with a threshold, must have data instead), the certificate
expiry (no TLS here), and series that appear only at their first error. One stack, three sessions in turn."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.client import StreamResult, load_wav, stream_pcm
from devtools.observability import expressions, records
from devtools.prometheus import Prometheus, PrometheusError, for_stack
from devtools.stack import Stack
from tests.poll import wait_for

pytestmark = pytest.mark.e2e

SERVICES = ("vad", "denoise", "lid", "asr.en", "compress")
CLIPS = ("en/quick_brown_fox.wav", "en/counting.wav", "en/hello_world.wav")


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Prometheus]]:
    work = tmp_path_factory.mktemp("observed")
    env = {"LOG_LEVEL": "WARNING", "ENABLE_DENOISE": "true"}
    with (
        Stack(SERVICES, env=env, workdir=work) as stack,
        for_stack(stack, work / "prometheus", scrape_interval="1s") as prom,
    ):
        yield stack, prom


def stream_sessions(stack: Stack, clips: Path) -> list[StreamResult]:
    """One after the other in real time: the data is the point here, not the load."""

    async def each() -> list[StreamResult]:
        start = {"return": ["vad", "lid", "asr", "record_url", "metrics"]}
        return [await stream_pcm(stack.url, load_wav(clips / c), speed=1.0, start=start) for c in CLIPS]

    return asyncio.run(each())


def has_number(result: list[dict[str, object]]) -> bool:
    return any(not math.isnan(float(sample["value"][1])) for sample in result)  # type: ignore[index]


def test_every_dashboard_and_rule_expression_evaluates_with_data(
    observed: tuple[Stack, Prometheus], clips: Path
) -> None:
    stack, prom = observed
    wait_for(lambda: len(prom.query("up == 1")) == len(stack.running), 20, "every process scraped")
    results = stream_sessions(stack, clips)
    # Every session streamed to its end; on a loaded machine one may lose its ASR (a non-fatal error).
    assert all(r.events and r.events[-1]["type"] == "end" for r in results), [r.events[-3:] for r in results]
    assert any(r.of_type("asr_final") for r in results), [r.events for r in results]

    # The sessions' end and their SLI observations have reached Prometheus, and the rules have run on them.
    ended = f'sum(orchestrator_session_outcomes_total{{reason="flush"}}) >= {len(CLIPS)}'
    wait_for(lambda: bool(prom.query(ended)), 20, "the sessions' ends scraped")
    for observed_first in ("orchestrator_first_partial_latency_ms_count", "orchestrator_final_lag_ms_count"):
        assert has_number(prom.query(f'sum({observed_first}{{pool="en"}}) > 0')), observed_first
    wait_for(lambda: all(prom.query(r.record) for r in records()), 20, "every recording rule evaluated")

    failures = []
    for e in expressions():
        try:
            result = prom.query(e.expr)
        except PrometheusError as exc:
            failures.append(f"{e.source}: {exc}: {e.expr}")
            continue
        if e.exempt is None:
            if not has_number(result):
                failures.append(f"{e.source}: no data: {e.expr} -> {result}")
            continue
        if e.signal is not None and not has_number(prom.query(e.signal)):
            failures.append(f"{e.source}: its signal has no data: {e.signal}")
    assert not failures, "\n".join(failures)
    firing = [a for a in prom.api("alerts")["alerts"] if a["state"] == "firing"]
    assert not firing, firing
