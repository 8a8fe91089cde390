"""Prefect flow of stage `base_clip` (dvc.yaml runs `python -m flows.base_clip`)."""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed

from flows.common import run_stage_flow
from tasks import base_clip as stage
from tasks.config import InputDataError, load_params


@flow(name="base_clip")
def base_clip(params_file: str = "params.yaml") -> dict[str, Any]:
    """clip.model + clip.pretrained (tag, weights file or scratch) -> models/base_clip/ and reports/base_clip.json."""
    try:
        report = stage.run(stage.ClipConfig.from_params(load_params(params_file)))
    except InputDataError as exc:
        return Failed(message=str(exc))
    get_run_logger().info("backbone %s (%s, %d parameters) in %.1f s; val zero-shot %s", report["model"],
                          report["source"]["kind"], report["parameters"]["total"], report["seconds"],
                          report.get("val_zero_shot"))
    return report


if __name__ == "__main__":
    run_stage_flow(base_clip)
