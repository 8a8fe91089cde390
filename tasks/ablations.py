"""Presets (configs/experiments/*.yaml): the paper's runs and ablation rows as DVC experiments, and their table.

    python -m tasks.ablations list
    python -m tasks.ablations flags PRESET [--on BASE]     # the `dvc exp run -S ...` flags of a preset
    python -m tasks.ablations apply PRESET                 # run it in the workspace (`make demo`: demo-cpu)
    python -m tasks.ablations run [PRESET ...] [--on BASE] # one isolated experiment each (default: every ablation)
    python -m tasks.ablations table [--on BASE] [--json]   # re-ranked recalls of each preset's newest experiment

A preset file holds a description and `set`, overrides of params.yaml by dotted key. `--on BASE` applies another
preset first: `run table3-no-action-knowledge --on demo-cpu` is that ablation on the demo's CPU budget, `--on
flickr30k-vit-b-16` on the paper's Flickr30K run. Experiments share the stages their parameters do not touch
(DVC's run cache), so an ablation re-runs only what it changes.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks import pipeline
from tasks.config import InputDataError, load_params

PRESETS_DIR = Path("configs/experiments")
# Runs of a whole data set or budget, the bases of ablations; every other preset is an ablation row.
BASES = ("demo-cpu", "flickr30k-vit-b-16", "coco-vit-b-16")
EXPERIMENT_NAME = re.compile(r"ablation-(?P<preset>[a-z0-9_-]+?)(?:--(?P<base>[a-z0-9_-]+?))?-(?P<stamp>\d{8}-\d{6})")
METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    overrides: dict[str, Any]


def _check_keys(path: Path, overrides: dict[str, Any], params: dict[str, Any]) -> None:
    for key in overrides:
        section: Any = params
        for part in key.split("."):
            if not isinstance(section, dict) or part not in section:
                raise InputDataError(f"{path}: set.{key}: not a parameter of params.yaml")
            section = section[part]


def presets(project_dir: Path = pipeline.PROJECT_DIR) -> dict[str, Preset]:
    """Every preset, `full` first, then by name; each override checked against params.yaml."""
    params = load_params(project_dir / "params.yaml")
    found = {}
    for path in sorted((project_dir / PRESETS_DIR).glob("*.yaml"), key=lambda p: (p.stem != "full", p.stem)):
        entry = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(entry.get("description"), str) or not isinstance(entry.get("set"), dict):
            raise InputDataError(f"{path}: needs `description` (text) and `set` (params.yaml keys -> values)")
        _check_keys(path, entry["set"], params)
        found[path.stem] = Preset(path.stem, entry["description"], entry["set"])
    return found


def overrides_of(names: list[str], known: dict[str, Preset]) -> dict[str, Any]:
    """The overrides of presets applied in order (a later one wins)."""
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InputDataError(f"unknown presets {unknown}; `python -m tasks.ablations list` shows them")
    merged: dict[str, Any] = {}
    for name in names:
        merged.update(known[name].overrides)
    return merged


def applied(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `params` with the dotted-key overrides set, as `dvc exp run -S` sets them."""
    result = copy.deepcopy(params)
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        section = result
        for part in path:
            section = section[part]
        section[leaf] = copy.deepcopy(value)
    return result


def flags(overrides: dict[str, Any]) -> str:
    """`-S key=value ...` for `dvc exp run`, quoted for a POSIX shell."""
    return " ".join(f"-S {shlex.quote(item)}" for item in pipeline.param_overrides(overrides))


def experiment_name(preset: str, base: str | None) -> str:
    # A time stamp keeps names unique: DVC refuses a second experiment of one name on the same commit.
    return f"ablation-{preset}{f'--{base}' if base else ''}-{time.strftime('%Y%m%d-%H%M%S')}"


def run(names: list[str], known: dict[str, Preset], base: str | None = None,
        project_dir: Path = pipeline.PROJECT_DIR) -> None:
    for name in names:
        print(f"== {name}{f' on {base}' if base else ''}: {known[name].description}", flush=True)
        overrides = overrides_of([base, name] if base else [name], known)
        # Isolated: an experiment in the workspace would leave its overrides in params.yaml for the next preset.
        pipeline.reproduce("evaluate", overrides, project_dir, experiment_name=experiment_name(name, base),
                           isolated=True)


