"""Prefect flow of stage `base_clip` (dvc.yaml runs `python -m flows.base_clip`)."""
from __future__ import annotations

from prefect import flow

from flows.common import main, run_stage
from tasks import base_clip as stage
from tasks.config import from_params


@flow(name="base_clip")
def base_clip(params_file: str = "params.yaml"):
    """clip.model + clip.pretrained (tag, weights file or scratch) -> models/base_clip/ and reports/base_clip.json."""
    return run_stage(lambda params: stage.run(from_params(stage.ClipConfig, params)), params_file, lambda report: (
        f"backbone {report['model']} ({report['source']['kind']}, {report['parameters']['total']} parameters) in "
        f"{report['seconds']:.1f} s; val zero-shot {report.get('val_zero_shot')}"))


if __name__ == "__main__":
    main(base_clip)
