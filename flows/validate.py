"""Prefect flow of stage `validate` (dvc.yaml runs `python -m flows.validate`)."""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed

from flows.common import run_stage_flow
from tasks import validate as stage
from tasks.config import InputDataError, load_params
from tasks.knowledge import LLMConfig


@flow(name="validate")
def validate(params_file: str = "params.yaml") -> dict[str, Any]:
    """Raw LLM answers -> knowledge.parquet, rejects.parquet and reports/knowledge.json."""
    try:
        summary = stage.run(LLMConfig.from_params(load_params(params_file)))
    except InputDataError as exc:
        return Failed(message=str(exc))
    get_run_logger().info("knowledge for %d captions: %s; %d rejects", summary["captions"], summary["status"],
                          summary["rejects"])
    return summary["status"]


if __name__ == "__main__":
    run_stage_flow(validate)
