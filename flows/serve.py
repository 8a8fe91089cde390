"""Serve the project's deployments against the Prefect API in PREFECT_API_URL.

    prefect server start            # in one terminal
    python -m flows.serve           # in another; --nightly-cron/--timezone override params.yaml's schedule
    prefect deployment run ingest-captions/default
    prefect deployment run generate-knowledge/default
    prefect deployment run nightly-evaluation/default   # also runs on its cron schedule
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.deployments import generate_knowledge, ingest_captions, nightly_evaluation
from tasks.config import from_params, load_params


@dataclass(frozen=True)
class ScheduleConfig:
    SECTION: ClassVar[str] = "schedule"

    nightly_evaluation: str  # cron
    timezone: str


def deployments(nightly_cron: str, timezone: str) -> list[RunnerDeployment]:
    return [
        ingest_captions.to_deployment(name="default", description="dvc repro ingest (set_params: dvc exp run -S)"),
        generate_knowledge.to_deployment(name="default", description="dvc repro validate (LLM knowledge)"),
        nightly_evaluation.to_deployment(name="default", schedules=[Cron(nightly_cron, timezone=timezone)],
                                         description="dvc repro evaluate, with a metrics history"),
    ]


def main() -> None:
    schedule = from_params(ScheduleConfig, load_params())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nightly-cron", default=schedule.nightly_evaluation)
    parser.add_argument("--timezone", default=schedule.timezone)
    args = parser.parse_args()
    # One run at a time: DVC holds a lock on the repository while it reproduces.
    serve(*deployments(args.nightly_cron, args.timezone), limit=1)


if __name__ == "__main__":
    main()
