"""Serve the project's deployments against the Prefect API in PREFECT_API_URL.

    prefect server start            # in one terminal
    python -m flows.serve           # in another
    prefect deployment run ingest-captions/default
    prefect deployment run generate-knowledge/default
"""
from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.deployments import generate_knowledge, ingest_captions


def deployments() -> list[RunnerDeployment]:
    return [
        ingest_captions.to_deployment(name="default", description="dvc repro ingest (set_params: dvc exp run -S)"),
        generate_knowledge.to_deployment(name="default", description="dvc repro validate (LLM knowledge)"),
    ]


if __name__ == "__main__":
    # One run at a time: DVC holds a lock on the repository while it reproduces.
    serve(*deployments(), limit=1)
