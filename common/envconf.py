"""The one environment loader of every component (STYLE §4).

A component's config is a frozen dataclass; each field that an operator may set names its variable
in its metadata (`setting(0.5, env="VAD_THRESHOLD")`), and `load_env(VadConfig, os.environ)` builds
the instance. The field's type says how the text is read; an unset variable (or an empty one, for
any type but text) keeps the default; a nested config dataclass (`nested(...)`) is loaded the same
way. Dataclasses owned by another layer (the sans-I/O session core, say) stay free of environment
names: the owner of the loader gives their table in `nested(..., env={"field": "NAME"})`.

Bad text, and anything a config's `__post_init__` refuses, raises `ConfigError` naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

C = TypeVar("C")
# Reads a set variable's text; the field's type picks one when the field has none.
Parse = Callable[[str], Any]
# The default of an unset variable when it depends on fields loaded before it (e.g. ASR_MODEL on ASR_ENGINE).
DefaultFrom = Callable[[Mapping[str, Any]], Any]


class ConfigError(ValueError):
    """An environment variable holds a value its component cannot use."""


def setting(
    default: Any,
    *,
    env: str,
    parse: Parse | None = None,
    default_from: DefaultFrom | None = None,
) -> Any:
    """A field read from the environment variable `env` (its name relative to the loader's prefix)."""
    meta: dict[str, Any] = {"env": env}
    if parse is not None:
        meta["parse"] = parse
    if default_from is not None:
        meta["default_from"] = default_from
    return dataclasses.field(default=default, metadata=meta)


def nested(
    cls: type[Any],
    *,
    prefix: str = "",
    env: Mapping[str, str] | None = None,
    parse: Mapping[str, Parse] | None = None,
) -> Any:
    """A config dataclass inside another. `prefix` goes before the names of its fields; `env` (and
    `parse`) name the variables of a dataclass that does not declare them itself."""
    meta = {"nested": True, "prefix": prefix, "env_table": dict(env or {}), "parse_table": dict(parse or {})}
    return dataclasses.field(default_factory=cls, metadata=meta)


@dataclasses.dataclass(frozen=True)
class EnvVar:
    """One variable a loader reads: its full name, its default, and where it lands."""

    name: str
    default: Any
    path: str  # dotted field path from the root config, e.g. `vad.batch_ms`


def load_env(cls: type[C], env: Mapping[str, str] | None = None, prefix: str = "") -> C:
    """Build `cls` from `env` (default: the process environment)."""
    return _load(cls, os.environ if env is None else env, prefix, {}, {})


def env_vars(cls: type[Any], prefix: str = "") -> list[EnvVar]:
    """Every variable `load_env(cls)` reads, with its default (for docs and their test)."""
    return list(_walk(cls, prefix, {}, ""))


def env_name(cls: type[Any], field_name: str) -> str:
    """The variable a field of `cls` is read from (for messages of `__post_init__` checks)."""
    for f in dataclasses.fields(cls):
        if f.name == field_name and "env" in f.metadata:
            return str(f.metadata["env"])
    return field_name


def parse_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("not a boolean (true/false)")


def parse_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parser(hint: Any) -> Parse:
    """How the text of a variable becomes a value of the field's type."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _parser(args[0])
    if hint is bool:
        return parse_bool
    if hint is int:
        return int
    if hint is float:
        return float
    if hint is str:
        return str
    if hint is Path:
        return Path
    if typing.get_origin(hint) is tuple:
        return parse_list
    raise TypeError(f"no environment reader for type {hint!r}")


def _describe(parse: Parse) -> str:
    return {int: "an integer", float: "a number", parse_bool: "a boolean (true/false)"}.get(parse, "valid")


def _fields(cls: type[Any]) -> Iterator[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f, hints[f.name]


def _load(
    cls: type[C], env: Mapping[str, str], prefix: str, table: Mapping[str, str], parsers: Mapping[str, Parse]
) -> C:
    values: dict[str, Any] = {}
    for f, hint in _fields(cls):
        if f.metadata.get("nested"):
            values[f.name] = _load(
                hint, env, prefix + f.metadata["prefix"], f.metadata["env_table"], f.metadata["parse_table"]
            )
            continue
        name = table.get(f.name) or f.metadata.get("env")
        if name is None or not f.init:
            continue
        key = prefix + name
        raw = env.get(key)
        # A set but empty text variable means empty (ASR_LANG="" lets the model detect); any other
        # type reads empty as unset.
        if raw is None or (raw.strip() == "" and hint is not str):
            if "default_from" in f.metadata:
                values[f.name] = f.metadata["default_from"](values)
            continue
        parse = parsers.get(f.name) or f.metadata.get("parse") or _parser(hint)
        try:
            values[f.name] = parse(raw.strip() if parse in (int, float, parse_bool) else raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r} is not {_describe(parse)}") from None
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(_with_env_names(str(exc), cls, prefix, table)) from None


def _with_env_names(message: str, cls: type[Any], prefix: str, table: Mapping[str, str]) -> str:
    """A `__post_init__` may name a field (`grpc_port=70000 ...`); the operator needs the variable."""
    for f in dataclasses.fields(cls):
        name = table.get(f.name) or f.metadata.get("env")
        if name is not None:
            message = re.sub(rf"(?<![\w.]){re.escape(f.name)}=", f"{prefix}{name}=", message)
    return message


def _walk(cls: type[Any], prefix: str, table: Mapping[str, str], path: str) -> Iterator[EnvVar]:
    for f, hint in _fields(cls):
        if f.metadata.get("nested"):
            yield from _walk(hint, prefix + f.metadata["prefix"], f.metadata["env_table"], path + f.name + ".")
            continue
        name = table.get(f.name) or f.metadata.get("env")
        if name is not None:
            default = f.default if f.default is not dataclasses.MISSING else None
            yield EnvVar(prefix + name, default, path + f.name)
