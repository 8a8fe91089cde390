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
