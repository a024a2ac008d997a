"""The Grafana dashboards and Prometheus rules of deploy/observability/, generated from this one source.

    python -m devtools.observability            # rewrite deploy/observability/{dashboards,rules}
    python -m devtools.observability --check    # exit 1 when the committed files differ from this module

The SLOs (SPEC §6, docs/performance.md) are the constants below; every PromQL expression of every panel
and rule is built here, so `expressions()` can hand them all to the test that evaluates them against a
real Prometheus scraping the stack (tests/e2e/test_prometheus.py). Scrape jobs are named after the
processes: `gateway`, `vad`, `denoise`, `lid`, `asr` (one target per ASR process, with its `pool`
as a target label), `compress` (devtools/prometheus.py writes that configuration).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1] / "deploy" / "observability"
RULES_FILE = ROOT / "rules" / "speechgw.rules.yml"
K8S_SCRAPE_FILE = ROOT / "prometheus-k8s.yml"
DASHBOARD_DIR = ROOT / "dashboards"
RUNBOOK = "docs/runbook.md"  # relative to the repository

JOBS = ("gateway", "vad", "denoise", "lid", "asr", "compress")
STAGES = ("vad", "denoise", "lid", "asr", "compress")

# The SLOs. Availability: sessions that streamed and did not end on a fatal error, 99.9 % per 30 days.
AVAILABILITY_OBJECTIVE = 0.999
# First partial (SPEC §6): P95 <= 600 ms, i.e. at most 5 % of sessions slower than 600 ms, and
# P50 <= 300 ms, i.e. at most half of them slower than 300 ms. Final lag (docs/performance.md):
# P95 <= 1 s after the end of speech. All per ASR pool (SPEC §6: "report per engine").
FIRST_PARTIAL_P95_MS = 600
FIRST_PARTIAL_P50_MS = 300
FINAL_LAG_P95_MS = 1000
LATENCY_OBJECTIVE = 0.95
ASR_RTF_MAX = 0.5
RECORD_ONLY_MAX = 0.05
JOB_BACKLOG_MAX_AGE_S = 1800


@dataclass(frozen=True)
class BurnWindow:
    """One multi-window multi-burn-rate pair (Google SRE workbook, ch. 5): both windows must burn faster
    than `factor` times the budget rate. 14.4 over 1 h spends 2 % of a 30-day budget; 6 over 6 h, 5 %."""

    long: str
    short: str
    factor: float
    name: str
    for_: str


BURN_WINDOWS = (
    BurnWindow("1h", "5m", 14.4, "Fast", "2m"),
    BurnWindow("6h", "30m", 6.0, "Slow", "15m"),
)
RATE_WINDOWS = ("5m", "30m", "1h", "6h")


def _le(ms: int) -> str:
    # prometheus_client writes the bucket bound 600 as le="600.0"; Prometheus 3 normalises it to "600".
    return f'le=~"{ms}(\\\\.0)?"'


def session_error_ratio(window: str) -> str:
    return (
        f'sum(rate(orchestrator_session_outcomes_total{{reason="error"}}[{window}])) / '
        f'sum(rate(orchestrator_session_outcomes_total{{reason!="refused"}}[{window}]))'
    )


def over_ratio(histogram: str, ms: int, window: str) -> str:
    """Fraction of a gateway histogram's observations above `ms`, per pool."""
    return (
        f'1 - sum by (pool) (rate({histogram}_bucket{{job="gateway", {_le(ms)}}}[{window}])) / '
        f'sum by (pool) (rate({histogram}_count{{job="gateway"}}[{window}]))'
    )


def quantile(q: float, metric: str, by: str = "", selector: str = "", window: str = "5m") -> str:
    labels = ", ".join(x for x in ("le", by) if x)
    sel = "{" + selector + "}" if selector else ""
    return f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{sel}[{window}])))"


# ----------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Record:
    record: str
    expr: str


@dataclass(frozen=True)
class Alert:
    """An alert is `signal` compared with a threshold (`expr`); `signal` is what has data on a healthy
    stack, which the PromQL test checks while the alert itself stays quiet."""

    name: str
    expr: str
    signal: str
    for_: str
    severity: str
    summary: str
    anchor: str
    labels: dict[str, str] = field(default_factory=dict)
    # Why `signal` may have no data on a healthy stack without TLS (None: it must have data).
    exempt: str | None = None


