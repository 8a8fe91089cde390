"""Prefect flow of stage `train_stage2` (dvc.yaml runs `python -m flows.train_stage2`)."""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import run_stage_flow
from flows.training import train_stage


@flow(name="train_stage2")
def train_stage2(params_file: str = "params.yaml") -> dict[str, Any]:
    """models/stage1/ -> models/stage2/ (the interaction module, triplet loss with the hardest negative)."""
    return train_stage(2, params_file)


if __name__ == "__main__":
    run_stage_flow(train_stage2)
