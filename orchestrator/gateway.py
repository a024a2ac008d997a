"""The WebSocket gateway: `/ws/stream` plus `/healthz`, `/readyz`, `/metrics` and the browser page (`/`,
docs/web.md) on one port (SPEC §2)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http import HTTPStatus
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from common import tracing
from common.server import GRPC_OPTIONS, announce
from common.tls import edge_context, grpc_channel
from orchestrator import metrics
from orchestrator.config import GatewayConfig, is_loopback
from orchestrator.core.events import StageName
from orchestrator.core.protocol import FATAL_CLOSE, ErrorCode, ResumeRequest, valid_flow_id
from orchestrator.core.session import Session
from orchestrator.driver import ConnectionClosedError, HandedOver, SessionDriver
from orchestrator.edge.auth import (
    SUBPROTOCOL,
    AuthError,
    Principal,
    check_fresh,
    check_returns,
    may_read_transcripts,
    token_from_handshake,
)
from orchestrator.edge.flows import FlowRegistry
from orchestrator.edge.keys import JwksVerifier, Verifier, build_verifier
from orchestrator.edge.limits import ClientLimits, Refusal, Ticket, own_origin
from orchestrator.recordings.policy import RetrySchedule, SpoolBudget
from orchestrator.recordings.spool import ArchiveSpool, RecordingFiles
from orchestrator.recordings.uploader import SpoolUploader, archive_uploader
from orchestrator.routing.pool import PoolSet
from orchestrator.stages.asr import AsrStage
from orchestrator.stages.base import Stage
from orchestrator.stages.compress import CompressStage, SpoolLink
from orchestrator.stages.denoise import DenoiseStage
from orchestrator.stages.lid import LidStage
from orchestrator.stages.vad import VadStage
from orchestrator.supervisor import Supervisor
from orchestrator.transcripts.dispatch import PoolTranscriber
from orchestrator.transcripts.runner import JobRunner
from orchestrator.transcripts.store import Job, TranscriptStore, open_store
from orchestrator.transcripts.view import transcript_response
from orchestrator.web import SECURITY_HEADERS, load_assets

log = logging.getLogger(__name__)
WS_PATH = "/ws/stream"


class Gateway:
    def __init__(self, config: GatewayConfig, stages: list[Stage] | None = None) -> None:
        """`stages`: run these instead of the configured gRPC stages (in-process tests)."""
        self.config = config
        self.session_config = config.session
        self.limits = ClientLimits(config.limits, config.listen.max_sessions)
        self.drivers: set[SessionDriver] = set()
        self.draining = False
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stages: list[Stage] = []
        self._given_stages = stages
        if stages is not None:
            self.session_config = replace(config.session, stages=tuple(s.name for s in stages))
        self._stage_health: dict[str, bool] = {}
        self._server: Server | None = None
        self._background = Supervisor()
        self._opus_pool: ThreadPoolExecutor | None = None
        self._spool_pool: ThreadPoolExecutor | None = None
        self.pools: PoolSet | None = None
        self.jobs: JobRunner | None = None
        self._job_store: TranscriptStore | None = None
        self._all_closed = asyncio.Event()
        self.verifier: Verifier | None = None
        # Ownership (docs/security.md): the live session of each (tenant, flowId), resumes included.
        self.flows: FlowRegistry[SessionDriver] = FlowRegistry()
        self._page = load_assets()  # the browser page at `GET /` (docs/web.md), from memory

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        cfg = self.config
        self.verifier = build_verifier(cfg.auth)
        if isinstance(self.verifier, JwksVerifier):
            await self.verifier.warm()
        if self.verifier is None:
            loopback = is_loopback(cfg.listen.host)
            (log.info if loopback else log.warning)(
                "authentication is off: any client may stream" + ("" if loopback else " on a non-loopback address"),
                extra={"stage": "auth", "event": "auth_off"},
            )
        if self._given_stages is not None:
            self._stages = list(self._given_stages)
        for name in cfg.active_stages if self._given_stages is None else ():
            if name == "asr":
                continue  # ASR members live in pools, with their own health and breakers
            addr = getattr(cfg, name).addr
            self._channels[name] = grpc_channel(addr, cfg.tls, GRPC_OPTIONS)
            self._stage_health[name] = False
        if "vad" in self._channels:
            self._stages.append(VadStage(self._channels["vad"], cfg.vad.batch_ms))
        if "denoise" in self._channels:
            self._stages.append(DenoiseStage(self._channels["denoise"], cfg.denoise.batch_ms))
        if "lid" in self._channels:
            self._stages.append(LidStage(self._channels["lid"], cfg.lid.batch_ms))
        if "asr" in cfg.active_stages and self._given_stages is None:
            table = cfg.routing_table()
            self.pools = PoolSet(table, tls=cfg.tls)
            self.session_config = replace(self.session_config, hotwords_applied=table.hotwords_applied)
            if self.pools.uses_dns:
                # Members named by DNS are known before the first session; then re-resolved.
                metrics.forget_members(await self.pools.refresh_dns())
                pools = self.pools
                self._background.start("asr-pool-dns", lambda: pools.watch_dns(metrics.forget_members))
            metrics.init_pools(self.pools.pools)
            self._background.start("asr-pool-health", self.pools.watch_health)
            # Opus encoding is codec work: it runs in threads (libopus releases the GIL), not on the loop.
            self._opus_pool = ThreadPoolExecutor(cfg.asr.opus_threads, thread_name_prefix="opus")
            self._stages.append(
                AsrStage(
                    self.pools,
                    cfg.asr.link,
                    cfg.asr.batch_ms,
                    self._opus_pool,
                    cfg.session.partial_interval_ms,
                    cfg.asr.open_timeout_s,
                    cfg.asr.provisional,
                    admission_wait_s=cfg.asr.admission_wait_s,
                    provisional_lang=cfg.asr.provisional_lang,
                    vad_endpoints="vad" in cfg.active_stages,
                )
            )
            await self._start_jobs()
        if "compress" in self._channels:
            spool = await self._start_archive_spool(self._channels["compress"])
            self._stages.append(CompressStage(self._channels["compress"], cfg.compress.batch_ms, spool))
        edge_tls = edge_context(cfg.edge_tls)  # wss://, its certificate reloaded from disk
        self._server = await serve(
            self._handle,
            cfg.listen.host,
            cfg.listen.port,
            ssl=edge_tls.context if edge_tls is not None else None,
            process_request=self._http,
            **websocket_options(cfg),
        )
        if edge_tls is not None:
            self._background.start("tls-reload", lambda: edge_tls.watch(cfg.tls.reload_s))
        self._background.start("sweeper", self._sweep)
        self._background.start("stage-health", self._watch_stage_health)
        log.info("gateway listening", extra={"stage": "gateway", "event": f"listening:{self.port}"})

    async def drain(self) -> None:
        """Shutdown as an API (STYLE §6, docs/runbook.md): not ready, refuse new sessions with
        `server_draining`, let open ones finish for up to DRAIN_GRACE_SEC, then end the audio of the
        rest where it is (final, `record_url`, `end` with `reason: "shutdown"`), wait for their stages
        to answer for up to STAGE_TIMEOUT_SEC, give up on any still working (so every session still gets
        its `end`), and stop."""
        self.draining = True
        self._end_resume_windows()
        grace = self.config.listen.drain_grace_s
        log.info(
            "draining",
            extra={"stage": "gateway", "event": f"draining:{len(self.drivers)} sessions, grace {grace:g} s"},
        )
        await self._wait_all_closed(grace)
        if self.drivers:
            now = time.monotonic()
            log.info("grace over", extra={"stage": "gateway", "event": f"shutdown:{len(self.drivers)} sessions"})
            for driver in list(self.drivers):
                driver.shutdown(now)
            await self._wait_all_closed(self.session_config.stage_timeout_s)
        if self.drivers:
            now = time.monotonic()
            log.warning(
                "stages still working at shutdown",
                extra={"stage": "gateway", "event": f"give_up:{len(self.drivers)} sessions"},
            )
            for driver in list(self.drivers):
                driver.give_up_stages("the gateway is shutting down", now)
            await self._wait_all_closed(2.0)  # the writers send the last events
        await self.stop()

    async def _wait_all_closed(self, timeout_s: float) -> None:
        if self.drivers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), timeout_s)

    def _end_resume_windows(self) -> None:
        """No client can come back to a gateway that stops: flush the sessions waiting for one."""
        for driver in list(self.drivers):
            driver.end_resume_window()

    async def stop(self) -> None:
        self._end_resume_windows()
        await self._background.stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for channel in self._channels.values():
            await channel.close()
        if self.verifier is not None:
            await self.verifier.close()
        if self.jobs is not None:
            await self.jobs.stop()
        if self._job_store is not None:
            await self._job_store.close()
        if self.pools is not None:
            await self.pools.close()
        if self._opus_pool is not None:
            self._opus_pool.shutdown(wait=False, cancel_futures=True)
        if self._spool_pool is not None:
            self._spool_pool.shutdown(wait=True)

    async def _admit(
        self,
        session: Session,
        driver: SessionDriver,
        ws: ServerConnection,
        ticket: Ticket | None,
        principal: Principal | None,
    ) -> tuple[ErrorCode, str] | str | HandedOver:
        """Between `start` and `ack` (docs/security.md): the token (from the handshake or
        `start.auth.token`) and its claims, the limits per client and per tenant, then the flowId not
        live already for the same tenant. Returns the tenant ("" with authentication off) or a refusal;
        for a `start.resume`, the session it resumed (docs/protocol.md#resume)."""
        assert session.start is not None and session.flow_id is not None
        if self.draining:  # connected before SIGTERM, `start` after it
            draining = Refusal(ErrorCode.SERVER_DRAINING, "the gateway is draining; reconnect to another")
            refused(draining)
            return draining.code, draining.message
        tenant = ""
        if self.verifier is not None:
            try:
                if session.start.token is not None:
                    in_start = await self.verifier.verify(session.start.token)
                    if principal is not None and in_start.sub != principal.sub:
                        raise AuthError(ErrorCode.AUTH_INVALID, "the start token and the handshake token differ in sub")
                    principal = in_start
                if principal is None:
                    raise AuthError(
                        ErrorCode.AUTH_REQUIRED,
                        "a token is required: Authorization: Bearer, a bearer.<token> subprotocol, or start.auth.token",
                    )
                check_fresh(principal, time.time(), self.config.auth.leeway_s)
                check_returns(principal, session.start.returns)
            except AuthError as exc:
                log.info(
                    "session refused",
                    extra={"flowId": session.flow_id, "stage": "auth", "err_code": exc.code.value},
                )
                return exc.code, exc.message
            tenant = principal.sub
        if session.start.resume is not None:
            return self._resume(session.start.resume, session.flow_id, driver, ws, ticket, tenant)
        if ticket is not None:
            # The limits per tenant count the token's subject; without authentication, the client's address.
            # A start refused below still counts against the start rate: an attempt is an attempt.
            max_sessions = principal.max_sessions if principal is not None else None
            refusal = self.limits.start_session(ticket, tenant or client_ip(ws), time.monotonic(), max_sessions)
            if refusal is not None:
                refused(refusal)
                return refusal.code, refusal.message
            metrics.PENDING_CONNECTIONS.set(self.limits.pending)
        taken = self.flows.claim(tenant, session.flow_id, driver)
        if taken is not None:
            return taken.code, taken.message
        return tenant

    def _resume(
        self,
        request: ResumeRequest,
        flow_id: str,
        driver: SessionDriver,
        ws: ServerConnection,
        ticket: Ticket | None,
        tenant: str,
    ) -> tuple[ErrorCode, str] | HandedOver:
        """Move the flow's live session to this connection, or say why not (counted by outcome)."""
        found = self.flows.find_for_resume(tenant, flow_id)
        refusal: tuple[ErrorCode, str] | None
        if isinstance(found, Refusal):
            refusal = found.code, found.message
        else:
            limited = self.limits.resume_session(ticket, tenant or client_ip(ws), time.monotonic()) if ticket else None
            refusal = (limited.code, limited.message) if limited is not None else found.attach(driver.conn, request)
        if refusal is not None:
            metrics.RESUMES.labels(refusal[0].value).inc()
            log.info("resume refused", extra={"flowId": flow_id, "stage": "gateway", "err_code": refusal[0].value})
            return refusal
        assert not isinstance(found, Refusal)
        log.info("session resumed", extra={"flowId": flow_id, "stage": "gateway", "event": "resumed"})
        return HandedOver(found)

    def _release_flow(self, session: Session, driver: SessionDriver) -> None:
        self.flows.release(session.tenant, session.flow_id or "", driver)

    async def _handle(self, ws: ServerConnection) -> None:
        now = time.monotonic()
        route = self.pools.table.route if self.pools is not None else None
        ticket: Ticket | None = None
        refusal: Refusal | None = None
        if self.draining:
            refusal = Refusal(ErrorCode.SERVER_DRAINING, "the gateway is draining; reconnect to another")
        else:
            admitted = self.limits.connect(client_ip(ws))
            if isinstance(admitted, Refusal):
                refusal = admitted
            else:
                ticket = admitted
        session = Session(self.session_config, now, uuid.uuid4().hex, route)
        if refusal is not None:
            refused(refusal)
            session.refuse(refusal.code, refusal.message)
        metrics.PENDING_CONNECTIONS.set(self.limits.pending)
        principal: Principal | None = None
        token = _handshake_token(ws.request.headers) if ws.request is not None else None
        if self.verifier is not None and token is not None and session.close is None:
            try:
                principal = await self.verifier.verify(token)
            except AuthError as exc:
                session.refuse(exc.code, exc.message)

        async def admit(s: Session) -> tuple[ErrorCode, str] | str | HandedOver:
            return await self._admit(s, driver, ws, ticket, principal)

        driver = SessionDriver(session, WebSocketConnection(ws), self._stages, self._before_end, admit)
        self.drivers.add(driver)
        metrics.ACTIVE_SESSIONS.set(len(self.drivers))
        try:
            await driver.run()
            if driver.handed_over_to is not None:
                # This connection now carries a resumed session, run by the task that started it.
                self.drivers.discard(driver)
                await driver.handed_over_to.released(driver.conn)
        except Exception:
            log.exception(
                "session crashed",
                extra={"flowId": session.flow_id, "stage": "gateway", "err_code": "internal_error"},
            )
            with contextlib.suppress(Exception):
                await ws.close(1011, "internal error")
        finally:
            if ticket is not None:
                self.limits.release(ticket)
                metrics.PENDING_CONNECTIONS.set(self.limits.pending)
            self.drivers.discard(driver)
            self._release_flow(session, driver)
            if self.draining and not self.drivers:
                self._all_closed.set()
            metrics.ACTIVE_SESSIONS.set(len(self.drivers))
            if not session.handed_over:
                reason = session.end_reason or (session.close[1] if session.close else "unknown")
                metrics.SESSIONS.labels(reason).inc()
                count_outcome(session)
                log.info(
                    "session closed",
                    extra={
                        "flowId": session.flow_id,
                        "stage": "gateway",
                        "event": reason,
                        "lang": session.lang or None,
                        "err_code": session.fatal_code.value if session.fatal_code is not None else None,
                        "trace_id": driver.trace.trace_id if driver.trace is not None else None,
                    },
                )

    async def _before_end(self, session: Session) -> None:
        """A record-only session's transcription job is stored before its `end` goes out."""
        if session.needs_deferred_transcript and self.jobs is not None:
            assert session.flow_id and session.start
            # A record still in the archive spool has no URL yet: the job waits for it (store.record_stored).
            await self.jobs.enqueue(
                session.flow_id, session.record_url or "", session.lang, session.start.domain, tenant=session.tenant
            )

    async def _open_store(self) -> TranscriptStore:
        """The job store (deferred transcripts, and the records the archive took late), opened once:
        the sqlite file `JOBS_DB`, or the store every gateway shares at `JOBS_STORE_URL`."""
        if self._job_store is None:
            self._job_store = await open_store(self.config.jobs)
        return self._job_store

    async def _start_archive_spool(self, channel: grpc.aio.Channel) -> SpoolLink | None:
        """The gateway's spool of session audio, for when the archive fails (docs/storage.md)."""
        cfg = self.config.compress
        if cfg.spool_max_bytes <= 0:
            return None
        records = await self._open_store()
        self._spool_pool = ThreadPoolExecutor(2, thread_name_prefix="archive-spool")
        spool = ArchiveSpool(
            RecordingFiles(Path(cfg.spool_dir)),
            SpoolBudget(cfg.spool_max_bytes),
            self._spool_pool,
            metrics.spool_changed,
            metrics.ARCHIVE_SPOOL_REFUSED.inc,
        )
        left = await spool.prepare()  # what a previous process left: uploaded by the loop's first pass
        uploader = SpoolUploader(
            spool,
            archive_uploader(channel, spool),
            records,
            RetrySchedule(cfg.retry_base_s, cfg.retry_max_s),
            self._spool_uploaded,
        )
        if left:
            log.warning(
                "archive spool holds sessions of an earlier run: %d",
                len(left),
                extra={"stage": "archive_spool", "event": "spool_recovered"},
            )
        self._background.start("archive-spool", uploader.run)
        window_s = min(cfg.retry_window_s, self.config.stages.timeout_s / 2)  # the session's patience
        return SpoolLink(spool, uploader, records, window_s)

    def _spool_uploaded(self, outcome: str) -> None:
        metrics.ARCHIVE_SPOOL_UPLOADS.labels(outcome).inc()
        if outcome == "stored" and self.jobs is not None:
            self.jobs.wake()  # a deferred job may have waited for this record's URL

    async def _start_jobs(self) -> None:
        """Deferred transcription of record-only sessions (SPEC §4), durable across restarts."""
        cfg = self.config
        self._job_store = await self._open_store()
        assert self.pools is not None
        # A job runs on any pool that serves its language when its own is gone (transcripts/dispatch.py).
        runs = PoolTranscriber(self.pools, cfg.transcribe, cfg.tls)

        async def transcribe(job: Job) -> list[dict[str, Any]]:
            # A trace of its own (the session's has ended), found by its flowId; the ASR's span joins it.
            with tracing.span("transcript.job", flow_id=job.flow_id, **{"speechgw.attempt": job.attempts}):
                return await runs.transcribe(job)

        self.jobs = JobRunner(self._job_store, transcribe, cfg.jobs, runs.capacity_available)
        self._background.start("job-runner", self.jobs.run)

    async def _sweep(self) -> None:
        """One timer for all sessions: idle flush, start timeout, length cap, stage timeouts. One
        session's failing tick is logged and never stops the others' timers."""
        while True:
            await asyncio.sleep(self.config.listen.tick_s)
            now = time.monotonic()
            for driver in list(self.drivers):
                try:
                    driver.tick(now)
                except Exception:
                    log.exception(
                        "session tick failed",
                        extra={"flowId": driver.session.flow_id, "stage": "gateway", "err_code": "internal_error"},
                    )

    async def _watch_stage_health(self) -> None:
        while True:
            for name, channel in self._channels.items():
                stub = health_pb2_grpc.HealthStub(channel)
                try:
                    reply = await stub.Check(
                        health_pb2.HealthCheckRequest(), timeout=self.config.stages.connect_timeout_s
                    )
                    self._stage_health[name] = reply.status == health_pb2.HealthCheckResponse.SERVING
                except grpc.aio.AioRpcError:
                    self._stage_health[name] = False
            await asyncio.sleep(2.0)

    async def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if request.method != "GET":  # every route, the WebSocket upgrade included, is GET only
            response = _response(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", "text/plain")
            response.headers["Allow"] = "GET"
            return response
        if path == WS_PATH:
            # The page served at `/` connects from the gateway's own origin (docs/security.md#limits-per-client).
            own = own_origin(
                request.headers.get_all("Host"),
                secure=self.config.edge_tls.enabled,
                authenticated=self.verifier is not None,
            )
            refusal = self.limits.check_origin(request.headers.get_all("Origin"), own)
            if refusal is None:
                return None
            refused(refusal)
            refusal_body = {"code": refusal.code.value, "message": refusal.message}
            return _response(HTTPStatus.FORBIDDEN, json.dumps(refusal_body).encode() + b"\n", "application/json")
        if path.startswith("/v1/flows/") and path.endswith("/transcript"):
            return await self._transcript(path[len("/v1/flows/") : -len("/transcript")], request.headers)
        if path in self._page:
            asset = self._page[path]
            response = _response(HTTPStatus.OK, asset.body, asset.content_type)
            response.headers.update(SECURITY_HEADERS)
            return response
        if path == "/healthz":
            stages, pools = self.stage_health(), self.pool_health()
            degraded = not all(stages.values()) or any(p["healthy"] == 0 for p in pools.values())
            body: dict[str, Any] = {
                "status": "degraded" if degraded else "ok",
                "draining": self.draining,
                "stages": stages,
            }
            if pools:
                body["pools"] = pools
            return _response(HTTPStatus.OK, json.dumps(body).encode() + b"\n", "application/json")
        if path == "/readyz":
            ready = self.ready
            full = self.limits.live >= self.limits.max_sessions
            body = {"ready": ready, "draining": self.draining, "full": full, "stages": self.stage_health()}
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            return _response(status, json.dumps(body).encode() + b"\n", "application/json")
        if path == "/metrics":
            self._refresh_scrape_gauges()
            return _response(HTTPStatus.OK, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST)
        return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    @property
    def ready(self) -> bool:
        """Whether a load balancer should send new sessions here: listening, not draining, and below
        MAX_SESSIONS (a full gateway refuses every `start`). A stage that is down does not stop a
        session from being served (no VAD, no archive, record-only without ASR): it shows on
        `/healthz` and in `orchestrator_stage_up`, not here."""
        listening = self._server is not None and self._server.is_serving()
        return listening and not self.draining and self.limits.live < self.limits.max_sessions

    def stage_health(self) -> dict[str, bool]:
        """Each configured stage: True while it answers SERVING (ASR: while any pool member does)."""
        health = dict(self._stage_health)
        if self.pools is not None:
            health["asr"] = any(m.healthy for m in self.pools.members())
        return dict(sorted(health.items()))

    def pool_health(self) -> dict[str, dict[str, int]]:
        """Each ASR pool's members and how many answer: a pool at 0 sends its languages elsewhere or
        record-only (docs/routing.md)."""
        if self.pools is None:
            return {}
        return {
            name: {"members": len(pool.members), "healthy": pool.healthy_count}
            for name, pool in sorted(self.pools.pools.items())
        }

    def _refresh_scrape_gauges(self) -> None:
        """Gauges read at scrape time, so the hot path pays nothing for them: send queues, breakers."""
        queued = [d.send_queue_len for d in self.drivers]
        metrics.SEND_QUEUE_EVENTS.set(sum(queued))
        metrics.SEND_QUEUE_EVENTS_MAX.set(max(queued, default=0))
        metrics.AWAITING_RESUME.set(sum(d.session.awaiting_resume for d in self.drivers))
        metrics.SEND_BUFFER_BYTES.set(
            sum(d.conn.buffered_bytes() for d in self.drivers if isinstance(d.conn, WebSocketConnection))
        )
        if self.pools is not None:
            metrics.refresh_breakers(self.pools.members(), time.monotonic())
        for name, up in self.stage_health().items():
            metrics.STAGE_UP.labels(name).set(int(up))
        metrics.DRAINING.set(int(self.draining))
        metrics.EVENT_LOOP_TASKS.set(len(asyncio.all_tasks()))

    async def _transcript(self, flow_id: str, headers: Headers) -> Response:
        """GET /v1/flows/{flowId}/transcript: the deferred transcript of a record-only session, to a
        token of the tenant that owns it (docs/transcripts.md): 401 without a valid token, 403 for a
        token that may not read transcripts, 404 for a flow this tenant does not own."""
        tenant = ""
        if self.verifier is not None:
            token = token_from_handshake(headers.get("Authorization"), ())
            try:
                if token is None:
                    raise AuthError(ErrorCode.AUTH_REQUIRED, "send Authorization: Bearer <token>")
                principal = await self.verifier.verify(token)
            except AuthError as exc:
                body = {"code": exc.code.value, "message": exc.message}
                response = _response(HTTPStatus.UNAUTHORIZED, json.dumps(body).encode(), "application/json")
                response.headers["WWW-Authenticate"] = 'Bearer realm="speechgw"'
                return response
            if not may_read_transcripts(principal):
                body = {"code": ErrorCode.AUTH_FORBIDDEN.value, "message": "the token does not allow transcripts"}
                return _response(HTTPStatus.FORBIDDEN, json.dumps(body).encode(), "application/json")
            tenant = principal.sub
        job = record = None
        if self._job_store is not None and valid_flow_id(flow_id):
            job = await self._job_store.get(flow_id, tenant=tenant)
            record = await self._job_store.get_record(flow_id, tenant=tenant)
        status, body = transcript_response(flow_id, job, record)
        return _response(HTTPStatus(status), json.dumps(body).encode(), "application/json")


class GatewayConnection(ServerConnection):
    """A server connection that reads nothing while its peer reads nothing, and knows since when.

    websockets answers every ping with a pong written straight to the transport, whatever its write
    buffer holds: a client that sends pings and never reads would make the gateway buffer pongs without
    bound. Here, while the transport's write buffer is over its high-water mark (`write_limit`), the
    socket is not read either, so the client's pings wait in its own buffers; the library's pause for a
    full message queue (`max_queue`) still holds too. The session closes a client stalled for
    SEND_TIMEOUT_S (`stalled_since`)."""

    write_stalled_since: float | None = None
    _queue_full = False
    _reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.recv_messages.pause = self._queue_pause
        self.recv_messages.resume = self._queue_resume

    def pause_writing(self) -> None:
        super().pause_writing()
        self.write_stalled_since = time.monotonic()
        self._update_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.write_stalled_since = None
        self._update_reading()

    def _queue_pause(self) -> None:
        self._queue_full = True
        self._update_reading()

    def _queue_resume(self) -> None:
        self._queue_full = False
        self._update_reading()

    def _update_reading(self) -> None:
        paused = self._queue_full or self.write_stalled_since is not None
        if paused == self._reading_paused or self.transport.is_closing():
            return
        self._reading_paused = paused
        (self.transport.pause_reading if paused else self.transport.resume_reading)()


class WebSocketConnection:
    """The driver's Connection over a websockets server connection."""

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws
        self._closing = False  # the driver's close sent the close frame (after the session's last event)

    def stalled_since(self) -> float | None:
        return self._ws.write_stalled_since if isinstance(self._ws, GatewayConnection) else None

    def abort(self) -> None:
        transport = self._ws.transport
        if transport is not None:
            transport.abort()

    async def receive(self) -> str | bytes | None:
        try:
            return await self._ws.recv()
        except ConnectionClosed:
            return None

    async def send(self, text: str) -> None:
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:
            raise ConnectionClosedError from exc

    @property
    def dropped(self) -> bool:
        """Lost without a close frame from the client (a cut TCP connection, or no answer to the close
        the driver sent): resumable. A connection the WebSocket library failed itself (invalid UTF-8,
        a message past its cap) sent its own close frame and is not."""
        protocol = self._ws.protocol
        return protocol.close_rcvd is None and (protocol.close_sent is None or self._closing)

    def buffered_bytes(self) -> int:
        """Bytes written to the socket's transport and not yet sent (the kernel took the rest)."""
        transport = self._ws.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    async def close(self, code: int, reason: str) -> None:
        self._closing = self._ws.protocol.close_sent is None  # this close sends the close frame
        with contextlib.suppress(ConnectionClosed):
            await self._ws.close(code, reason)


def websocket_options(config: GatewayConfig) -> dict[str, Any]:
    """How the gateway's WebSocket layer is set up (also what the Autobahn run checks, tests/fuzz/autobahn.py)."""
    return {
        "max_size": config.listen.ws_max_message_bytes,
        "compression": None,  # PCM does not deflate; compression would only burn CPU
        # Browsers send the token as a `bearer.<token>` subprotocol next to `speechgw.v1`, which is echoed
        # (a browser fails a handshake that echoes none of its offers); the token is never echoed.
        "select_subprotocol": _select_subprotocol,
        "max_queue": 64,
        # Events are small: past this much unsent in the transport, the client is not reading (and it
        # is not read either, see GatewayConnection); SEND_TIMEOUT_S later it is closed.
        "write_limit": 64 * 1024,
        "create_connection": GatewayConnection,
        # Pings keep idle paths open, but a missing pong closes nothing: while backpressure holds a
        # fast client, its pong waits behind megabytes of audio in the TCP buffers. A dead client
        # is found by FLUSH_IDLE_SEC instead (docs/protocol.md).
        "ping_timeout": None,
    }


def _select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Echo `speechgw.v1` when offered; a client that offers none (or only a token) gets none."""
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


def _handshake_token(headers: Headers) -> str | None:
    return token_from_handshake(headers.get("Authorization"), headers.get_all("Sec-WebSocket-Protocol"))


def client_ip(ws: ServerConnection) -> str:
    """The peer's address (IPv4 or IPv6 text) as the limits per address see it."""
    peer = ws.remote_address
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


def count_outcome(session: Session) -> None:
    """A closed session's end reason and fatal code, and for one that streamed, its ASR mode."""
    code = session.fatal_code.value if session.fatal_code is not None else None
    if not session.acknowledged:
        # Never streamed: refused (its fatal code) or the client left before `start`.
        metrics.SESSION_OUTCOMES.labels("refused" if code else "disconnect", code or "none").inc()
        return
    metrics.SESSION_OUTCOMES.labels(session.end_reason or "unknown", code or "none").inc()
    if StageName.ASR not in session.stages:
        mode = "no_asr"
    elif StageName.ASR not in session.failed_stages:
        mode = "live"
    else:
        mode = "record_only" if session.needs_deferred_transcript else "asr_lost"
    metrics.SESSION_MODES.labels(mode).inc()


def refused(refusal: Refusal) -> None:
    metrics.REFUSALS.labels(refusal.code.value).inc()
    log.info(
        "connection refused",
        extra={"stage": "gateway", "err_code": refusal.code.value, "event": FATAL_CLOSE[refusal.code].name},
    )


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))), ("Connection", "close")])
    return Response(status.value, status.phrase, headers, body)


async def serve_forever(config: GatewayConfig, stop: asyncio.Event) -> None:
    """Serve until `stop` is set (SIGTERM), then drain (STYLE §6)."""
    gateway = Gateway(config)
    await gateway.start()
    announce("gateway", config.listen.host, 0, gateway.port, tls=config.edge_tls.enabled)
    await stop.wait()
    await gateway.drain()
