"""Typed configuration: ``params.yaml`` sections validated into frozen pydantic objects.

Every section of ``params.yaml`` is validated before anything runs. An unknown key or a value of the
wrong type raises :class:`ConfigError` whose message names the file and the dotted key, e.g.
``params.yaml: melu.train.epochs: Input should be a valid integer (got 'ten')``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound="StrictConfig")


class ConfigError(ValueError):
    """A params file or override does not match its typed config."""


class StrictConfig(BaseModel):
    """Base for every config object: unknown keys and wrong types are errors, objects are immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _format(err: ValidationError, source: str, section: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join([section, *[str(p) for p in e["loc"]]]) if section else ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: {key}: unknown key")
        else:
            lines.append(f"{source}: {key}: {e['msg']} (got {e.get('input')!r})")
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


def validate(cls: type[T], raw: dict[str, Any], source: str = "<config>", section: str = "") -> T:
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format(err, source, section)) from None


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
    raw = deep_update(raw_all[section], overrides or {})
    return validate(cls, raw, source=str(path), section=section)