def apply(name: str, known: dict[str, Preset], project_dir: Path = pipeline.PROJECT_DIR) -> None:
    """The preset as an experiment in the workspace: its values stay in params.yaml, its results in place."""
    overrides = overrides_of([name], known)
    print(f"== {name}: {known[name].description}", flush=True)
    pipeline.reproduce("evaluate", overrides, project_dir, experiment_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def latest_results(base: str | None = None, project_dir: Path = pipeline.PROJECT_DIR) -> dict[str, dict[str, Any]]:
    """metrics/eval.json of the newest experiment of each preset (run on `base`)."""
    from dvc.repo import Repo

    newest: dict[str, tuple[str, dict[str, Any]]] = {}
    with Repo(str(project_dir)) as repo:
        for baseline in repo.experiments.show():
            for experiment in baseline.experiments or []:
                match = EXPERIMENT_NAME.fullmatch(experiment.name or "")
                state = experiment.revs[0] if experiment.revs else None
                # A running experiment shows the workspace's metrics, which are not its own yet.
                unfinished = experiment.executor is not None and experiment.executor.state != "success"
                if (not match or match["base"] != base or state is None or state.data is None or unfinished):
                    continue
                preset, stamp = match["preset"], match["stamp"]
                metrics = (state.data.metrics or {}).get("metrics/eval.json", {}).get("data")
                if metrics and (preset not in newest or newest[preset][0] < stamp):
                    newest[preset] = (stamp, metrics)
    return {preset: metrics for preset, (_, metrics) in newest.items()}


def ablations(known: dict[str, Preset]) -> list[str]:
    return [name for name in known if name not in BASES]


def table(results: dict[str, dict[str, Any]], order: list[str], base: str | None = None) -> str:
    header = f"{'preset':30s} {'':9s}" + "".join(f"{m:>8s}" for m in METRICS)
    lines = [header, "-" * len(header)]
    zero_shot = next(iter(results.values()))["zero_shot"] if results else None
    if zero_shot:
        lines.append(f"{'zero-shot CLIP':30s} {'':9s}" + "".join(f"{zero_shot[m]:8.1f}" for m in METRICS))
    for name in order:
        if name in results:
            reranked = results[name]["reranked"]
            lines.append(f"{name:30s} {'re-ranked':9s}" + "".join(f"{reranked[m]:8.1f}" for m in METRICS))
    missing = [name for name in order if name not in results]
    if missing:
        on = f" --on {base}" if base else ""
        lines.append(f"(not run yet: {', '.join(missing)}; `python -m tasks.ablations run {' '.join(missing)}{on}`)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list")
    flags_parser = commands.add_parser("flags")
    flags_parser.add_argument("name")
    apply_parser = commands.add_parser("apply")
    apply_parser.add_argument("name")
    run_parser = commands.add_parser("run")
    run_parser.add_argument("names", nargs="*", help="presets to run (default: every ablation)")
    table_parser = commands.add_parser("table")
    table_parser.add_argument("--json", action="store_true", help="the newest results as JSON")
    for sub in (flags_parser, run_parser, table_parser):
        sub.add_argument("--on", dest="base", help="a preset applied first (e.g. demo-cpu)")
    args = parser.parse_args()
    try:
        known = presets()
        if args.command == "list":
            for name, preset in known.items():
                print(f"{name:30s} {preset.description}")
        elif args.command == "flags":
            print(flags(overrides_of([args.base, args.name] if args.base else [args.name], known)))
        elif args.command == "apply":
            apply(args.name, known)
        elif args.command == "run":
            names = args.names or ablations(known)
            overrides_of(names + ([args.base] if args.base else []), known)  # every name known before any run
            run(names, known, args.base)
        else:
            results = latest_results(args.base)
            print(json.dumps(results, indent=2) if args.json else table(results, ablations(known), args.base))
    except InputDataError as error:
        raise SystemExit(f"error: {error}") from None
    sys.stdout.flush()


if __name__ == "__main__":
    main()