AVAIL = "speechgw:session_errors:ratio_rate"
FP_SLOW = f"pool:orchestrator_first_partial_over_{FIRST_PARTIAL_P95_MS}ms:ratio_rate"
FP_MEDIAN = f"pool:orchestrator_first_partial_over_{FIRST_PARTIAL_P50_MS}ms:ratio_rate"
FL_SLOW = f"pool:orchestrator_final_lag_over_{FINAL_LAG_P95_MS}ms:ratio_rate"
RTF = "pool:asr_decode_seconds_per_audio_second:ratio_rate5m"
RECORD_ONLY = "speechgw:sessions_record_only:ratio_rate"


def records() -> list[Record]:
    out: list[Record] = []
    for w in RATE_WINDOWS:
        out.append(Record(AVAIL + w, session_error_ratio(w)))
    for w in RATE_WINDOWS:
        out.append(Record(FP_SLOW + w, over_ratio("orchestrator_first_partial_latency_ms", FIRST_PARTIAL_P95_MS, w)))
    for w in ("5m", "1h"):
        out.append(Record(FP_MEDIAN + w, over_ratio("orchestrator_first_partial_latency_ms", FIRST_PARTIAL_P50_MS, w)))
    for w in RATE_WINDOWS:
        out.append(Record(FL_SLOW + w, over_ratio("orchestrator_final_lag_ms", FINAL_LAG_P95_MS, w)))
    for q in (0.5, 0.95):
        out.append(
            Record(
                f"pool:orchestrator_first_partial_latency_ms:p{round(q * 100)}_5m",
                quantile(q, "orchestrator_first_partial_latency_ms", "pool", 'job="gateway"'),
            )
        )
        out.append(
            Record(
                f"pool:orchestrator_final_lag_ms:p{round(q * 100)}_5m",
                quantile(q, "orchestrator_final_lag_ms", "pool", 'job="gateway"'),
            )
        )
    out.append(
        Record(
            RTF,
            'sum by (pool) (rate(asr_decode_seconds_total{job="asr"}[5m])) / '
            'sum by (pool) (rate(asr_audio_seconds_total{job="asr"}[5m]))',
        )
    )
    for w in ("5m", "1h"):
        out.append(
            Record(
                RECORD_ONLY + w,
                f'sum(rate(orchestrator_session_modes_total{{mode=~"record_only|asr_lost"}}[{w}])) / '
                f'sum(rate(orchestrator_session_modes_total{{mode!="no_asr"}}[{w}]))',
            )
        )
    return out


def _burn_alerts(name: str, series: str, budget: float, slo: str, summary: str, anchor: str) -> list[Alert]:
    out = []
    for bw in BURN_WINDOWS:
        threshold = round(bw.factor * budget, 6)
        out.append(
            Alert(
                f"{name}BudgetBurn{bw.name}",
                f"{series}{bw.long} > {threshold:g} and {series}{bw.short} > {threshold:g}",
                f"{series}{bw.long}",
                bw.for_,
                "page",
                summary + f" ({bw.factor:g}x the error budget over {bw.long} and {bw.short})",
                anchor,
                {"slo": slo, "window": f"{bw.long}/{bw.short}"},
            )
        )
    return out


