"""Flows behind the Prefect deployments: each runs DVC, so its artifacts are versioned like `dvc repro`'s."""
from __future__ import annotations

from typing import Any

from prefect import flow

from tasks import pipeline


@flow(name="ingest-captions")
def ingest_captions(set_params: dict[str, Any] | None = None,
                    project_dir: str = str(pipeline.PROJECT_DIR)) -> dict[str, Any]:
    """Re-ingest captions (`dvc repro ingest`; with `set_params`, `dvc exp run ingest -S key=value ...`)."""
    return pipeline.reproduce("ingest", set_params, project_dir)


@flow(name="generate-knowledge")
def generate_knowledge(backend: str | None = None, model: str | None = None, base_urls: list[str] | None = None,
                       limit: int | None = None, project_dir: str = str(pipeline.PROJECT_DIR)) -> dict[str, Any]:
    """Regenerate knowledge through DVC (`dvc repro validate`, or `dvc exp run validate -S llm.*=...` when any
    parameter is given), so the result is versioned."""
    overrides = {"llm.backend": backend, "llm.model": model, "llm.base_urls": base_urls, "llm.limit": limit}
    return pipeline.reproduce("validate", {k: v for k, v in overrides.items() if v is not None}, project_dir)
