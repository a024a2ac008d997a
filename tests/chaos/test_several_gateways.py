"""Two gateways behind nginx on one shared PostgreSQL job store (issue 13 item 4), all real processes
on loopback: three ASR members (pocketsphinx, two sessions each, no queue: a full pool sends a session
to record-only), the archive, PostgreSQL (devtools/postgres.py) and nginx (devtools/nginx.py).

40 real-time sessions in two waves of 20. The first wave is spread over both gateways and overflows
the pool, so both queue deferred jobs. Gateway A is killed with SIGKILL while it runs one of them (its
lease is in the store). The second wave goes through nginx to B only (A refuses connections: nginx
tries B). B finishes every job, A's running one once A's lease runs out. A replacement gateway on A's
port and B both read every transcript; every session got its `record_url` and `end`, and every one
got its words: live, or as a deferred transcript."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devtools.client import StreamResult, load_wav, stream_pcm
from devtools.devauth import with_dev_keys
from devtools.launcher import RunningService, launch
from devtools.nginx import NginxProxy
from devtools.postgres import PostgresServer
from devtools.stack import LOOPBACK_LIMITS
from tests.poll import seconds, wait_for
from tests.records import get_transcript

pytestmark = pytest.mark.chaos
CLIPS = ("hello_world", "quick_brown_fox", "counting")
WAVE = 20
LEASE_S = 4


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    pg: PostgresServer
    nginx: NginxProxy
    gateways: dict[str, RunningService]
    services: list[RunningService]

    def gateway_env(self, port: int = 0) -> dict[str, str]:
        return {**self.env, "GATEWAY_PORT": str(port)}

    def start_gateway(self, name: str, port: int = 0) -> RunningService:
        gw = launch(name, [sys.executable, "-m", "orchestrator"], env=self.gateway_env(port), timeout_s=seconds(120))
        self.gateways[name] = gw
        return gw

    def jobs(self) -> list[tuple[str, str, str]]:
        """(flowId, status, owner) of every job in the shared store."""
        return [(f, s, o) for f, s, o, _ in self.job_rows()]

    def job_rows(self) -> list[tuple[str, str, str, str]]:
        """(flowId, status, owner, attempts/waits/last error) of every job in the shared store."""
        with psycopg.connect(self.env["JOBS_STORE_URL"], autocommit=True) as conn:
            rows = conn.execute(
                "SELECT flow_id, status, owner, attempts || '/' || waits || ' ' || last_error "
                "FROM speechgw_jobs ORDER BY flow_id"
            ).fetchall()
        return [(str(f), str(s), str(o), str(e)) for f, s, o, e in rows]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    pg = PostgresServer()
    services: list[RunningService] = []
    gateways: dict[str, RunningService] = {}
    nginx: NginxProxy | None = None
    try:
        pg.start()
        base = with_dev_keys(
            {
                "LOG_LEVEL": "ERROR",  # record-only sessions are expected here: no warning per session
                "STORAGE_BACKEND": "local",
                "COMPRESS_STORE_DIR": str(tmp_path / "records"),
                "COMPRESS_SPOOL_DIR": str(tmp_path / "spool"),
            }
        )
        services.append(launch("compress", env=base, timeout_s=seconds(120)))
        asr_env = {**base, "ASR_ENGINE": "sphinx", "ASR_LANG": "en", "ASR_MAX_SESSIONS": "2", "ASR_QUEUE": "0"}
        for i in range(3):
            services.append(
                launch(f"asr-{i}", [sys.executable, "-m", "services.asr"], env=asr_env, timeout_s=seconds(120))
            )
        env = {
            **LOOPBACK_LIMITS,
            **base,
            "COMPRESS_ADDR": services[0].grpc_addr,
            "ASR_ADDR": ",".join(s.grpc_addr for s in services[1:]),
            "ASR_ADMISSION_WAIT_SEC": "0",  # a full pool sends the session to record-only at once
            "JOBS_STORE_URL": pg.create_schema("cluster"),
            "JOBS_CONCURRENCY": "3",
            "JOBS_LEASE_SEC": str(LEASE_S),
            "JOBS_POLL_SEC": "0.5",
            "JOBS_CAPACITY_POLL_SEC": "0.2",
            "JOBS_WAIT_CAP_SEC": "1",
            "DRAIN_GRACE_SEC": "1",
        }
        cluster = Cluster(tmp_path, env, pg, NginxProxy(tmp_path / "nginx", []), gateways, services)
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(cluster.start_gateway, ("gw-a", "gw-b")))
        nginx = NginxProxy(tmp_path / "nginx", [f"127.0.0.1:{g.http_port}" for g in gateways.values()])
        nginx.start()
        cluster.nginx = nginx
        yield cluster
    finally:
        if nginx is not None:
            nginx.stop()
        for svc in [*gateways.values(), *services]:
            svc.stop()
        pg.stop()


async def wave(url: str, clips: Path, first: int) -> list[StreamResult]:
    """WAVE sessions at once, real-time pacing, flowIds sg-<n> passed in the URL too (nginx's log)."""
    pcm = {name: load_wav(clips / "en" / f"{name}.wav") for name in CLIPS}

    async def one(n: int) -> StreamResult:
        flow_id = f"sg-{n:02d}"
        return await stream_pcm(
            f"{url}?flow={flow_id}",
            pcm[CLIPS[n % len(CLIPS)]],
            speed=1.0,
            start={"flowId": flow_id, "return": ["asr", "record_url"]},
            open_timeout_s=seconds(20),
        )

    return list(await asyncio.gather(*(one(n) for n in range(first, first + WAVE))))


def words(events: list[dict[str, Any]]) -> str:
    return " ".join(e["text"] for e in events if e["type"] == "asr_final").strip()


def record_only(events: list[dict[str, Any]]) -> bool:
    return any(e["type"] == "error" and e.get("mode") == "record_only" for e in events)


def test_two_gateways_one_store_survive_a_killed_gateway(cluster: Cluster, clips: Path) -> None:
    a, b = cluster.gateways["gw-a"], cluster.gateways["gw-b"]
    addr_a, addr_b = f"127.0.0.1:{a.http_port}", f"127.0.0.1:{b.http_port}"
    results = asyncio.run(wave(cluster.nginx.ws_url, clips, 0))
    wait_for(lambda: len(cluster.nginx.access_log()) >= WAVE, 10, "nginx's log of the first wave")
    served = {uri.split("flow=")[1]: ups for uri, ups, status in cluster.nginx.access_log() if "flow=" in uri}
    first = [served[f"sg-{n:02d}"][-1] for n in range(WAVE)]
    assert min(first.count(addr_a), first.count(addr_b)) >= WAVE // 4, first  # spread over both
    deferred = {f"sg-{n:02d}" for n, r in enumerate(results) if record_only(r.events)}
    assert len(deferred) >= 4, "the pool of 3 x 2 sessions did not overflow"

    # Kill A while it runs a deferred job: that job holds A's lease in the shared store.
    owner_a = f":{a.proc.pid}:"
    wait_for(lambda: any(s == "running" and owner_a in o for _, s, o in cluster.jobs()), 60, "a job running on A")
    a.proc.kill()
    a.proc.wait()
    held = [f for f, s, o in cluster.jobs() if s == "running" and owner_a in o]
    left = [f for f, s, _ in cluster.jobs() if s in ("pending", "running")]
    assert held, "A's running job finished before the kill"

    results += asyncio.run(wave(cluster.nginx.ws_url, clips, WAVE))
    wait_for(lambda: len(cluster.nginx.access_log()) >= 2 * WAVE, 10, "nginx's log of the second wave")
    later = [
        ups for uri, ups, _ in cluster.nginx.access_log() if any(f"sg-{n:02d}" in uri for n in range(WAVE, 2 * WAVE))
    ]
    assert len(later) == WAVE and all(ups[-1] == addr_b for ups in later), later  # nginx: B only
    deferred |= {f"sg-{n:02d}" for n, r in enumerate(results) if n >= WAVE and record_only(r.events)}

    try:
        wait_for(lambda: all(s == "done" for _, s, _ in cluster.jobs()), 120, "every deferred job done")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {cluster.job_rows()}") from None
    jobs = cluster.jobs()
    assert {f for f, _, _ in jobs} == deferred
    owner_b = f":{b.proc.pid}:"
    assert all(owner_b in o for f, _, o in jobs if f in held or f in left), jobs  # B finished what A left

    replacement = cluster.start_gateway("gw-a2", a.http_port)  # what a cluster does after a crash
    for n, result in enumerate(results):
        flow_id = f"sg-{n:02d}"
        kinds = [e["type"] for e in result.events]
        assert "record_url" in kinds and kinds[-1] == "end", (flow_id, kinds)
        if flow_id not in deferred:
            assert words(result.events), (flow_id, result.events)  # its words came live
            continue
        bodies = [get_transcript(base, flow_id) for base in (replacement.http_base, b.http_base)]
        assert bodies[0] == bodies[1], flow_id  # one store: the same answer from either gateway
        status, body = bodies[0]
        assert status == 200 and body["status"] == "done", (flow_id, body)
        assert " ".join(f["text"] for f in body["finals"]).strip(), (flow_id, body)
    taken = [get_transcript(b.http_base, f)[1] for f in held]
    assert all(t["attempts"] == 2 for t in taken), taken  # A's cut attempt counted, B's finished it
