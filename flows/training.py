"""What the two training flows share: one process in the flow's own, or several under torchrun."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from prefect import get_run_logger

from flows.common import run_stage
from tasks.config import InputDataError, from_params
from tasks.train import stage as train
from tasks.train.config import TrainConfig, stage_paths


class TorchrunError(RuntimeError):
    """A distributed run failed; the message is its last line of output."""


def train_stage(stage: int, params_file: str):
    return run_stage(lambda params: _train(stage, params, params_file), params_file, _summary,
                     failures=(InputDataError, TorchrunError))


def _train(stage: int, params: dict[str, Any], params_file: str) -> dict[str, Any]:
    processes = from_params(TrainConfig, params).processes
    if processes == 1:
        return train.run(stage, params)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "tasks.train.stage", str(stage), "--params", params_file]
    get_run_logger().info("DistributedDataParallel: %s", " ".join(command))
    finished = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    if finished.returncode != 0:
        last = [line for line in finished.stderr.splitlines() if line.strip()][-1:] or ["no output"]
        raise TorchrunError(f"torchrun with {processes} processes failed: {last[0]}")
    return json.loads(stage_paths(stage)["metrics"].read_text(encoding="utf-8"))


def _summary(summary: dict[str, Any]) -> str:
    if "skipped" in summary:
        return f"stage {summary['stage']}: {summary['skipped']}; stage 1's weights are passed on"
    return (f"stage {summary['stage']}: {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
            f"val {summary['val']}, {summary['seconds']:.1f} s")
