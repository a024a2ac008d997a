"""The session's language, settled once (SPEC §2, §4). No I/O.

- `hints.user_lang_pref` other than `auto` overrides LID: LID is not asked at all.
- Otherwise the LID answer decides. LID's `und` (it heard no speech, or nothing it was sure of), a
  failed or absent LID, or LID ending without an answer all mean "no language": the default route,
  and the ASR engine detects the language itself.
- The decision implies the ASR pool: `route(lang, domain)` of the routing table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

UNDETERMINED = "und"  # BCP 47 "undetermined": what LID answers when it cannot tell

Route = Callable[[str, str], str]


@dataclass(frozen=True, slots=True)
class LanguageDecision:
    lang: str  # "" = none: the default route, the engine detects
    pool: str  # the ASR pool it routes to ("" without a routing table)
    source: str  # "hint" | "lid" | "default"
    score: float = 0.0
    heard: str = ""  # what LID answered, also when it was `und`


class LanguageDecider:
    """Feed it the LID outcome; `decision` is set by the first input that settles it, never changed."""

    def __init__(self, route: Route | None, domain: str, lang_pref: str, lid_configured: bool) -> None:
        self._route = route
        self._domain = domain
        self.decision: LanguageDecision | None = None
        self.asks_lid = lid_configured and lang_pref in ("", "auto")
        if lang_pref not in ("", "auto"):
            self._settle(lang_pref, "hint", 1.0, lang_pref)
        elif not lid_configured:
            self._settle("", "default", 0.0, "")

    def on_lid_answer(self, lang: str, score: float) -> LanguageDecision | None:
        """LID answered; returns the decision if this settled it."""
        if self.decision is not None:
            return None
        return self._settle("" if lang in ("", UNDETERMINED) else lang, "lid", score, lang or UNDETERMINED)

    def on_lid_over(self) -> LanguageDecision | None:
        """LID failed or ended without answering: the default route."""
        if self.decision is not None:
            return None
        return self._settle("", "default", 0.0, "")

    def _settle(self, lang: str, source: str, score: float, heard: str) -> LanguageDecision:
        pool = self._route(lang, self._domain) if self._route is not None else ""
        self.decision = LanguageDecision(lang, pool, source, score, heard)
        return self.decision
