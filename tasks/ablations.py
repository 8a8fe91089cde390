"""The paper's ablations (tables 2-5) as parameter sets for `dvc exp run`, and their comparison table.

    python -m tasks.ablations list
    python -m tasks.ablations run [NAME ...]     # one DVC experiment per preset (default: all)
    python -m tasks.ablations table              # re-ranked recalls of every preset's latest experiment

Every preset is a set of `-S key=value` overrides of params.yaml, so any one can also be run by hand, e.g.
`dvc exp run -n no_action_knowledge -S prompt.use_triplets=false -S prompt.use_states=false`. Experiments
share the stages their parameters do not touch (DVC's run cache), so only training and evaluation re-run.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from tasks import pipeline

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("the full model (params.yaml as it is)", {}),
    # Table 2: which prompts
    "no_triplet": ("without action triplet prompts", {"prompt.use_triplets": False}),
    "no_state": ("without action state prompts", {"prompt.use_states": False}),
    "no_visual_prompts": ("without the N learnable visual prompts", {"prompt.n_visual_prompts": 0}),
    "handcrafted_triplet": ("hand-crafted triplet sentence instead of the triplet encoder",
                            {"prompt.triplet_source": "template"}),
    # Table 3: components
    "no_action_knowledge": ("learnable visual prompts only (no triplets, no states)",
                            {"prompt.use_triplets": False, "prompt.use_states": False}),
    "no_attribute_knowledge": ("attribute triplets (<x, is, y>) removed from the knowledge",
                               {"featurize.drop_attributes": True}),
    "concat": ("concatenated prompts instead of the adaptive interaction module", {"prompt.fusion": "concat"}),
    # Table 5: training
    "one_stage": ("stage 1 only (contrastive loss, AIM trained with everything else)", {"train.mode": "one_stage"}),
    "combined": ("both losses together in one stage", {"train.mode": "combined"}),
    # Negatives (docs/training.md)
    "paired_negatives": ("in-batch negatives under the positive's own knowledge", {"train.negatives": "paired"}),
    "cross_negatives": ("negatives scored under their own knowledge, from the zero-shot top-k",
                        {"train.negatives": "cross"}),
    "neighbour_batches": ("in-batch negatives with 3 zero-shot near-miss images per seed caption",
                          {"train.batch_neighbours": 3}),
}
EXPERIMENT_NAME = re.compile(r"ablation-(?P<preset>.+)-(?P<stamp>\d{8}-\d{6})")
METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def run(names: list[str], project_dir: Path = pipeline.PROJECT_DIR) -> None:
    for name in names:
        description, overrides = PRESETS[name]
        print(f"== {name}: {description}", flush=True)
        # A time stamp keeps names unique: DVC refuses a second experiment of one name on the same commit.
        stamp = time.strftime("%Y%m%d-%H%M%S")
        # Isolated: an experiment in the workspace would leave its overrides in params.yaml for the next preset.
        pipeline.reproduce("evaluate", overrides, project_dir, experiment_name=f"ablation-{name}-{stamp}",
                           isolated=True)


def latest_results(project_dir: Path = pipeline.PROJECT_DIR) -> dict[str, dict[str, Any]]:
    """metrics/eval.json of the newest experiment ablation-<preset>-<time> of each preset."""
    from dvc.repo import Repo

    newest: dict[str, tuple[str, dict[str, Any]]] = {}
    with Repo(str(project_dir)) as repo:
        for baseline in repo.experiments.show():
            for experiment in baseline.experiments or []:
                match = EXPERIMENT_NAME.fullmatch(experiment.name or "")
                state = experiment.revs[0] if experiment.revs else None
                # A running experiment shows the workspace's metrics, which are not its own yet.
                unfinished = experiment.executor is not None and experiment.executor.state != "success"
                if (not match or match["preset"] not in PRESETS or state is None or state.data is None
                        or unfinished):
                    continue
                preset, stamp = match["preset"], match["stamp"]
                metrics = (state.data.metrics or {}).get("metrics/eval.json", {}).get("data")
                if metrics and (preset not in newest or newest[preset][0] < stamp):
                    newest[preset] = (stamp, metrics)
    return {preset: metrics for preset, (_, metrics) in newest.items()}


def table(results: dict[str, dict[str, Any]]) -> str:
    header = f"{'preset':22s} {'':9s}" + "".join(f"{m:>8s}" for m in METRICS)
    lines = [header, "-" * len(header)]
    zero_shot = next(iter(results.values()))["zero_shot"] if results else None
    if zero_shot:
        lines.append(f"{'zero-shot CLIP':22s} {'':9s}" + "".join(f"{zero_shot[m]:8.1f}" for m in METRICS))
    for name in PRESETS:
        if name in results:
            reranked = results[name]["reranked"]
            lines.append(f"{name:22s} {'re-ranked':9s}" + "".join(f"{reranked[m]:8.1f}" for m in METRICS))
    missing = [name for name in PRESETS if name not in results]
    if missing:
        lines.append(f"(not run yet: {', '.join(missing)}; `python -m tasks.ablations run {' '.join(missing)}`)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list")
    run_parser = commands.add_parser("run")
    run_parser.add_argument("names", nargs="*", help="presets to run (default: all)")
    commands.add_parser("table")
    args = parser.parse_args()
    if args.command == "list":
        for name, (description, overrides) in PRESETS.items():
            print(f"{name:22s} {description}: {json.dumps(overrides)}")
    elif args.command == "run":
        unknown = sorted(set(args.names) - set(PRESETS))
        if unknown:
            parser.error(f"unknown presets {unknown}; `python -m tasks.ablations list` shows them")
        run(args.names or list(PRESETS))
    else:
        print(table(latest_results()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
