"""Stage `ingest` without Prefect: the checks, policies and caption limit applied to a source's rows, the report
that accounts for every input caption, the outputs, and `run`, the whole stage."""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from tasks import paths, schemas
from tasks.config import InputDataError
from tasks.ingest.config import SPLIT_ALIASES, IngestConfig
from tasks.ingest.images import check_images, relocate_images
from tasks.ingest.readers import SourceRows, read_source

PROBLEMS_IN_SUMMARY = 10


@dataclass
class IngestResult:
    captions: pd.DataFrame
    true_triplets: pd.DataFrame
    report: dict[str, Any]

    @property
    def failure(self) -> str | None:
        return self.report.get("failure")


@dataclass
class _Checked:
    """A source's rows (captions whitespace-normalised) with what is wrong with them."""

    frame: pd.DataFrame
    bad_caption: pd.Series  # per row
    on_bad_image: pd.Series  # per row
    caption_problems: list[dict[str, Any]]
    image_problems: list[dict[str, Any]]


def _checked(source: SourceRows, bad_images: dict[str, str]) -> _Checked:
    frame = source.frame.copy()
    frame["caption"] = frame["caption"].str.replace(r"\s+", " ", regex=True).str.strip()
    caption_reasons = _caption_problems(frame)
    bad_caption = caption_reasons != ""
    caption_problems = source.problems + [
        source.caption_problem(row, reason, caption_id)
        for row, caption_id, reason in zip(frame.loc[bad_caption, "row"], frame.loc[bad_caption, "caption_id"],
                                           caption_reasons[bad_caption])
    ]
    on_bad_image = frame["image_path"].isin(bad_images.keys())
    captions_per_bad_image = frame.loc[on_bad_image, "image_path"].value_counts()
    image_problems = [{"kind": "image", "file": path, "reason": reason, "captions": int(captions_per_bad_image.get(path, 0))}
                      for path, reason in sorted(bad_images.items())]
    return _Checked(frame, bad_caption, on_bad_image, caption_problems, image_problems)


def _caption_problems(frame: pd.DataFrame) -> pd.Series:
    """Reason per row for captions that cannot be used (empty string = fine)."""
    reasons = pd.Series("", index=frame.index, dtype=object)
    reasons[frame["caption"] == ""] = "empty or whitespace-only caption"
    reasons[frame["caption"].str.contains("\ufffd", regex=False)] = "not valid UTF-8"
    no_split = frame["split"].isna()
    if not no_split.all():  # a split-less table is split by image later; a partly split one is an error
        reasons[no_split] = "missing split"
    known_split = no_split | frame["split"].isin(list(SPLIT_ALIASES))
    reasons[~known_split] = "unknown split '" + frame.loc[~known_split, "split"].astype(str) + \
        f"' (expected one of {', '.join(SPLIT_ALIASES)})"
    duplicate = frame["caption_id"].duplicated(keep="first")
    reasons[duplicate & (reasons == "")] = "duplicate caption_id '" + frame.loc[duplicate, "caption_id"] + "'"
    return reasons


def _split_by_image(image_ids: pd.Series, val_fraction: float, test_fraction: float, seed: int) -> pd.Series:
    """Seeded split by image (no image in two splits), for tables that carry no split column."""
    split = pd.Series("train", index=image_ids.index, dtype=object)
    remaining = image_ids
    for name, fraction in (("test", test_fraction), ("val", val_fraction / (1 - test_fraction))):
        if fraction == 0 or remaining.nunique() < 2:
            continue
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        keep, chosen = next(splitter.split(remaining, groups=remaining))
        split[remaining.index[chosen]] = name
        remaining = remaining.iloc[keep]
    return split


def assemble(config: IngestConfig, source: SourceRows, bad_images: dict[str, str],
             relocated: dict[str, str] | None = None) -> IngestResult:
    """Apply the checks, policies and the captions-per-image limit; the report accounts for every input caption."""
    checked = _checked(source, bad_images)
    usable = checked.frame[~checked.bad_caption & ~checked.on_bad_image].drop(columns="row")
    usable["split"] = usable["split"].map(SPLIT_ALIASES) if usable["split"].notna().all() else \
        _split_by_image(usable["image_id"], config.val_fraction, config.test_fraction, config.seed)
    over_limit = _over_limit(usable["image_id"], config.captions_per_image)
    kept = usable[~over_limit].reset_index(drop=True)
    triplets = source.true_triplets
    triplets = triplets[triplets["caption_id"].isin(kept["caption_id"])] if triplets is not None else \
        pd.DataFrame({"caption_id": pd.Series(dtype=str), "triplets": pd.Series(dtype=object)})
    report = _report(config, source, checked, usable, over_limit, kept, len(bad_images), len(relocated or {}))
    failing = []
    if checked.image_problems and config.on_bad_image == "fail":
        failing += checked.image_problems
    if checked.caption_problems and config.on_bad_caption == "fail":
        failing += checked.caption_problems
    if failing:
        report["failure"] = _summary(failing)
    elif kept.empty:
        report["failure"] = "ingest: no usable captions left"
    return IngestResult(kept[schemas.CAPTIONS.names], triplets, report)


