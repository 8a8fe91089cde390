"""Prefect flow of stage `featurize` (dvc.yaml runs `python -m flows.featurize`)."""
from __future__ import annotations

from prefect import flow

from flows.common import main, run_stage
from tasks import featurize as stage
from tasks.config import from_params


@flow(name="featurize")
def featurize(params_file: str = "params.yaml"):
    """models/base_clip + captions + knowledge -> data/features/ and reports/featurize.json."""
    return run_stage(lambda params: stage.run(from_params(stage.FeaturizeConfig, params)), params_file,
                     lambda report: "; ".join(f"{split}: {counts['images']} images, {counts['captions']} captions, "
                                              f"zero-shot {counts['zero_shot']}"
                                              for split, counts in report["splits"].items()))


if __name__ == "__main__":
    main(featurize)
