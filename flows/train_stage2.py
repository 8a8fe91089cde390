"""Prefect flow of stage `train_stage2` (dvc.yaml runs `python -m flows.train_stage2`)."""
from __future__ import annotations

from prefect import flow

from flows.common import main
from flows.training import train_stage


@flow(name="train_stage2")
def train_stage2(params_file: str = "params.yaml"):
    """models/stage1/ -> models/stage2/ (the interaction module, triplet loss with the hardest negative)."""
    return train_stage(2, params_file)


if __name__ == "__main__":
    main(train_stage2)