def _report(config: IngestConfig, source: SourceRows, checked: _Checked, usable: pd.DataFrame,
            over_limit: pd.Series, kept: pd.DataFrame, bad_images: int, re_rooted: int) -> dict[str, Any]:
    """reports/ingest.json without the failure: the counts, splits, limits, policies and every problem."""
    frame, bad_caption = checked.frame, checked.bad_caption
    dropped = source.input_captions - len(kept)
    problems = checked.image_problems + checked.caption_problems
    report = {
        "source": config.source,
        "annotations": _fingerprint(config.annotations),
        "image_root": str(config.image_root) if config.image_root else None,
        "captions": {"input": source.input_captions, "kept": len(kept), "dropped": dropped,
                     "dropped_bad_caption": int(bad_caption.sum()) + len(source.problems),
                     "dropped_bad_image": int((checked.on_bad_image & ~bad_caption).sum()),
                     "dropped_over_limit": int(over_limit.sum())},
        "images": {"input": int(frame["image_path"].nunique()), "kept": int(kept["image_path"].nunique()),
                   "bad": bad_images, "re_rooted": re_rooted},
        "splits": {name: {"images": int(group["image_id"].nunique()), "captions": len(group)}
                   for name, group in kept.groupby("split", sort=True)},
        "captions_per_image": {str(k): int(v) for k, v in sorted(Counter(kept.groupby("image_id").size()).items())},
        "caption_limit": _limit_report(usable, over_limit, config.captions_per_image),
        "policy": {"on_bad_image": config.on_bad_image, "on_bad_caption": config.on_bad_caption},
        "problem_counts": dict(sorted(Counter(_reason_kind(p) for p in checked.caption_problems
                                              + checked.image_problems).items())),
        "problems": problems,
    }
    counts = report["captions"]
    assert counts["dropped_bad_caption"] + counts["dropped_bad_image"] + counts["dropped_over_limit"] == dropped
    return report


def _over_limit(image_ids: pd.Series, limit: int | None) -> pd.Series:
    """Captions past an image's first `limit` usable ones, in file order."""
    if limit is None:
        return pd.Series(False, index=image_ids.index)
    return image_ids.groupby(image_ids, sort=False).cumcount() >= limit


def _limit_report(usable: pd.DataFrame, over_limit: pd.Series, limit: int | None) -> dict[str, Any]:
    """Per split: captions dropped past the limit, images that had more and images that have fewer."""
    per_image = usable.groupby("image_id", sort=False).agg(split=("split", "first"), captions=("caption", "size"))
    splits = {}
    for name, images in per_image.groupby("split", sort=True):
        splits[name] = {"dropped": int((over_limit & (usable["split"] == name)).sum()),
                        "images_over": int((images["captions"] > limit).sum()) if limit else 0,
                        "images_under": int((images["captions"] < limit).sum()) if limit else 0}
    return {"captions_per_image": limit, "splits": splits,
            "dropped_caption_ids": usable.loc[over_limit, "caption_id"].tolist()}


def _reason_kind(problem: dict[str, Any]) -> str:
    """The reason without its particulars ("undecodable (OSError: ...)" -> "undecodable"), for counting."""
    general = re.sub(r" ?[('].*", "", problem["reason"])
    return f"{problem['kind']}: {general}"


def _summary(problems: list[dict[str, Any]]) -> str:
    kinds = ", ".join(f"{count} {kind}" for kind, count in Counter(_reason_kind(p) for p in problems).items())
    named = "; ".join(
        f"{p['file']}: {p['reason']}" if p["kind"] == "image" else f"{p['file']} {p['row']}: {p['reason']}"
        for p in problems[:PROBLEMS_IN_SUMMARY])
    more = f"; and {len(problems) - PROBLEMS_IN_SUMMARY} more" if len(problems) > PROBLEMS_IN_SUMMARY else ""
    return (f"ingest failed ({kinds}): {named}{more} -- full list in {paths.INGEST_REPORT}; "
            "set data.on_bad_image / data.on_bad_caption to 'skip' to leave them out")


def _fingerprint(path: Path | None) -> dict[str, Any] | None:
    """Identify the annotation file by content, so the report changes when the file does."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def write_outputs(result: IngestResult, captions_path: Path = paths.CAPTIONS,
                  triplets_path: Path = paths.TRUE_TRIPLETS, report_path: Path = paths.INGEST_REPORT,
                  demo_image_dir: Path = paths.DEMO_IMAGES) -> None:
    """Write the report always (it explains a failure); the Parquet files only on success."""
    report_path.parent.mkdir(parents=True, exist_ok=True)
    demo_image_dir.mkdir(parents=True, exist_ok=True)  # a declared output, empty unless the source is demo
    report_path.write_text(json.dumps(result.report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if result.failure:
        return
    schemas.write(result.captions, schemas.CAPTIONS, captions_path)
    schemas.write(result.true_triplets, schemas.TRUE_TRIPLETS, triplets_path)


@dataclass(frozen=True)
class Steps:
    """The stage's steps; the Prefect flow passes them wrapped as tasks, so each shows in the UI."""
    read: Callable[..., SourceRows] = read_source
    relocate: Callable[..., dict[str, str]] = relocate_images
    check: Callable[..., dict[str, str]] = check_images
    write: Callable[..., None] = write_outputs


def run(config: IngestConfig, demo_image_dir: Path = paths.DEMO_IMAGES, captions_path: Path = paths.CAPTIONS,
        triplets_path: Path = paths.TRUE_TRIPLETS, report_path: Path = paths.INGEST_REPORT,
        steps: Steps = Steps()) -> IngestResult:
    """The whole stage; raises InputDataError with the one-line summary on failure, after the report is written."""
    source = steps.read(config, demo_image_dir)
    relocated = steps.relocate(source, config.image_root, config.workers)
    bad_images = steps.check(source.frame["image_path"], config.min_image_side, config.workers)
    result = assemble(config, source, bad_images, relocated)
    steps.write(result, captions_path, triplets_path, report_path, demo_image_dir)
    if result.failure:
        raise InputDataError(result.failure)
    return result
