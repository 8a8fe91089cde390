"""What the two training flows share: one process in the flow's own, or several under torchrun."""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from prefect import get_run_logger
from prefect.states import Failed

from tasks import train
from tasks.config import InputDataError, load_params


def train_stage(stage: int, params_file: str) -> dict[str, Any] | Failed:
    logger = get_run_logger()
    try:
        params = load_params(params_file)
        config = train.TrainConfig.from_params(params)
        if config.processes == 1:
            summary = train.run(stage, params)
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={config.processes}", "-m", "tasks.train", str(stage), "--params", params_file]
            logger.info("DistributedDataParallel: %s", " ".join(command))
            finished = subprocess.run(command, stderr=subprocess.PIPE, text=True)
            if finished.returncode != 0:
                last = [line for line in finished.stderr.splitlines() if line.strip()][-1:] or ["no output"]
                return Failed(message=f"torchrun with {config.processes} processes failed: {last[0]}")
            summary = json.loads(train.stage_paths(stage)["metrics"].read_text(encoding="utf-8"))
    except InputDataError as exc:
        return Failed(message=str(exc))
    if "skipped" in summary:
        logger.info("stage %d: %s; stage 1's weights are passed on", stage, summary["skipped"])
    else:
        logger.info("stage %d: %d steps, final loss %.4f, val %s, %.1f s", stage, summary["steps"],
                    summary["final_loss"], summary["val"], summary["seconds"])
    return summary
