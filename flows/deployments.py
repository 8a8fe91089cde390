"""Flows behind the Prefect deployments: each runs DVC, so its artifacts are versioned like `dvc repro`'s.

Without parameters a run is `dvc repro STAGE` in the project. With parameters it is an isolated experiment
(`dvc exp run --temp STAGE -S ...`): a run served in the background never rewrites the workspace's params.yaml
and dvc.lock under its user (a smoke test's `limit=40` would otherwise become the demo's setting); its
results are a named experiment (`dvc exp show`, `dvc exp apply NAME`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from tasks import pipeline
from tasks.evaluate import history


@flow(name="ingest-captions")
def ingest_captions(set_params: dict[str, Any] | None = None,
                    project_dir: str = str(pipeline.PROJECT_DIR)) -> dict[str, Any]:
    """Re-ingest captions (`dvc repro ingest`; with `set_params`, `dvc exp run --temp ingest -S key=value ...`)."""
    return pipeline.reproduce("ingest", set_params, project_dir, isolated=True)


@flow(name="generate-knowledge")
def generate_knowledge(backend: str | None = None, model: str | None = None, base_urls: list[str] | None = None,
                       limit: int | None = None, project_dir: str = str(pipeline.PROJECT_DIR)) -> dict[str, Any]:
    """Regenerate knowledge through DVC (`dvc repro validate`, or `dvc exp run --temp validate -S llm.*=...` when
    any parameter is given), so the result is versioned. `limit=40` is the smoke test: 40 captions asked."""
    overrides = {"llm.backend": backend, "llm.model": model, "llm.base_urls": base_urls, "llm.limit": limit}
    return pipeline.reproduce("validate", {k: v for k, v in overrides.items() if v is not None}, project_dir,
                              isolated=True)


@flow(name="nightly-evaluation")
def nightly_evaluation(set_params: dict[str, Any] | None = None,
                       project_dir: str = str(pipeline.PROJECT_DIR)) -> dict[str, Any]:
    """`dvc repro evaluate` (re-running whatever is stale upstream; with `set_params` an isolated experiment),
    then append its metrics/eval.json to reports/eval_history.jsonl and show the history as a table artifact."""
    reproduced = pipeline.reproduce("evaluate", set_params, project_dir, isolated=True)
    entries = history.record(Path(project_dir), {"flow_run_id": str(flow_run.get_id()), **reproduced})
    create_table_artifact(key="eval-history", table=history.as_rows(entries),
                          description="Re-ranked vs zero-shot retrieval, one row per nightly evaluation")
    latest = entries[-1]
    get_run_logger().info("Rsum zero-shot %s -> re-ranked %s (%d evaluations in the history)",
                          latest["zero_shot"]["rsum"], latest["reranked"]["rsum"], len(entries))
    return latest
