"""Hotword effect (docs/performance.md, "Hotwords"): `python -m tests.perf.bench_hotwords`.

Sentences with rare names, spoken by espeak-ng (tests.corpus, two voices), decoded as one final
(`Engine.transcribe`) without and with the session's hotword list (`hints.hotwords`: every name of
the set). Per engine and set:

- name recall: sentences whose name is in the hypothesis (case-insensitive, whole word);
- false names: names of the list in a hypothesis whose sentence does not hold them (the prompt
  leaking into the text);
- WER of the whole sentence (tests.wer).

The dev set is the one anything was looked at on (the prompt format: the names joined with ", ",
as `WhisperEngine` does); the held-out set (other names, other sentence frames) was run once, after.
pocketsphinx ignores hotwords (its `ack` says `hotwords_applied: false`): its row is the list-less
decode twice, for the baseline.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.asr.config import AsrConfig
from services.asr.engines import Engine, build_engine
from tests.corpus import Utterance, synthesize
from tests.wer import wer

DEV = (
    ("Please forward the invoice to Xiomara before noon.", "Xiomara"),
    ("The package for Oluwaseun arrived this morning.", "Oluwaseun"),
    ("We asked Tadeusz to review the budget again.", "Tadeusz"),
    ("Call Siobhan when the train leaves the station.", "Siobhan"),
    ("The new contract was signed by Ngozi yesterday.", "Ngozi"),
    ("Our meeting with Thorvaldur moved to Thursday.", "Thorvaldur"),
    ("Send the slides to Przybylski after lunch.", "Przybylski"),
    ("The report from Okonkwo needs two more pages.", "Okonkwo"),
)
HELD_OUT = (
    ("Remind Eilidh that the shop closes at six.", "Eilidh"),
    ("I think Wojciechowski left his keys in the car.", "Wojciechowski"),
    ("Could Anouk bring the printed tickets tomorrow?", "Anouk"),
    ("The flight of Quarshie lands late tonight.", "Quarshie"),
)
VOICES = ("en-us", "en-gb")
ENGINES = (("whisper", "tiny.en"), ("whisper", "base"), ("sphinx", "en-us"))


@dataclass(frozen=True)
class Case:
    text: str
    name: str
    pcm: np.ndarray


def build(sentences: Sequence[tuple[str, str]]) -> list[Case]:
    return [
        Case(text, name, synthesize(Utterance(text, "en", VOICES[i % len(VOICES)])))
        for i, (text, name) in enumerate(sentences)
    ]


def holds(hypothesis: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name.lower())}\b", hypothesis.lower()) is not None


@dataclass(frozen=True)
class Score:
    recall: int
    false_names: int
    wer: float
    n: int
    ms: float


def score(engine: Engine, cases: Sequence[Case], hotwords: tuple[str, ...]) -> tuple[Score, list[str]]:
    hyps, took = [], []
    for case in cases:
        t0 = time.process_time()
        hyps.append(engine.transcribe(case.pcm, "en", hotwords).text)
        took.append(time.process_time() - t0)
    recall = sum(holds(h, c.name) for h, c in zip(hyps, cases, strict=True))
    false_names = sum(holds(h, n) and n != c.name for h, c in zip(hyps, cases, strict=True) for n in hotwords)
    ms = float(np.median(took)) * 1000
    return Score(recall, false_names, wer([c.text for c in cases], hyps), len(cases), ms), hyps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=",".join(f"{e}:{m}" for e, m in ENGINES))
    parser.add_argument("--sets", default="dev,held-out")
    parser.add_argument("--show", action="store_true", help="print every hypothesis")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    sets = {name: build(DEV if name == "dev" else HELD_OUT) for name in args.sets.split(",")}
    print("| engine | set | hotwords | name recall | false names | WER | decode CPU (median) |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.engines.split(","):
        kind, model = spec.split(":")
        engine = build_engine(AsrConfig(engine=kind, model=model))
        for set_name, cases in sets.items():
            names = tuple(c.name for c in cases)
            for label, hotwords in (("none", ()), (f"{len(names)} names", names)):
                s, hyps = score(engine, cases, hotwords)
                applied = "" if engine.supports_hotwords or not hotwords else " (ignored)"
                print(
                    f"| {engine.model} | {set_name} | {label}{applied} | {s.recall}/{s.n} | {s.false_names} | "
                    f"{s.wer:.3f} | {s.ms:.0f} ms |"
                )
                if args.show:
                    for h in hyps:
                        print(f"    {h}")


if __name__ == "__main__":
    main()
