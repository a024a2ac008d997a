"""The committed gRPC code is exactly what `make proto` generates from proto/*.proto."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    (tmp_path / "proto").mkdir()
    for src in (ROOT / "proto").glob("*.proto"):
        shutil.copy(src, tmp_path / "proto" / src.name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            "--python_out=.",
            "--pyi_out=.",
            "--grpc_python_out=.",
            *sorted(p.name and f"proto/{p.name}" for p in (ROOT / "proto").glob("*.proto")),
        ],
        cwd=tmp_path,
        check=True,
    )
    generated = sorted(p.name for p in (tmp_path / "proto").iterdir() if not p.name.endswith(".proto"))
    committed = sorted(p.name for p in (ROOT / "proto").iterdir() if "_pb2" in p.name)
    assert generated == committed, "run `make proto`"
    for name in generated:
        assert (tmp_path / "proto" / name).read_bytes() == (ROOT / "proto" / name).read_bytes(), (
            f"proto/{name} drifted from its .proto: run `make proto`"
        )
