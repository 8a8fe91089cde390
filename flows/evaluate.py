"""Prefect flow of stage `evaluate` (dvc.yaml runs `python -m flows.evaluate`)."""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed

from flows.common import run_stage_flow
from tasks import evaluate as stage
from tasks.config import InputDataError, load_params


@flow(name="evaluate")
def evaluate(params_file: str = "params.yaml") -> dict[str, Any]:
    """Zero-shot top-k vs re-ranked retrieval -> metrics/eval.json, plots/, reports/retrieval.html."""
    try:
        result = stage.run(load_params(params_file))
    except InputDataError as exc:
        return Failed(message=str(exc))
    get_run_logger().info("%s split: Rsum zero-shot %s -> re-ranked %s (%d pairs in %.1f s)", result["split"],
                          result["zero_shot"]["rsum"], result["reranked"]["rsum"], result["pairs_scored"],
                          result["seconds"])
    return result


if __name__ == "__main__":
    run_stage_flow(evaluate)
