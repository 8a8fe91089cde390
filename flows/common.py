"""What every stage flow shares: running it as a script (the `cmd` of its dvc.yaml stage)."""
from __future__ import annotations

import sys

from prefect import Flow


def run_stage_flow(stage_flow: Flow, **parameters) -> None:
    """Run a stage flow; a failed run exits 1 with its one-line reason instead of a traceback."""
    state = stage_flow(**parameters, return_state=True)
    if state.is_failed():
        print(f"{stage_flow.name}: {state.message}", file=sys.stderr)
        sys.exit(1)
