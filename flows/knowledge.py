"""Prefect flow of stage `knowledge` (dvc.yaml runs `python -m flows.knowledge`)."""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed

from flows.common import run_stage_flow
from tasks import knowledge as stage
from tasks import paths, schemas
from tasks.config import InputDataError, load_params
from tasks.llm_clients import LLMTransportError


@flow(name="knowledge")
def knowledge(params_file: str = "params.yaml") -> dict[str, Any]:
    """captions.parquet -> LLM answers in data/interim/knowledge_raw/ (the resume cache)."""
    logger = get_run_logger()
    try:
        config = stage.LLMConfig.from_params(load_params(params_file))
        captions = schemas.read(paths.CAPTIONS, schemas.CAPTIONS)["caption"].tolist()
        logger.info("%d captions, backend %s, model %s", len(captions), config.backend, config.model)
        report = stage.run(config, captions)
    except (InputDataError, LLMTransportError) as exc:
        return Failed(message=str(exc))
    logger.info("asked %d captions and %d triplets (%d captions cached) in %.1f s",
                report["asked_captions"], report["asked_triplets"], report["cached_captions"], report["seconds"])
    return report


if __name__ == "__main__":
    run_stage_flow(knowledge)
