"""Reading params.yaml, writing JSON reports, and the error type for bad user input."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


class InputDataError(ValueError):
    """Bad user input (params, annotation files, images): the message names the file/row and the reason."""


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


def section(params: dict[str, Any], name: str, allowed: set[str], source: str = "params.yaml") -> dict[str, Any]:
    """One params section, with unknown keys (usually typos) rejected instead of silently ignored."""
    values = params.get(name)
    if not isinstance(values, dict):
        raise InputDataError(f"{source}: section '{name}' is missing or not a mapping")
    return _known_keys(values, name, allowed, source)


def subsection(values: dict[str, Any], path: str, allowed: set[str], source: str = "params.yaml") -> dict[str, Any]:
    """A nested mapping of a section (e.g. `clip.scratch`), popped from `values`; missing or null means defaults."""
    nested = values.pop(path.rsplit(".", 1)[-1], None)
    if nested is None:
        return {}
    if not isinstance(nested, dict):
        raise InputDataError(f"{source}: '{path}' must be a mapping, got {type(nested).__name__}")
    return _known_keys(nested, path, allowed, source)


def _known_keys(values: dict[str, Any], name: str, allowed: set[str], source: str) -> dict[str, Any]:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise InputDataError(f"{source}: unknown keys in '{name}': {unknown}; allowed: {sorted(allowed)}")
    return values


def write_json(path: Path, value: dict[str, Any]) -> None:
    """A metrics or report file, pretty-printed, with its folder created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