def alerts() -> list[Alert]:
    out = _burn_alerts(
        "SpeechgwAvailability",
        AVAIL,
        1 - AVAILABILITY_OBJECTIVE,
        "availability",
        "Sessions end on fatal errors faster than the 99.9 % availability SLO allows",
        "availability-budget-burn",
    )
    out += _burn_alerts(
        "SpeechgwFirstPartial",
        FP_SLOW,
        1 - LATENCY_OBJECTIVE,
        "first_partial_p95",
        f"More first partials of pool {{{{ $labels.pool }}}} exceed {FIRST_PARTIAL_P95_MS} ms than the P95 SLO allows",
        "latency-budget-burn",
    )
    out += _burn_alerts(
        "SpeechgwFinalLag",
        FL_SLOW,
        1 - LATENCY_OBJECTIVE,
        "final_lag_p95",
        f"More finals of pool {{{{ $labels.pool }}}} come later than {FINAL_LAG_P95_MS} ms than the P95 SLO allows",
        "latency-budget-burn",
    )
    out += [
        Alert(
            "SpeechgwFirstPartialMedianSlow",
            f"{FP_MEDIAN}1h > 0.5 and {FP_MEDIAN}5m > 0.5",
            f"{FP_MEDIAN}1h",
            "5m",
            "ticket",
            f"The median first partial of pool {{{{ $labels.pool }}}} is above {FIRST_PARTIAL_P50_MS} ms",
            "latency-budget-burn",
            {"slo": "first_partial_p50"},
        ),
        Alert(
            "SpeechgwAsrRtfHigh",
            f"{RTF} > {ASR_RTF_MAX:g}",
            RTF,
            "15m",
            "ticket",
            f"ASR pool {{{{ $labels.pool }}}} decodes slower than {ASR_RTF_MAX:g} s per audio second",
            "asr-rtf-high",
            {"slo": "asr_rtf"},
        ),
        Alert(
            "SpeechgwAsrBreakerOpen",
            "max by (pool, addr) (max_over_time(orchestrator_asr_member_breaker_state[2m])) == 2",
            "orchestrator_asr_member_breaker_state",
            "5m",
            "warning",
            "The breaker of ASR member {{ $labels.addr }} (pool {{ $labels.pool }}) keeps opening",
            "asr-breaker-open",
        ),
        Alert(
            "SpeechgwAsrPoolDown",
            "orchestrator_asr_pool_members_healthy == 0",
            "orchestrator_asr_pool_members_healthy",
            "1m",
            "page",
            "No member of ASR pool {{ $labels.pool }} passes its health check: its sessions run record-only",
            "asr-pool-down",
        ),
        Alert(
            "SpeechgwRecordOnlyRateHigh",
            f"{RECORD_ONLY}5m > {RECORD_ONLY_MAX:g}",
            f"{RECORD_ONLY}5m",
            "10m",
            "warning",
            f"More than {RECORD_ONLY_MAX:.0%} of sessions run record-only (their ASR failed)",
            "record-only-rate-high",
        ),
        Alert(
            "SpeechgwTranscriptBacklogOld",
            f"transcribe_jobs_oldest_age_seconds > {JOB_BACKLOG_MAX_AGE_S}",
            "transcribe_jobs_oldest_age_seconds",
            "5m",
            "warning",
            f"A deferred transcript has waited more than {JOB_BACKLOG_MAX_AGE_S // 60} minutes",
            "transcript-backlog-old",
        ),
        Alert(
            "SpeechgwTranscriptJobsFailing",
            'increase(transcribe_jobs_total{outcome="failed"}[1h]) > 0',
            'transcribe_jobs_total{outcome="failed"}',
            "0m",
            "ticket",
            "Deferred transcriptions gave up after their last attempt",
            "transcript-jobs-failing",
        ),
        Alert(
            "SpeechgwArchiveSpoolGrowing",
            "compress_pending_archives > 0 and delta(compress_pending_archives[15m]) > 0",
            "compress_pending_archives",
            "15m",
            "warning",
            "Archives pile up in the spool of {{ $labels.instance }}: object storage refuses or misses uploads",
            "archive-spool-growing",
        ),
        Alert(
            "SpeechgwServiceMemoryGrowing",
            "process_resident_memory_after_trim_bytes > 0"
            " and deriv(process_resident_memory_after_trim_bytes[2h]) > 10000000 / 3600",
            "process_resident_memory_after_trim_bytes",
            "1h",
            "ticket",
            "{{ $labels.job }} at {{ $labels.instance }} keeps more memory after each heap give-back: "
            "over 10 MB/h for an hour",
            "service-memory-growing",
        ),
        Alert(
            "SpeechgwTargetDown",
            f'up{{job=~"{"|".join(JOBS)}"}} == 0',
            f'up{{job=~"{"|".join(JOBS)}"}}',
            "1m",
            "page",
            "{{ $labels.job }} at {{ $labels.instance }} does not answer its /metrics scrape",
            "target-down",
        ),
        Alert(
            "SpeechgwCertificateExpiresSoon",
            "tls_certificate_expiry_timestamp_seconds - time() < 14 * 86400",
            "tls_certificate_expiry_timestamp_seconds",
            "1h",
            "warning",
            "The {{ $labels.use }} certificate of {{ $labels.job }} at {{ $labels.instance }} expires within 14 days",
            "certificate-expires-soon",
            exempt="exported only when TLS is on; the stack of the PromQL test runs without TLS",
        ),
    ]
    return out


def rules_document() -> dict[str, Any]:
    def alert_rule(a: Alert) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": a.name, "expr": a.expr}
        if a.for_ != "0m":
            rule["for"] = a.for_
        rule["labels"] = {"severity": a.severity, **a.labels}
        rule["annotations"] = {"summary": a.summary, "runbook": f"{RUNBOOK}#{a.anchor}"}
        return rule

    return {
        "groups": [
            {
                "name": "speechgw-slis",
                "rules": [{"record": r.record, "expr": r.expr} for r in records()],
            },
            {"name": "speechgw-alerts", "rules": [alert_rule(a) for a in alerts()]},
        ]
    }


# ------------------------------------------------------------------------------------------ dashboards


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    targets: Sequence[Target]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""
    width: int = 12
    # Why an expression may have no data on a healthy stack (None: it must have data).
    exempt: str | None = None


