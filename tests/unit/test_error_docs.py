"""docs/errors.md lists every error code of the protocol, each fatal one with its close code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.core.protocol import FATAL_CLOSE, ErrorCode

pytestmark = pytest.mark.unit

DOC = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
ROW = re.compile(r"^\| `([a-z_]+)` \| [^|]* \| ([^|]*) \|", re.M)


def test_every_code_is_documented() -> None:
    documented = {code for code, _ in ROW.findall(DOC)}
    assert {c.value for c in ErrorCode} <= documented, sorted({c.value for c in ErrorCode} - documented)


@pytest.mark.parametrize(("code", "close"), sorted(FATAL_CLOSE.items()))
def test_every_fatal_code_names_its_close_code(code: ErrorCode, close: int) -> None:
    cell = dict(ROW.findall(DOC))[code.value]
    # Refusals answered before the upgrade name their HTTP status instead (origin_not_allowed).
    assert cell.split()[0] == str(int(close)) or cell.startswith("HTTP"), (code, cell)
