"""Prefect flow of stage `ingest` (dvc.yaml runs `python -m flows.ingest`)."""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from flows.common import run_stage_flow
from tasks import ingest as stage
from tasks.config import InputDataError, load_params

relocate_images = task(stage.relocate_images, name="relocate-images", cache_policy=NO_CACHE)
check_images = task(stage.check_images, name="check-images", cache_policy=NO_CACHE)
write_outputs = task(stage.write_outputs, name="write-captions", cache_policy=NO_CACHE)


@flow(name="ingest", log_prints=True)
def ingest(params_file: str = "params.yaml") -> dict[str, Any]:
    """Annotations + images -> data/interim/captions.parquet and reports/ingest.json."""
    logger = get_run_logger()
    try:
        config = stage.IngestConfig.from_params(load_params(params_file))
        source = stage.read_source(config)
    except InputDataError as exc:
        return Failed(message=str(exc))
    logger.info("read %d captions from %s", source.input_captions, source.file)
    relocated = relocate_images(source, config.image_root, config.workers)
    bad_images = check_images(source.frame["image_path"], config.min_image_side, config.workers)
    result = stage.assemble(config, source, bad_images, relocated)
    write_outputs(result)
    if result.failure:
        return Failed(message=result.failure)
    if relocated:
        logger.info("%d image paths not found as written were found under %s", len(relocated), config.image_root)
    logger.info("kept %d of %d captions; splits %s", result.report["captions"]["kept"],
                result.report["captions"]["input"], result.report["splits"])
    return result.report["captions"]


if __name__ == "__main__":
    run_stage_flow(ingest)
