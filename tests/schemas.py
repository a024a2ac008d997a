"""Validates events against the published JSON Schemas in docs/schemas (the protocol contract)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


@cache
def validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / f"{kind}.json").read_text()))


def check_event(event: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError unless `event` matches the schema of its type."""
    validator(event["type"]).validate(event)
