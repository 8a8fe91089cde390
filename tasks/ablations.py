"""Presets (configs/experiments/*.yaml): the paper's runs and ablation rows as DVC experiments, and their table.

    python -m tasks.ablations list
    python -m tasks.ablations flags PRESET [--on BASE]     # the `dvc exp run -S ...` flags of a preset
    python -m tasks.ablations apply PRESET                 # run it in the workspace (`make demo`: demo-cpu)
    python -m tasks.ablations run PRESET... | --all [--on BASE]  # one isolated experiment each (--all: every ablation)
    python -m tasks.ablations table [--on BASE] [--json | --markdown]  # each preset's newest experiment; --json
                                                           # also writes metrics/ablations.json and plots/ablations.csv

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

import pandas as pd
import yaml

from tasks import pipeline
from tasks.config import InputDataError, load_params, write_json

PRESETS_DIR = Path("configs/experiments")
# Runs of a whole data set or budget, the bases of ablations; every other preset is an ablation row.
BASES = ("demo-cpu", "flickr30k-vit-b-16", "coco-vit-b-16")
EXPERIMENT_NAME = re.compile(r"ablation-(?P<preset>[a-z0-9_-]+?)(?:--(?P<base>[a-z0-9_-]+?))?-(?P<stamp>\d{8}-\d{6})")
METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
TWIN_METRICS = ("twin_i2t_r1", "twin_t2i_r1")  # R@1 within the demo's twin groups (tasks/evaluate/twins.py)
ZERO_SHOT = "zero-shot"
SUMMARY = Path("metrics/ablations.json")
SUMMARY_PLOT = Path("plots/ablations.csv")


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


def head_commit(project_dir: Path) -> str:
    if (revision := pipeline.git_revision(project_dir)) is None:
        raise InputDataError(f"{project_dir}: DVC experiments need a git repository with a commit")
    return revision


def run(names: list[str], known: dict[str, Preset], base: str | None = None,
        project_dir: Path = pipeline.PROJECT_DIR) -> None:
    started = time.monotonic()
    started_on: dict[str, str] = {}
    for name in names:
        print(f"== {name}{f' on {base}' if base else ''}: {known[name].description}", flush=True)
        overrides = overrides_of([base, name] if base else [name], known)
        # DVC files an experiment under the commit checked out when it starts; `table` reads HEAD's only.
        started_on[name] = head_commit(project_dir)
        # Isolated: an experiment in the workspace would leave its overrides in params.yaml for the next preset.
        pipeline.reproduce("evaluate", overrides, project_dir, experiment_name=experiment_name(name, base),
                           isolated=True)
    print(f"== {len(names)} presets in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    head = head_commit(project_dir)
    if earlier := [name for name in names if started_on[name] != head]:
        print(f"== warning: HEAD moved to {head[:7]} during the run. These presets are experiments of an earlier "
              f"commit, which `table` on {head[:7]} lists as not run: {' '.join(earlier)}. Run them again with\n"
              f"   python -m tasks.ablations run {' '.join(earlier)}{f' --on {base}' if base else ''}", flush=True)


def apply(name: str, known: dict[str, Preset], project_dir: Path = pipeline.PROJECT_DIR) -> None:
    """The preset as an experiment in the workspace: its values stay in params.yaml, its results in place."""
    overrides = overrides_of([name], known)
    print(f"== {name}: {known[name].description}", flush=True)
    pipeline.reproduce("evaluate", overrides, project_dir, experiment_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def latest_results(base: str | None = None, project_dir: Path = pipeline.PROJECT_DIR) -> dict[str, dict[str, Any]]:
    """metrics/eval.json of the newest experiment of each preset (run on `base`), with its name as "experiment"."""
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
                    newest[preset] = (stamp, {"experiment": experiment.name, **metrics})
    return {preset: metrics for preset, (_, metrics) in newest.items()}


def ablations(known: dict[str, Preset]) -> list[str]:
    """Every preset but the bases: `full`, the paper's table rows, then the rest by name."""
    return sorted((name for name in known if name not in BASES),
                  key=lambda name: (name != "full", not name.startswith("table"), name))


def _row(recalls: dict[str, Any], twin: dict[str, Any] | None) -> dict[str, Any]:
    return {**{m: recalls[m] for m in METRICS},
            **{f"twin_{m}": twin[m] if twin else None for m in ("i2t_r1", "t2i_r1")}}


