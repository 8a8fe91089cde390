"""Prefect flow of stage `knowledge` (dvc.yaml runs `python -m flows.knowledge`)."""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import main, run_stage
from tasks import paths, schemas
from tasks.config import InputDataError, from_params
from tasks.knowledge import generate as stage
from tasks.knowledge.config import LLMConfig
from tasks.knowledge.openai_client import LLMTransportError

SERVER_RETRIES, SERVER_RETRY_DELAY_S = 2, 60  # beyond llm.max_retries: a server restarting, a GPU node rebooting


def _server_failed(failed_task, task_run, state) -> bool:
    """Only what the server caused is retried: bad params or captions would fail the same way again."""
    return isinstance(state.data, LLMTransportError)


@task(name="ask-llm", retries=SERVER_RETRIES, retry_delay_seconds=SERVER_RETRY_DELAY_S,
      retry_condition_fn=_server_failed, cache_policy=NO_CACHE)
def ask_llm(config: LLMConfig) -> dict[str, Any]:
    """A retry is safe: every answer is in the resume cache, so a retried run asks only for what is missing."""
    captions = schemas.read(paths.CAPTIONS, schemas.CAPTIONS)["caption"].tolist()
    get_run_logger().info("%d captions, backend %s, model %s", len(captions), config.backend, config.model)
    return stage.run(config, captions)


@flow(name="knowledge")
def knowledge(params_file: str = "params.yaml"):
    """captions.parquet -> LLM answers in data/interim/knowledge_raw/ (the resume cache)."""
    return run_stage(lambda params: ask_llm(from_params(LLMConfig, params)), params_file, lambda report: (
        f"asked {report['asked_captions']} captions and {report['asked_triplets']} triplets "
        f"({report['cached_captions']} captions cached) in {report['seconds']:.1f} s"),
        failures=(InputDataError, LLMTransportError))


if __name__ == "__main__":
    main(knowledge)
