"""Mapping YAML onto typed config dataclasses, with errors that name the offending key.

Every config section is a plain dataclass beside its component; this module only knows how
to fill one from a mapping: unknown keys, wrong types and values the dataclass's own
``__post_init__`` rejects all fail here, before any process group or file is touched.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

import yaml

from strata.errors import ConfigError, StrataError
from strata.storage import fs

T = TypeVar("T")


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """An instance of dataclass ``cls`` from ``data``; ``path`` prefixes key names in errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"'{path or 'config'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {}
    for key, raw in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{dotted}' (known keys here: {known})")
        values[key] = _coerce(hints[key], raw, dotted)
    try:
        return cls(**values)
    except ConfigError as exc:
        # A component's __post_init__ names its field without the section prefix; add it.
        if path and path not in str(exc):
            raise ConfigError(f"{path}: {exc}") from exc
        raise
    except StrataError as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from exc


def _coerce(hint: Any, raw: Any, dotted: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for option in inner:
            try:
                return _coerce(option, raw, dotted)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"'{dotted}': bad value {raw!r}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, raw, dotted)
    if origin in (list, tuple):
        item = args[0] if args else Any
        if isinstance(raw, str) and item in (int, float):
            raw = _comma_list(raw, item, dotted)
        if not isinstance(raw, (list, tuple)):
            example = " such as [10, 10] or 10,10" if item in (int, float) else ""
            raise ConfigError(f"'{dotted}' must be a list{example}, got {type(raw).__name__} {raw!r}")
        items = [_coerce(item, x, f"{dotted}[{i}]") for i, x in enumerate(raw)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(raw, dict):
            raise ConfigError(f"'{dotted}' must be a mapping, got {type(raw).__name__}")
        return dict(raw)
    if hint is Any:
        return raw
    if hint is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"'{dotted}' must be true or false, got {raw!r}")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"'{dotted}' must be an integer, got {raw!r}")
        return raw
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ConfigError(f"'{dotted}' must be a number, got {raw!r}")
        return float(raw)
    if hint is str:
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ConfigError(f"'{dotted}' must be a string, got {raw!r}")
        return str(raw)
    return raw


def _comma_list(text: str, item: type, dotted: str) -> list[Any]:
    """A list of numbers spelled ``10,10`` (as `strata pack --fanouts` takes them, and as
    ``--set train.fanouts=10,10`` arrives), the same as ``[10, 10]``."""
    parts = [part.strip() for part in text.strip().strip("[]").split(",")]
    try:
        return [item(part) for part in parts]
    except ValueError:
        kind = "integers" if item is int else "numbers"
        raise ConfigError(f"'{dotted}' must be a list of {kind} such as [10, 10] or 10,10; got '{text}'") from None


def load_yaml(url: str) -> dict[str, Any]:
    if not fs.exists(url):
        raise ConfigError(f"config file '{url}' does not exist")
    try:
        data = yaml.safe_load(fs.read_text(url))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{url}' is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{url}' must hold a mapping at the top level")
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, value = item.split("=", 1)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return data
