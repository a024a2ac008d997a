"""docs/configuration.md is the operators' list of variables: it must name every variable a loader reads,
with the loader's default, and nothing the loaders do not read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from common.envconf import EnvVar, env_vars
from common.service import LogConfig
from common.tracing import TracingConfig
from orchestrator.config import GatewayConfig
from services.asr.config import AsrConfig
from services.compress.config import CompressConfig
from services.denoise.config import DenoiseConfig
from services.lid.config import LidConfig
from services.vad.config import VadConfig

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
ROOTS = (LogConfig, TracingConfig, GatewayConfig, VadConfig, DenoiseConfig, LidConfig, AsrConfig, CompressConfig)
# Read by tools, not by a process's loader.
TOOLS = {
    "SPEECHGW_MODELS_DIR",
    "STACK_SERVICES",
    "STACK_TLS",
    "SPEECHGW_DEV_KEYS_DIR",
    "SPEECHGW_TOKEN",
    "PROMETHEUS",
    "PROMETHEUS_PORT",
}
ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \| ([^|]*) \|", re.M)


def render(default: Any) -> str:
    """A default as the page writes it."""
    if default is None:
        return "unset"
    if default in ("", ()):
        return "empty"
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    return f"`{default}`"


def loader_vars() -> dict[str, list[EnvVar]]:
    found: dict[str, list[EnvVar]] = {}
    for root in ROOTS:
        for var in env_vars(root):
            found.setdefault(var.name, []).append(var)
    return found


def doc_rows() -> list[tuple[str, str]]:
    return [(name, cell.strip()) for name, cell in ROW.findall(DOC.read_text())]


def test_a_variable_read_by_two_loaders_has_one_default() -> None:
    for name, seen in loader_vars().items():
        assert len({render(v.default) for v in seen}) == 1, f"{name} has defaults {[v.default for v in seen]}"


def test_every_loader_variable_is_documented_with_its_default() -> None:
    documented: dict[str, list[str]] = {}
    for name, cell in doc_rows():
        documented.setdefault(name, []).append(cell)
    problems = []
    for name, seen in sorted(loader_vars().items()):
        want = render(seen[0].default)
        cells = documented.get(name)
        if not cells:
            problems.append(f"{name}: not in docs/configuration.md (default {want})")
        for cell in cells or []:
            if cell.split(" ")[0] != want:
                problems.append(f"{name}: the page says {cell!r}, the loader's default is {want}")
    assert not problems, "\n".join(problems)


def test_the_page_documents_no_variable_the_loaders_do_not_read() -> None:
    known = set(loader_vars()) | TOOLS
    stale = sorted({name for name, _ in doc_rows()} - known)
    assert not stale, f"documented but read by no loader: {stale}"


def test_the_loaders_read_the_known_set() -> None:
    # 179 variables across the gateway and the five services (one shared by gateway and ASR), LID's
    # speech gate and floor and the ASR's gating, window and hallucination-guard settings included;
    # a variable lost from a loader shows up here as well as in the page check. Nine TLS variables
    # (six read by every process, three by the gateway's edge) and ASR_PROVISIONAL_LANG; eight limits
    # per client (orchestrator/edge/limits.py); the gateway's nine AUTH_* and the archive's record-URL
    # key and TTL; ASR_BATCH_MAX; the gateway's six archive-spool and job-wait variables; the fourteen
    # OTEL_* variables of the traces (common/tracing.py); ASR_WORD_TIMESTAMPS; RESUME_WINDOW_S and
    # RESUME_BUFFER_EVENTS; the shared job store's URL, lease and poll (JOBS_STORE_URL, JOBS_LEASE_SEC,
    # JOBS_POLL_SEC).
    assert len(loader_vars()) == 219
