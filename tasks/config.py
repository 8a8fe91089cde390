"""Reading params.yaml into config dataclasses, writing JSON reports, and the error type for bad user input.

params.yaml is the one place of every setting's value: a config dataclass declares its fields, their types and
rules (`checked(...)`, field metadata), and no defaults. `from_params` is the one way a section becomes a config:
it refuses unknown and missing keys, checks each value against its type and rules, builds nested sections, and
runs the class's `resolve` hook for rules across fields. Any problem is one line naming the key and the reason.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

Config = TypeVar("Config")


class InputDataError(ValueError):
    """Bad user input (params, annotation files, images): the message names the file/row and the reason."""


class ParamError(InputDataError):
    """A setting that breaks a rule; `from_params` prefixes the file and the section, e.g. params.yaml: train."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputDataError(f"{path}: params file not found (run from the repository root)") from None
    except yaml.YAMLError as exc:
        raise InputDataError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise InputDataError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    return params


def checked(*, choices: Sequence[Any] | None = None, least: float | None = None, most: float | None = None,
            above: float | None = None) -> Any:
    """A config field with rules beyond its type: one of `choices`, >= `least`, <= `most`, > `above`."""
    rules = {"choices": choices, "least": least, "most": most, "above": above}
    return dataclasses.field(metadata={key: value for key, value in rules.items() if value is not None})


def from_params(cls: type[Config], params: Mapping[str, Any], source: str = "params.yaml") -> Config:
    """The section `cls.SECTION` of `params` as a `cls`, every value checked (see the module docstring)."""
    name = cls.SECTION
    try:
        config = _build(cls, params.get(name), name)
        resolve = getattr(config, "resolve", None)
        return resolve(params) if resolve else config
    except ParamError as exc:
        # _build names keys from the section on; a resolve hook names them within it.
        where = exc.key if exc.key == name or exc.key.startswith(f"{name}.") else f"{name}.{exc.key}"
        raise InputDataError(f"{source}: {where}: {exc.reason}") from None


def _build(cls: type, values: Any, path: str) -> Any:
    if not isinstance(values, Mapping):
        raise ParamError(path, f"must be a mapping of settings, got {_shown(values)}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ParamError(path, f"unknown keys {unknown}; allowed: {sorted(fields)}")
    missing = sorted(set(fields) - set(values))
    if missing:
        raise ParamError(path, f"missing keys {missing} (params.yaml lists every setting)")
    hints = typing.get_type_hints(cls)
    checked_values = {name: _value(hints[name], values[name], field.metadata, f"{path}.{name}")
                      for name, field in fields.items()}
    try:
        return cls(**checked_values)
    except ValueError as exc:  # a rule across the section's fields (the class's __post_init__)
        raise ParamError(path, str(exc)) from None


def _value(hint: Any, value: Any, rules: Mapping[str, Any], path: str) -> Any:
    optional = type(None) in typing.get_args(hint) and typing.get_origin(hint) in (typing.Union, types.UnionType)
    if value is None:
        if optional:
            return None
        raise ParamError(path, "must be set (null is not allowed here)")
    if optional:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    value = _typed(hint, value, path)
    _check_rules(value, rules, path)
    return value


def _typed(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint) or hint
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ParamError(path, f"must be true or false, got {_shown(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ParamError(path, f"must be an integer, got {_shown(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ParamError(path, f"must be a number, got {_shown(value)}")
    if hint in (str, Path):
        if isinstance(value, str) and value.strip():
            return hint(value)
        raise ParamError(path, f"must be a non-empty string, got {_shown(value)}")
    if origin in (tuple, Sequence, list):
        if isinstance(value, (list, tuple)):
            (item,) = set(typing.get_args(hint)) - {Ellipsis} or {Any}
            return tuple(_typed(item, entry, f"{path}[{index}]") for index, entry in enumerate(value))
        raise ParamError(path, f"must be a list, got {_shown(value)}")
    if origin in (dict, Mapping):
        if isinstance(value, Mapping):
            _, item = typing.get_args(hint) or (str, Any)
            return {key: _typed(item, entry, f"{path}.{key}") for key, entry in value.items()}
        raise ParamError(path, f"must be a mapping, got {_shown(value)}")
    return value  # Any


def _check_rules(value: Any, rules: Mapping[str, Any], path: str) -> None:
    if "choices" in rules and value not in rules["choices"]:
        raise ParamError(path, f"{value!r} is not one of {', '.join(map(str, rules['choices']))}")
    if "least" in rules and value < rules["least"]:
        raise ParamError(path, f"must be >= {rules['least']}, got {value!r}")
    if "most" in rules and value > rules["most"]:
        raise ParamError(path, f"must be <= {rules['most']}, got {value!r}")
    if "above" in rules and not value > rules["above"]:
        raise ParamError(path, f"must be > {rules['above']}, got {value!r}")


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})" if value is not None else "null"


def write_json(path: Path, value: dict[str, Any]) -> None:
    """A metrics or report file, pretty-printed, with its folder created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