def summary(results: dict[str, dict[str, Any]], order: list[str], known: dict[str, Preset],
            base: str | None = None) -> dict[str, Any]:
    """metrics/ablations.json: zero-shot, then each preset's re-ranked recalls, R@1 within twin groups and how
    much the knowledge moves a score (mean change over the scores' spread), with the commands that made it."""
    on = f" --on {base}" if base else ""
    rows: dict[str, dict[str, Any]] = {}
    reference = results.get("full") or next(iter(results.values()), None)
    if reference:
        twin = reference.get("twin_view")
        rows[ZERO_SHOT] = _row(reference["zero_shot"], twin and twin["zero_shot"])
    for name in (name for name in order if name in results):
        result, effect = results[name], results[name]["knowledge_effect"]
        twin = result.get("twin_view")
        ratio = (round(effect["mean_abs_change"] / effect["score_std"], 3)
                 if effect.get("mean_abs_change") is not None and effect.get("score_std") else None)
        rows[name] = {**_row(result["reranked"], twin and twin["reranked"]), "knowledge_effect": ratio,
                      "experiment": result["experiment"], "description": known[name].description}
    return {"base": base, "commands": [f"python -m tasks.ablations run --all{on}",
                                       f"python -m tasks.ablations table --json{on}"],
            "rows": rows, "not_run": [name for name in order if name not in results]}


_COLUMNS = [(metric, metric, 8, 1) for metric in METRICS] + [
    ("twin_i2t_r1", "twin i2t", 10, 1), ("twin_t2i_r1", "twin t2i", 10, 1), ("knowledge_effect", "knowl.", 8, 3)]


def _cells(row: dict[str, Any]) -> list[str]:
    return ["-" if row.get(key) is None else f"{row[key]:.{digits}f}" for key, _, _, digits in _COLUMNS]


def _not_run(table_summary: dict[str, Any]) -> list[str]:
    if not table_summary["not_run"]:
        return []
    on = f" --on {table_summary['base']}" if table_summary["base"] else ""
    return [f"(not run yet: {', '.join(table_summary['not_run'])}; "
            f"`python -m tasks.ablations run {' '.join(table_summary['not_run'])}{on}`)"]


def table(table_summary: dict[str, Any]) -> str:
    """The summary as text: a row per preset, zero-shot first."""
    header = f"{'preset':32s}" + "".join(f"{title:>{width}s}" for _, title, width, _ in _COLUMNS)
    lines = [header, "-" * len(header)]
    for name, row in table_summary["rows"].items():
        lines.append(f"{name:32s}" + "".join(f"{cell:>{width}s}" for cell, (_, _, width, _) in zip(_cells(row),
                                                                                                   _COLUMNS)))
    return "\n".join(lines + _not_run(table_summary))


def markdown_table(table_summary: dict[str, Any]) -> str:
    """The summary as a Markdown table, for a README or a paper draft."""
    lines = ["| preset | " + " | ".join(title for _, title, _, _ in _COLUMNS) + " |",
             "|---|" + "---:|" * len(_COLUMNS)]
    lines += [f"| {name} | " + " | ".join(_cells(row)) + " |" for name, row in table_summary["rows"].items()]
    return "\n".join(lines + [f"\n{line}" for line in _not_run(table_summary)])


def write_summary(table_summary: dict[str, Any], project_dir: Path = pipeline.PROJECT_DIR) -> None:
    """metrics/ablations.json and plots/ablations.csv (`dvc plots show`: a bar per preset)."""
    write_json(project_dir / SUMMARY, table_summary)
    plot = pd.DataFrame([{"preset": name, "rsum": row["rsum"], "twin_r1": None if row["twin_i2t_r1"] is None
                          else round((row["twin_i2t_r1"] + row["twin_t2i_r1"]) / 2, 2)}
                         for name, row in table_summary["rows"].items()])
    (project_dir / SUMMARY_PLOT).parent.mkdir(parents=True, exist_ok=True)
    plot.to_csv(project_dir / SUMMARY_PLOT, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list")
    flags_parser = commands.add_parser("flags")
    flags_parser.add_argument("name")
    apply_parser = commands.add_parser("apply")
    apply_parser.add_argument("name")
    run_parser = commands.add_parser("run")
    run_parser.add_argument("names", nargs="*", help="presets to run")
    run_parser.add_argument("--all", action="store_true", help="every preset but the bases")
    table_parser = commands.add_parser("table")
    table_format = table_parser.add_mutually_exclusive_group()
    table_format.add_argument("--json", action="store_true",
                              help=f"print it as JSON and write {SUMMARY} and {SUMMARY_PLOT}")
    table_format.add_argument("--markdown", action="store_true", help="print it as a Markdown table")
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
            if bool(args.names) == args.all:
                raise InputDataError("name the presets to run, or --all for every ablation")
            names = ablations(known) if args.all else args.names
            overrides_of(names + ([args.base] if args.base else []), known)  # every name known before any run
            run(names, known, args.base)
        else:
            table_summary = summary(latest_results(args.base), ablations(known), known, args.base)
            if args.json:
                write_summary(table_summary)
                print(json.dumps(table_summary, indent=2))
            else:
                print(markdown_table(table_summary) if args.markdown else table(table_summary))
    except InputDataError as error:
        raise SystemExit(f"error: {error}") from None
    sys.stdout.flush()


if __name__ == "__main__":
    main()
