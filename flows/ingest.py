"""Prefect flow of stage `ingest` (dvc.yaml runs `python -m flows.ingest`)."""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import main, run_stage
from tasks.config import from_params
from tasks.ingest import stage
from tasks.ingest.config import IngestConfig


def _task(step, name: str):
    return task(step, name=name, cache_policy=NO_CACHE)  # inputs are frames and paths: nothing to cache by


PREFECT_STEPS = stage.Steps(read=_task(stage.read_source, "read-captions"),
                            relocate=_task(stage.relocate_images, "relocate-images"),
                            check=_task(stage.check_images, "check-images"),
                            write=_task(stage.write_outputs, "write-captions"))


@flow(name="ingest")
def ingest(params_file: str = "params.yaml"):
    """Annotations + images -> data/interim/captions.parquet and reports/ingest.json."""
    return run_stage(lambda params: stage.run(from_params(IngestConfig, params), steps=PREFECT_STEPS).report,
                     params_file, lambda report: (
                         f"kept {report['captions']['kept']} of {report['captions']['input']} captions "
                         f"({report['images']['re_rooted']} image paths re-rooted); splits {report['splits']}"))


if __name__ == "__main__":
    main(ingest)
