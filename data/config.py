"""Typed configuration: ``params.yaml`` sections validated into frozen pydantic objects.

Every section of ``params.yaml`` is validated before anything runs. An unknown key or a value of the
wrong type raises :class:`ConfigError` whose message names where the value came from (the file, or the
``--set`` override that gave it) and the dotted key, one line per problem, e.g.
``params.yaml: melu.train.epochs: Input should be a valid integer (got 'ten')`` or
``--set train.epochs='ten': melu.train.epochs: ...``. A subsection missing from the file is an error (the
code defaults are not a silent fallback) unless its class lists it in ``optional_sections``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# a non-empty list of positive integers (layer widths, cut-offs, image sizes)
PositiveInts = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)]
# where a model runs: "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:<index>" or "mps"
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")]

T = TypeVar("T", bound="StrictConfig")


class ConfigError(ValueError):
    """A params file or override does not match its typed config."""


class StrictConfig(BaseModel):
    """Base for every config object: unknown keys and wrong types are errors, objects are immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    # subsections that may be left out of params.yaml on purpose (their code defaults then apply)
    optional_sections: ClassVar[tuple[str, ...]] = ()


def missing_sections(cls: type[BaseModel], raw: dict, prefix: str) -> list[str]:
    """Dotted names of the subsections of ``cls`` absent from ``raw`` (recursively), except declared optional ones."""
    out = []
    for name, field in cls.model_fields.items():
        sub = field.annotation
        if not (isinstance(sub, type) and issubclass(sub, StrictConfig)):
            continue
        if name not in raw:
            if name not in getattr(cls, "optional_sections", ()):
                out.append(f"{prefix}.{name}")
        elif isinstance(raw[name], dict):
            out += missing_sections(sub, raw[name], f"{prefix}.{name}")
    return out


def _source_of(loc: tuple, source: str, overrides: dict) -> str:
    """The override that set (a parent of) the value at ``loc``, else the file."""
    path = [str(p) for p in loc]
    for key, value in overrides.items():
        parts = key.split(".")
        if path[: len(parts)] == parts or parts[: len(path)] == path:
            return f"--set {key}={value!r}"
    return source


def _format(err: ValidationError, source: str, section: str, overrides: dict | None = None) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"].removeprefix("Value error, ")
        named = re.match(r"^([\w.]+): (.*)$", msg, flags=re.S) if not loc else None
        if named:  # a check across keys (model_validator) whose message starts with the key it is about
            loc, msg = tuple(named.group(1).split(".")), named.group(2)
        key = ".".join([section, *[str(p) for p in loc]]) if section else ".".join(str(p) for p in loc)
        where = _source_of(loc, source, overrides or {}) if loc else source
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: {key}: unknown key")
        elif named or not loc:
            lines.append(f"{where}: {key or section}: {msg}")
        else:
            lines.append(f"{where}: {key}: {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def deep_update(base: dict, overrides: dict) -> dict:
    """Return a copy of ``base`` with ``overrides`` merged in; dotted keys ('train.epochs') are allowed."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
        last = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            node[last] = deep_update(node[last], value)
        else:
            node[last] = value
    return out


def validate(cls: type[T], raw: dict[str, Any], source: str = "<config>", section: str = "", overrides: dict | None = None) -> T:
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format(err, source, section, overrides)) from None


def load_section(cls: type[T], section: str, path: str | Path = "params.yaml", overrides: dict | None = None) -> T:
    """Load ``section`` of the YAML file at ``path`` into ``cls``, applying ``overrides`` first."""
    path = Path(path)
    try:
        raw_all = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if section not in raw_all:
        raise ConfigError(f"{path}: section {section!r} is missing")
    if not isinstance(raw_all[section], dict):
        raise ConfigError(f"{path}: {section}: expected a mapping of keys (got {raw_all[section]!r})")
    missing = missing_sections(cls, raw_all[section], section)
    if missing:
        raise ConfigError("\n".join(f"{path}: {m}: subsection missing (the code defaults are not used silently; "
                                     f"copy it from the repository's params.yaml)" for m in missing))
    raw = deep_update(raw_all[section], overrides or {})
    return validate(cls, raw, source=str(path), section=section, overrides=overrides)


def updated(cfg: T, overrides: dict[str, Any], source: str = "<update>") -> T:
    """A validated copy of ``cfg`` with dotted-key ``overrides`` (never ``model_copy(update=...)``, which skips the
    checks and so can produce a config the file could not hold)."""
    return validate(type(cfg), deep_update(cfg.model_dump(mode="python"), overrides), source=source, overrides=overrides)