@dataclass(frozen=True)
class Row:
    title: str
    panels: Sequence[Panel]


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: Sequence[Row]
    pool_variable: bool = False


def T(expr: str, legend: str = "") -> Target:  # short: the panels below read like a table
    return Target(expr, legend)


def _stage_row(stage: str, service_metric: str, extra: Sequence[Panel]) -> Row:
    return Row(
        stage,
        [
            Panel(
                f"{stage}: latency, gateway view (P50, P95)",
                [
                    T(quantile(0.5, service_metric, selector='job="gateway"'), "P50"),
                    T(quantile(0.95, service_metric, selector='job="gateway"'), "P95"),
                ],
                "ms",
                description="send to answer as the gateway sees it, network included",
                width=8,
            ),
            Panel(
                f"{stage}: processing time in the service (P95)",
                [T(quantile(0.95, service_metric, "instance", f'job="{stage}"'), "{{instance}}")],
                "ms",
                width=8,
            ),
            Panel(
                f"{stage}: failed stage calls",
                [T(f'sum(rate(orchestrator_stage_failures_total{{stage="{stage}"}}[5m]))', "failures/s")],
                "ops",
                width=8,
            ),
            *extra,
        ],
    )


def dashboards() -> list[Dashboard]:
    overview = Dashboard(
        "speechgw-overview",
        "speechgw / overview",
        "Sessions, the SLIs against their SLOs, errors and capacity of the speech stream gateway",
        [
            Row(
                "Sessions",
                [
                    Panel(
                        "Open connections",
                        [
                            T('sum(orchestrator_active_sessions{job="gateway"})', "open"),
                            T('sum(orchestrator_pending_connections{job="gateway"})', "before start"),
                        ],
                        width=8,
                    ),
                    Panel(
                        "Sessions ended, by ASR mode",
                        [T("sum by (mode) (rate(orchestrator_session_modes_total[5m]))", "{{mode}}")],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "Sessions ended, by reason",
                        [T("sum by (reason) (rate(orchestrator_session_outcomes_total[5m]))", "{{reason}}")],
                        "ops",
                        width=8,
                    ),
                ],
            ),
            Row(
                "SLIs",
                [
                    Panel(
                        "Availability (1 h)",
                        [T(f"1 - {AVAIL}1h", "availability")],
                        "percentunit",
                        "stat",
                        f"sessions that streamed and did not end on a fatal error; SLO {AVAILABILITY_OBJECTIVE:.1%}",
                        width=6,
                    ),
                    Panel(
                        "Availability error budget burn rate",
                        [T(f"{AVAIL}{w} / {1 - AVAILABILITY_OBJECTIVE:g}", w) for w in ("5m", "1h", "6h")],
                        description="1 = spending the 30-day budget exactly; "
                        "pages at 14.4 (1h and 5m) and 6 (6h and 30m)",
                        width=6,
                    ),
                    Panel(
                        "First partial P50 / P95 per pool",
                        [
                            T("pool:orchestrator_first_partial_latency_ms:p50_5m", "P50 {{pool}}"),
                            T("pool:orchestrator_first_partial_latency_ms:p95_5m", "P95 {{pool}}"),
                        ],
                        "ms",
                        description=f"SLO: P50 <= {FIRST_PARTIAL_P50_MS} ms, P95 <= {FIRST_PARTIAL_P95_MS} ms",
                        width=6,
                    ),
                    Panel(
                        "Final lag P50 / P95 per pool",
                        [
                            T("pool:orchestrator_final_lag_ms:p50_5m", "P50 {{pool}}"),
                            T("pool:orchestrator_final_lag_ms:p95_5m", "P95 {{pool}}"),
                        ],
                        "ms",
                        description=f"end of speech to asr_final; target P95 <= {FINAL_LAG_P95_MS} ms",
                        width=6,
                    ),
                    Panel(
                        "Latency error budget burn rate (1 h)",
                        [
                            T(f"{FP_SLOW}1h / {1 - LATENCY_OBJECTIVE:g}", "first partial {{pool}}"),
                            T(f"{FL_SLOW}1h / {1 - LATENCY_OBJECTIVE:g}", "final lag {{pool}}"),
                        ],
                        description="share of sessions over the P95 bound / 5 %; pages at 14.4 and 6",
                        width=8,
                    ),
                    Panel(
                        "ASR decode seconds per audio second",
                        [T(RTF, "{{pool}}")],
                        description=f"SLO: mean RTF <= {ASR_RTF_MAX:g}",
                        width=8,
                    ),
                    Panel(
                        "Record-only share of sessions",
                        [T(f"{RECORD_ONLY}5m", "record-only")],
                        "percentunit",
                        description="sessions whose ASR failed (transcript deferred or lost)",
                        width=8,
                    ),
                ],
            ),
            Row(
                "Errors",
                [
                    Panel(
                        "Error events by code",
                        [T("sum by (code) (rate(orchestrator_errors_total[5m])) > 0", "{{code}}")],
                        "ops",
                        description="only codes that occurred in the window",
                        width=8,
                        exempt="lists only codes with errors (`> 0`); a healthy stack sends none",
                    ),
                    Panel(
                        "Refusals by reason",
                        [T("sum by (reason) (rate(orchestrator_refusals_total[5m]))", "{{reason}}")],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "Stage failures by stage",
                        [T("sum by (stage) (rate(orchestrator_stage_failures_total[5m]))", "{{stage}}")],
                        "ops",
                        width=8,
                    ),
                ],
            ),
            Row(
                "Capacity",
                [
                    Panel(
                        "CPU per process",
                        [T("sum by (job, instance) (rate(process_cpu_seconds_total[5m]))", "{{job}} {{instance}}")],
                        "percentunit",
                        width=8,
                    ),
                    Panel(
                        "Resident memory per process",
                        [T("sum by (job, instance) (process_resident_memory_bytes)", "{{job}} {{instance}}")],
                        "bytes",
                        width=8,
                    ),
                    Panel(
                        "Targets up",
                        [T(f'sum by (job) (up{{job=~"{"|".join(JOBS)}"}})', "{{job}}")],
                        width=8,
                    ),
                    Panel(
                        "Audio received",
                        [T('sum(rate(ingress_bytes_total{job="gateway"}[5m]))', "bytes/s")],
                        "Bps",
                        description="32000 B/s per real-time session",
                        width=8,
                    ),
                    Panel(
                        "Events sent by type",
                        [T('sum by (type) (rate(egress_events_total{job="gateway"}[5m]))', "{{type}}")],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "ASR sessions in flight and waiting",
                        [
                            T('sum by (pool) (asr_inflight_sessions{job="asr"})', "in flight {{pool}}"),
                            T('sum by (pool) (asr_queued_sessions{job="asr"})', "queued {{pool}}"),
                            T("sum(orchestrator_asr_admission_waiting)", "waiting at the gateway"),
                        ],
                        width=8,
                    ),
                    Panel(
                        "Client send queues",
                        [
                            T("sum(orchestrator_send_queue_events)", "events queued"),
                            T("max(orchestrator_send_queue_events_max)", "slowest session"),
                        ],
                        width=8,
                    ),
                ],
            ),
        ],
    )

    stages = Dashboard(
        "speechgw-stages",
        "speechgw / stages",
        "Each stage's latency as the gateway sees it and inside its service, failures and service counters",
        [
            _stage_row(
                "vad",
                "vad_latency_ms",
                [
                    Panel(
                        "vad: streams and flows",
                        [
                            T('sum(vad_active_streams{job="vad"})', "streams"),
                            T('sum(vad_active_flows{job="vad"})', "flows"),
                        ],
                    ),
                    Panel(
                        "vad: speech segments and rejected calls",
                        [
                            T('sum(rate(vad_segments_total{job="vad"}[5m]))', "segments/s"),
                            T('sum by (code) (rate(vad_rejected_total{job="vad"}[5m]))', "rejected {{code}}"),
                        ],
                        "ops",
                    ),
                ],
            ),
            _stage_row(
                "denoise",
                "dn_latency_ms",
                [
                    Panel(
                        "denoise: streams and rejected calls",
                        [
                            T('sum(dn_active_streams{job="denoise"})', "streams"),
                            T('sum by (code) (rate(dn_rejected_total{job="denoise"}[5m]))', "rejected {{code}}"),
                        ],
                        width=24,
                    )
                ],
            ),
            _stage_row(
                "lid",
                "lid_latency_ms",
                [
                    Panel(
                        "lid: answers by reason and language",
                        [T('sum by (reason, lang) (rate(lid_results_total{job="lid"}[5m]))', "{{lang}} {{reason}}")],
                        "ops",
                    ),
                    Panel(
                        "lid: model call and speech detection (P95)",
                        [
                            T(quantile(0.95, "lid_inference_ms", selector='job="lid"'), "inference"),
                            T(quantile(0.95, "lid_vad_ms", selector='job="lid"'), "speech detection"),
                            T(quantile(0.95, "lid_speech_latency_ms", selector='job="lid"'), "speech to answer"),
                        ],
                        "ms",
                    ),
                ],
            ),
            _stage_row(
                "asr",
                "asr_latency_ms",
                [
                    Panel(
                        "asr: link bytes by codec",
                        [T("sum by (codec) (rate(asr_link_bytes_total[5m]))", "{{codec}}")],
                        "Bps",
                    ),
                    Panel(
                        "asr: Opus encoder failures",
                        [T("sum(increase(pcm_to_opus_fail_total[1h]))", "sessions on PCM")],
                    ),
                ],
            ),
            _stage_row(
                "compress",
                "compress_latency_ms",
                [
                    Panel(
                        "compress: archives by status, uploads by path",
                        [
                            T('sum by (status) (rate(compress_archives_total{job="compress"}[5m]))', "{{status}}"),
                            T('sum by (path) (rate(compress_uploads_total{job="compress"}[5m]))', "upload {{path}}"),
                        ],
                        "ops",
                    ),
                    Panel(
                        "compress: spooled archives and upload failures",
                        [
                            T('sum(compress_pending_archives{job="compress"})', "spooled"),
                            T('sum(increase(compress_upload_failures_total{job="compress"}[1h]))', "failures (1 h)"),
                        ],
                    ),
                ],
            ),
        ],
    )

    pool = 'pool=~"$pool"'
    pools = Dashboard(
        "speechgw-asr-pools",
        "speechgw / ASR pools",
        "Each ASR pool: members, breakers, the latency SLIs, and what its ASR processes are doing",
        [
            Row(
                "Members",
                [
                    Panel(
                        "Healthy members",
                        [T(f"sum by (pool) (orchestrator_asr_pool_members_healthy{{{pool}}})", "{{pool}}")],
                        width=8,
                    ),
                    Panel(
                        "Breaker state (0 closed, 1 half-open, 2 open)",
                        [T(f"max by (pool, addr) (orchestrator_asr_member_breaker_state{{{pool}}})", "{{addr}}")],
                        width=8,
                    ),
                    Panel(
                        "Member picks by result",
                        [
                            T(
                                f"sum by (pool, result) (rate(orchestrator_asr_pool_picks_total{{{pool}}}[5m]))",
                                "{{pool}} {{result}}",
                            )
                        ],
                        "ops",
                        width=8,
                    ),
                ],
            ),
            Row(
                "Latency",
                [
                    Panel(
                        "First partial (P50, P95)",
                        [
                            T(
                                quantile(
                                    0.5, "orchestrator_first_partial_latency_ms", "pool", f'job="gateway", {pool}'
                                ),
                                "P50 {{pool}}",
                            ),
                            T(
                                quantile(
                                    0.95, "orchestrator_first_partial_latency_ms", "pool", f'job="gateway", {pool}'
                                ),
                                "P95 {{pool}}",
                            ),
                        ],
                        "ms",
                        width=8,
                    ),
                    Panel(
                        "Final lag (P50, P95)",
                        [
                            T(
                                quantile(0.5, "orchestrator_final_lag_ms", "pool", f'job="gateway", {pool}'),
                                "P50 {{pool}}",
                            ),
                            T(
                                quantile(0.95, "orchestrator_final_lag_ms", "pool", f'job="gateway", {pool}'),
                                "P95 {{pool}}",
                            ),
                        ],
                        "ms",
                        width=8,
                    ),
                    Panel(
                        "In the service: event latency (P95)",
                        [T(quantile(0.95, "asr_latency_ms", "pool, type", f'job="asr", {pool}'), "{{pool}} {{type}}")],
                        "ms",
                        width=8,
                    ),
                ],
            ),
            Row(
                "Decoding",
                [
                    Panel(
                        "Decode seconds per audio second",
                        [
                            T(
                                f'sum by (pool) (rate(asr_decode_seconds_total{{job="asr", {pool}}}[5m])) / '
                                f'sum by (pool) (rate(asr_audio_seconds_total{{job="asr", {pool}}}[5m]))',
                                "{{pool}}",
                            )
                        ],
                        width=8,
                    ),
                    Panel(
                        "Sessions in flight, queued; decode queue",
                        [
                            T(f'sum by (pool) (asr_inflight_sessions{{job="asr", {pool}}})', "in flight {{pool}}"),
                            T(f'sum by (pool) (asr_queued_sessions{{job="asr", {pool}}})', "queued {{pool}}"),
                            T(f'sum by (pool) (asr_queue_depth{{job="asr", {pool}}})', "decode queue {{pool}}"),
                        ],
                        width=8,
                    ),
                    Panel(
                        "Partials skipped, streams refused",
                        [
                            T(
                                f'sum by (pool) (rate(asr_partials_skipped_total{{job="asr", {pool}}}[5m]))',
                                "skipped {{pool}}",
                            ),
                            T(f'sum by (pool) (rate(asr_refused_total{{job="asr", {pool}}}[5m]))', "refused {{pool}}"),
                        ],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "Events sent by type",
                        [
                            T(
                                f'sum by (pool, type) (rate(asr_events_total{{job="asr", {pool}}}[5m]))',
                                "{{pool}} {{type}}",
                            )
                        ],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "Texts refused by the hallucination guards",
                        [
                            T(
                                f'sum by (pool, guard) (rate(asr_guard_refused_total{{job="asr", {pool}}}[5m]))',
                                "{{pool}} {{guard}}",
                            )
                        ],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "Link packets by outcome",
                        [
                            T(
                                f'sum by (pool, outcome) (rate(asr_packets_total{{job="asr", {pool}}}[5m]))',
                                "{{pool}} {{outcome}}",
                            )
                        ],
                        "ops",
                        width=8,
                    ),
                ],
            ),
        ],
        pool_variable=True,
    )

    deferred = Dashboard(
        "speechgw-deferred",
        "speechgw / deferred transcripts and archive",
        "Record-only sessions, the deferred transcription jobs that catch up on them, and the archive spool",
        [
            Row(
                "Deferred transcripts",
                [
                    Panel(
                        "Record-only sessions",
                        [
                            T(
                                "sum by (mode) "
                                '(rate(orchestrator_session_modes_total{mode=~"record_only|asr_lost"}[5m]))',
                                "{{mode}}",
                            )
                        ],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "Jobs backlog and running",
                        [
                            T('sum(transcribe_jobs_backlog{job="gateway"})', "backlog"),
                            T('sum(transcribe_jobs_inflight{job="gateway"})', "running"),
                        ],
                        width=8,
                    ),
                    Panel(
                        "Oldest unfinished job",
                        [T('max(transcribe_jobs_oldest_age_seconds{job="gateway"})', "age")],
                        "s",
                        description=f"warns above {JOB_BACKLOG_MAX_AGE_S} s",
                        width=8,
                    ),
                    Panel(
                        "Job attempts by outcome",
                        [T('sum by (outcome) (rate(transcribe_jobs_total{job="gateway"}[5m]))', "{{outcome}}")],
                        "ops",
                        width=12,
                    ),
                    Panel(
                        "Background loops restarted",
                        [T("sum by (loop) (increase(orchestrator_background_restarts_total[1h]))", "{{loop}}")],
                        width=12,
                        exempt="a loop's series appears at its first restart (an error); a healthy gateway has none",
                    ),
                ],
            ),
            Row(
                "Archive",
                [
                    Panel(
                        "Archives spooled (upload backlog)",
                        [T('sum by (instance) (compress_pending_archives{job="compress"})', "{{instance}}")],
                        width=8,
                    ),
                    Panel(
                        "Archives by status",
                        [T('sum by (status) (rate(compress_archives_total{job="compress"}[5m]))', "{{status}}")],
                        "ops",
                        width=8,
                    ),
                    Panel(
                        "Uploads by path and failures",
                        [
                            T('sum by (path) (rate(compress_uploads_total{job="compress"}[5m]))', "{{path}}"),
                            T('sum(rate(compress_upload_failures_total{job="compress"}[5m]))', "failures"),
                        ],
                        "ops",
                        width=8,
                    ),
                ],
            ),
        ],
    )
    return [overview, stages, pools, deferred]


