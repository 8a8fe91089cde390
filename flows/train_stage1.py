"""Prefect flow of stage `train_stage1` (dvc.yaml runs `python -m flows.train_stage1`)."""
from __future__ import annotations

from prefect import flow

from flows.common import main
from flows.training import train_stage


@flow(name="train_stage1")
def train_stage1(params_file: str = "params.yaml"):
    """Features + image prefixes -> models/stage1/ (every new parameter, contrastive loss)."""
    return train_stage(1, params_file)


if __name__ == "__main__":
    main(train_stage1)
