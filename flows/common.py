"""What every stage flow shares: params in, the stage run, a one-line failure, and running as a script.

Bad input (InputDataError) fails the flow run with its one-line reason: retrying would fail the same way, so only
steps whose failures come from outside (the LLM server) are Prefect tasks with retries.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import Flow, get_run_logger
from prefect.states import Failed, State

from tasks.config import InputDataError, load_params

Result = TypeVar("Result")


def run_stage(stage: Callable[[dict[str, Any]], Result], params_file: str,
              summary: Callable[[Result], str] | None = None,
              failures: tuple[type[Exception], ...] = (InputDataError,)) -> Result | State:
    """`stage(params)` with params read from `params_file`; its summary logged, or a Failed state naming why."""
    try:
        result = stage(load_params(params_file))
    except failures as exc:
        return Failed(message=str(exc))
    if summary is not None:
        get_run_logger().info(summary(result))
    return result


def main(stage_flow: Flow, **parameters: Any) -> None:
    """Run a stage flow as the `cmd` of its dvc.yaml stage: a failed run exits 1 with its one-line reason."""
    state = stage_flow(**parameters, return_state=True)
    if state.is_failed():
        print(f"{stage_flow.name}: {state.message}", file=sys.stderr)
        sys.exit(1)
