"""Prefect flow of stage `featurize` (dvc.yaml runs `python -m flows.featurize`)."""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed

from flows.common import run_stage_flow
from tasks import featurize as stage
from tasks.config import InputDataError, load_params


@flow(name="featurize")
def featurize(params_file: str = "params.yaml") -> dict[str, Any]:
    """models/base_clip + captions + knowledge -> data/features/ and reports/featurize.json."""
    try:
        report = stage.run(stage.FeaturizeConfig.from_params(load_params(params_file)))
    except InputDataError as exc:
        return Failed(message=str(exc))
    logger = get_run_logger()
    for split, counts in report["splits"].items():
        logger.info("%s: %d images, %d captions; zero-shot %s", split, counts["images"], counts["captions"],
                    counts["zero_shot"])
    return {split: counts["zero_shot"] for split, counts in report["splits"].items()}


if __name__ == "__main__":
    run_stage_flow(featurize)
