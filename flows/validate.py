"""Prefect flow of stage `validate` (dvc.yaml runs `python -m flows.validate`)."""
from __future__ import annotations

from prefect import flow

from flows.common import main, run_stage
from tasks import validate as stage
from tasks.config import from_params
from tasks.knowledge.config import KnowledgeConfig, LLMConfig


@flow(name="validate")
def validate(params_file: str = "params.yaml"):
    """Raw LLM answers (or, knowledge.source: truth, the demo's true triplets) -> knowledge.parquet,
    rejects.parquet and reports/knowledge.json."""
    def run(params: dict) -> dict:
        return stage.run(from_params(LLMConfig, params), from_params(KnowledgeConfig, params).source)

    return run_stage(run, params_file, lambda summary: (
        f"knowledge for {summary['captions']} captions: {summary['status']}; {summary['rejects']} rejects"))


if __name__ == "__main__":
    main(validate)