def dashboard_json(d: Dashboard) -> dict[str, Any]:
    """Grafana's dashboard model (schema 39) with a Prometheus data source variable."""
    ds = {"type": "prometheus", "uid": "${datasource}"}
    panels: list[dict[str, Any]] = []
    y = 0
    pid = 1
    for row in d.rows:
        panels.append({"id": pid, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})  # fmt: skip
        pid += 1
        y += 1
        x = 0
        for p in row.panels:
            h = 4 if p.kind == "stat" else 8
            if x + p.width > 24:
                x, y = 0, y + 8
            panel: dict[str, Any] = {
                "id": pid,
                "type": p.kind,
                "title": p.title,
                "datasource": ds,
                "gridPos": {"h": h, "w": p.width, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "targets": [
                    {"datasource": ds, "expr": t.expr, "legendFormat": t.legend or "__auto", "refId": chr(65 + i)}
                    for i, t in enumerate(p.targets)
                ],
            }
            if p.description:
                panel["description"] = p.description
            if p.kind == "timeseries":
                panel["options"] = {
                    "legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"},
                }
            panels.append(panel)
            pid += 1
            x += p.width
        y += 8
    variables: list[dict[str, Any]] = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "current": {}},
    ]
    if d.pool_variable:
        variables.append(
            {
                "name": "pool",
                "label": "pool",
                "type": "query",
                "datasource": ds,
                "query": {"query": "label_values(orchestrator_asr_pool_members_healthy, pool)", "refId": "pool"},
                "definition": "label_values(orchestrator_asr_pool_members_healthy, pool)",
                "includeAll": True,
                "multi": True,
                "allValue": ".+",
                "current": {"text": "All", "value": "$__all"},
                "refresh": 2,
            }
        )
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": ["speechgw"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": panels,
    }


