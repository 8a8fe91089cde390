"""Prefect flow of stage `evaluate` (dvc.yaml runs `python -m flows.evaluate`)."""
from __future__ import annotations

from prefect import flow

from flows.common import main, run_stage
from tasks.evaluate import stage


@flow(name="evaluate")
def evaluate(params_file: str = "params.yaml"):
    """Zero-shot top-k vs re-ranked retrieval -> metrics/eval.json, plots/, reports/retrieval.html."""
    return run_stage(stage.run, params_file, lambda result: (
        f"{result['split']} split: Rsum zero-shot {result['zero_shot']['rsum']} -> re-ranked "
        f"{result['reranked']['rsum']} ({result['pairs_scored']} pairs in {result['seconds']:.1f} s)"))


if __name__ == "__main__":
    main(evaluate)
