"""What the two training flows share: one process in the flow's own, or several under torchrun, on one machine
or on several (`python -m flows.training STAGE --node-rank R` on each of the others)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from prefect import get_run_logger

from flows.common import run_stage
from tasks.config import InputDataError, from_params, load_params
from tasks.train import stage as train
from tasks.train.config import TrainConfig, stage_paths


class TorchrunError(RuntimeError):
    """A distributed run failed; the message is its last line of output."""


def train_stage(stage: int, params_file: str):
    return run_stage(lambda params: _train(stage, params, params_file), params_file, _summary,
                     failures=(InputDataError, TorchrunError))


def torchrun_command(stage: int, config: TrainConfig, params_file: str, node_rank: int = 0) -> list[str]:
    """One machine: --standalone. Several: the machine running the stage is node 0 and hosts the rendezvous at
    `train.rdzv_endpoint`; every other machine runs `python -m flows.training STAGE --node-rank R`."""
    if config.nnodes == 1:
        launch = ["--standalone"]
    else:
        host, port = config.rdzv_endpoint.rsplit(":", 1)
        launch = [f"--nnodes={config.nnodes}", f"--node_rank={node_rank}", f"--master_addr={host}",
                  f"--master_port={port}"]
    return [sys.executable, "-m", "torch.distributed.run", *launch, f"--nproc_per_node={config.processes}",
            "-m", "tasks.train.stage", str(stage), "--params", params_file]


def _train(stage: int, params: dict[str, Any], params_file: str) -> dict[str, Any]:
    config = from_params(TrainConfig, params)
    if config.processes == 1 and config.nnodes == 1:
        return train.run(stage, params)
    command = torchrun_command(stage, config, params_file)
    get_run_logger().info("DistributedDataParallel: %s", " ".join(command))
    finished = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    if finished.returncode != 0:
        last = [line for line in finished.stderr.splitlines() if line.strip()][-1:] or ["no output"]
        raise TorchrunError(f"torchrun with {config.nnodes} x {config.processes} processes failed: {last[0]}")
    return json.loads(stage_paths(stage)["metrics"].read_text(encoding="utf-8"))


def _summary(summary: dict[str, Any]) -> str:
    if "skipped" in summary:
        return f"stage {summary['stage']}: {summary['skipped']}; stage 1's weights are passed on"
    return (f"stage {summary['stage']}: {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
            f"val {summary['val']}, {summary['seconds']:.1f} s")


def worker() -> None:
    """Another machine's share of a multi-node run: the same checkout, params.yaml and inputs (data/features,
    models/base_clip and the images, e.g. from `dvc pull` or a shared disk) as node 0, where the stage runs."""
    parser = argparse.ArgumentParser(description=worker.__doc__.splitlines()[0])
    parser.add_argument("stage", type=int, choices=(1, 2))
    parser.add_argument("--node-rank", type=int, required=True, help="1 .. train.nnodes - 1")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    try:
        config = from_params(TrainConfig, load_params(args.params))
    except InputDataError as exc:
        sys.exit(str(exc))
    if not 0 < args.node_rank < config.nnodes:
        sys.exit(f"--node-rank {args.node_rank}: must be 1 .. {config.nnodes - 1} (train.nnodes {config.nnodes}; "
                 "node 0 is the machine that runs the stage)")
    sys.exit(subprocess.call(torchrun_command(args.stage, config, args.params, args.node_rank)))


if __name__ == "__main__":
    worker()