# ----------------------------------------------------------------------------- scraping in Kubernetes

# The pods of deploy/k8s carry app.kubernetes.io/component `gateway`, `vad`, `lid`, `compress`,
# `asr-<pool>` and prometheus.io/{scrape,port,path} annotations. The job is the component up to its
# first dash, and an `asr-<pool>` pod gets its pool (Prometheus anchors these regexes at both ends).
K8S_JOB_REGEX = "([a-z]+)(?:-.+)?"
K8S_POOL_REGEX = "asr-(.+)"


def k8s_scrape_document() -> dict[str, Any]:
    """A Prometheus configuration for the stack of deploy/k8s: pod discovery, the jobs and labels the
    rules and dashboards expect, plus `namespace` and `pod` (the Prometheus adapter's rules need them)."""
    component = "__meta_kubernetes_pod_label_app_kubernetes_io_component"
    relabel = [
        {
            "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
            "regex": "speechgw",
            "action": "keep",
        },
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "regex": "true", "action": "keep"},
        {
            "source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
            "regex": "([^:]+)(?::\\d+)?;(\\d+)",
            "replacement": "$1:$2",
            "target_label": "__address__",
        },
        {
            "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
            "regex": "(.+)",
            "target_label": "__metrics_path__",
        },
        {"source_labels": [component], "regex": K8S_JOB_REGEX, "replacement": "$1", "target_label": "job"},
        {"source_labels": [component], "regex": K8S_POOL_REGEX, "replacement": "$1", "target_label": "pool"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "instance"},
    ]
    return {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": [str(RULES_FILE.relative_to(ROOT))],
        "scrape_configs": [
            {"job_name": "speechgw", "kubernetes_sd_configs": [{"role": "pod"}], "relabel_configs": relabel}
        ],
    }


# ------------------------------------------------------------------------------------ files and checks


@dataclass(frozen=True)
class Expression:
    """One PromQL expression of a file, for the test that evaluates them all against real data."""

    source: str  # "<file>: <panel or rule>"
    expr: str
    exempt: str | None  # why it may return no data on a healthy stack (it must still evaluate)
    signal: str | None = None  # for an alert: what must have data while the alert stays quiet


VARIABLES = {"$pool": ".+"}  # what Grafana would put for "All"


def expressions() -> Iterator[Expression]:
    for d in dashboards():
        for row in d.rows:
            for p in row.panels:
                for t in p.targets:
                    expr = t.expr
                    for var, value in VARIABLES.items():
                        expr = expr.replace(var, value)
                    yield Expression(f"{d.uid}.json: {p.title}", expr, p.exempt)
    for r in records():
        yield Expression(f"rules: {r.record}", r.expr, None)
    for a in alerts():
        yield Expression(
            f"rules: alert {a.name}",
            a.expr,
            a.exempt or "an alert's expression is empty while nothing is wrong; its signal is checked instead",
            None if a.exempt else a.signal,
        )


def rendered() -> dict[Path, str]:
    """Every generated file and its text."""
    rules = "# Generated by `python -m devtools.observability`; edit that module, not this file.\n"
    rules += yaml.safe_dump(rules_document(), sort_keys=False, width=200, allow_unicode=True)
    out = {RULES_FILE: rules}
    scrape = (
        "# Generated by `python -m devtools.observability`. A Prometheus configuration for the stack of deploy/k8s:\n"
        "# every speechgw pod with prometheus.io/scrape, job = its component (asr-<pool>: job asr, label pool).\n"
    )
    out[K8S_SCRAPE_FILE] = scrape + yaml.safe_dump(k8s_scrape_document(), sort_keys=False, width=200)
    for d in dashboards():
        out[DASHBOARD_DIR / f"{d.uid}.json"] = json.dumps(dashboard_json(d), indent=1, ensure_ascii=False) + "\n"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = p.parse_args(argv)
    stale = []
    for path, text in rendered().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'differs' if args.check else 'wrote'}: {path.relative_to(ROOT.parents[1])}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
