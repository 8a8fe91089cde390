"""Stage `ingest`: annotations + images -> data/interim/captions.parquet and reports/ingest.json.

Every input caption is accounted for: it is either kept, or dropped with a problem in the report
naming its file, row and reason. With `on_bad_* = fail` (the default) any problem fails the stage
with a one-line summary, after the report is written.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import ijson
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image
from sklearn.model_selection import GroupShuffleSplit
from tqdm import tqdm

from tasks import paths, schemas
from tasks.config import InputDataError, section, subsection
from tasks.demo_data import NO_CAST, generate_demo

SOURCES = ("demo", "karpathy", "table", "lamp_txt")
POLICIES = ("fail", "skip")
SPLIT_ALIASES = {"train": "train", "restval": "train", "val": "val", "test": "test"}
TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
PROBLEMS_IN_SUMMARY = 10
# The raw-row frame every reader returns; `row` locates the caption in its file for messages.
RAW_COLUMNS = ["image_id", "image_path", "caption_id", "caption", "split", "row"]


@dataclass(frozen=True)
class DemoConfig:
    n_images: int = 480
    image_size: int = 64
    splits: Mapping[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.1, "test": 0.2})
    passive_voice: bool = False
    colour_cast: Sequence[float] = NO_CAST


@dataclass(frozen=True)
class IngestConfig:
    source: str = "demo"
    annotations: Path | None = None
    image_root: Path | None = None
    split: str = "test"  # lamp_txt files carry no split: all their captions get this one
    captions_per_image: int | None = 5  # the benchmark protocol's 5 (COCO has images with 6-7); None keeps all
    val_fraction: float = 0.1  # tables without a split column are split by image with these
    test_fraction: float = 0.1
    min_image_side: int = 32
    on_bad_image: str = "fail"
    on_bad_caption: str = "fail"
    seed: int = 0
    workers: int = 0  # image-check threads; 0 = automatic
    demo: DemoConfig = field(default_factory=DemoConfig)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> IngestConfig:
        data = dict(section(params, "data", {f for f in cls.__dataclass_fields__}))
        demo = subsection(data, "data.demo", set(DemoConfig.__dataclass_fields__))
        for key in ("annotations", "image_root"):
            data[key] = Path(data[key]) if data.get(key) else None
        if data["image_root"] is None and data["annotations"] is not None:
            data["image_root"] = data["annotations"].parent  # relative image paths: beside the annotations
        config = cls(**data, demo=DemoConfig(**demo))
        config.validate()
        return config

    def validate(self) -> None:
        def bad(key: str, reason: str) -> InputDataError:
            return InputDataError(f"params.yaml: data.{key}: {reason}")

        if self.source not in SOURCES:
            raise bad("source", f"'{self.source}' is not one of {', '.join(SOURCES)}")
        for key in ("on_bad_image", "on_bad_caption"):
            if getattr(self, key) not in POLICIES:
                raise bad(key, f"'{getattr(self, key)}' is not one of {', '.join(POLICIES)}")
        if self.source != "demo":
            if self.annotations is None:
                raise bad("annotations", f"required for source '{self.source}'")
            if not self.annotations.is_file():
                raise bad("annotations", f"{self.annotations}: file not found")
            if self.image_root is not None and not self.image_root.is_dir():
                raise bad("image_root", f"{self.image_root}: directory not found")
        if self.source == "table" and self.annotations.suffix.lower() not in TABLE_FORMATS:
            raise bad("annotations", f"{self.annotations}: unknown table format; use one of {', '.join(TABLE_FORMATS)}")
        if self.split not in SPLIT_ALIASES:
            raise bad("split", f"'{self.split}' is not one of {', '.join(SPLIT_ALIASES)}")
        fractions = (self.val_fraction, self.test_fraction)
        if min(fractions) < 0 or sum(fractions) >= 1:
            raise bad("val_fraction/test_fraction", "each must be >= 0 and together < 1")
        if self.min_image_side < 1:
            raise bad("min_image_side", "must be >= 1")
        if self.captions_per_image is not None and (isinstance(self.captions_per_image, bool) or
                                                    not isinstance(self.captions_per_image, int) or
                                                    self.captions_per_image < 1):
            raise bad("captions_per_image", f"'{self.captions_per_image}' must be an integer >= 1, or null to keep all")


@dataclass
class SourceRows:
    """What a reader found: parsed rows, and problems for captions it could not parse."""

    frame: pd.DataFrame
    file: str
    row_label: str  # how `row` reads in messages: "line", "row", "image index"
    problems: list[dict[str, Any]] = field(default_factory=list)
    true_triplets: pd.DataFrame | None = None

    @property
    def input_captions(self) -> int:
        return len(self.frame) + len(self.problems)

    def caption_problem(self, row: int, reason: str, caption_id: str | None = None) -> dict[str, Any]:
        return {"kind": "caption", "file": self.file, "row": f"{self.row_label} {row}",
                "caption_id": caption_id, "reason": reason}


# ---------------------------------------------------------------- readers

def read_source(config: IngestConfig, demo_image_dir: Path = paths.DEMO_IMAGES) -> SourceRows:
    if config.source == "demo":
        return _read_demo(config, demo_image_dir)
    reader = {"karpathy": _read_karpathy, "table": _read_table, "lamp_txt": _read_lamp_txt}[config.source]
    return reader(config)


def _resolve(image_root: Path | None, relative: pd.Series) -> pd.Series:
    if image_root is None:
        return relative
    root = str(image_root).rstrip("/") + "/"
    return relative.where(relative.str.startswith("/"), root + relative)


def _read_demo(config: IngestConfig, image_dir: Path) -> SourceRows:
    demo = config.demo
    try:
        captions, triplets = generate_demo(image_dir, demo.n_images, demo.image_size, config.seed, demo.splits,
                                          demo.passive_voice, demo.colour_cast)
    except ValueError as exc:
        raise InputDataError(f"params.yaml: data.demo: {exc}") from None
    frame = captions.assign(row=range(len(captions)))
    return SourceRows(frame=frame[RAW_COLUMNS], file="demo", row_label="caption", true_triplets=triplets)


def _read_karpathy(config: IngestConfig) -> SourceRows:
    """Stream `images[]` of a Karpathy split file (Flickr30K: 31k images, COCO: 123k) without loading it whole."""
    columns: dict[str, list] = {name: [] for name in RAW_COLUMNS}
    source = SourceRows(frame=pd.DataFrame(), file=str(config.annotations), row_label="image index")
    with open(config.annotations, "rb") as raw:
        try:
            for index, image in enumerate(ijson.items(_Utf8Repairing(raw), "images.item", use_float=True)):
                relative = "/".join(part for part in (image.get("filepath"), image.get("filename")) if part)
                sentences = image.get("sentences") or []
                if not image.get("filename"):
                    source.problems += [source.caption_problem(index, "image entry without filename",
                                                               str(sentence.get("sentid")))
                                        for sentence in sentences]
                    continue
                for number, sentence in enumerate(sentences):
                    columns["image_id"].append(relative)
                    columns["image_path"].append(relative)
                    columns["caption_id"].append(str(sentence.get("sentid", f"{relative}#{number}")))
                    columns["caption"].append(sentence.get("raw") or "")
                    columns["split"].append(image.get("split", ""))
                    columns["row"].append(index)
        except ijson.JSONError as exc:
            raise InputDataError(f"{config.annotations}: not a valid Karpathy JSON file: {exc}") from None
    frame = pd.DataFrame(columns)
    if frame.empty:
        raise InputDataError(f"{config.annotations}: no captions found under images[].sentences[]")
    frame["image_path"] = _resolve(config.image_root, frame["image_path"])
    source.frame = frame
    return source


class _Utf8Repairing:
    """A binary reader that turns invalid UTF-8 into U+FFFD, so the caption holding it can be named and dropped."""

    def __init__(self, raw: io.BufferedReader):
        self.raw = raw
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read(self, size: int = -1) -> bytes:
        chunk = self.raw.read(size)
        return self.decoder.decode(chunk, final=not chunk).encode("utf-8")


def _decoded_lines(path: Path, source: SourceRows) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line; lines that are not UTF-8 become caption problems."""
    lines = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            source.problems.append(source.caption_problem(number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})"))
            continue
        if text.strip():
            lines.append((number, text))
    return lines


def _read_table(config: IngestConfig) -> SourceRows:
    path = config.annotations
    fmt = TABLE_FORMATS[path.suffix.lower()]
    source = SourceRows(frame=pd.DataFrame(), file=str(path), row_label="row" if fmt == "parquet" else "line")
    if fmt == "parquet":
        frame = pq.read_table(path).to_pandas().astype("string").fillna("")
        frame["row"] = range(1, len(frame) + 1)
    elif fmt == "jsonl":
        records = []
        for number, text in _decoded_lines(path, source):
            try:
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                source.problems.append(source.caption_problem(number, f"not a JSON object ({exc})"))
                continue
            records.append({key: "" if value is None else str(value) for key, value in record.items()} | {"row": number})
        frame = pd.DataFrame.from_records(records)
    else:
        lines = _decoded_lines(path, source)
        if not lines:
            raise InputDataError(f"{path}: no rows")
        (header_line, header), body = lines[0], lines[1:]
        if header_line != 1 or any(p["row"] == "line 1" for p in source.problems):
            raise InputDataError(f"{path}: line 1 must be a UTF-8 header naming the columns (image, caption[, split])")
        # TSV captions contain stray quotes (Flickr30K does): no quoting there, one row per line.
        quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
        text = "\n".join([header] + [line for _, line in body])
        frame = pd.read_csv(io.StringIO(text), sep="\t" if fmt == "tsv" else ",", dtype=str,
                            keep_default_na=False, quoting=quoting)
        # Quoted multi-line CSV fields break the row-to-line mapping; fall back to row numbers.
        frame["row"] = [number for number, _ in body] if len(frame) == len(body) else range(2, len(frame) + 2)
    missing = {"image", "caption"} - set(frame.columns)
    if missing:
        raise InputDataError(f"{path}: missing column(s) {sorted(missing)}; found {sorted(set(frame.columns) - {'row'})}")
    if "caption_id" not in frame.columns:
        # Flickr30K's own token format: image#k, k counting that image's captions.
        frame["caption_id"] = frame["image"] + "#" + frame.groupby("image").cumcount().astype(str)
    if "split" not in frame.columns:
        frame["split"] = None  # assigned by image after the checks, see _split_by_image
    frame = frame.rename(columns={"image": "image_id"})
    frame["image_path"] = _resolve(config.image_root, frame["image_id"])
    source.frame = frame[RAW_COLUMNS]
    return source


def _read_lamp_txt(config: IngestConfig) -> SourceRows:
    """Lines `idx*image_path*caption`, the official LAMP code's format."""
    source = SourceRows(frame=pd.DataFrame(), file=str(config.annotations), row_label="line")
    records = []
    for number, text in _decoded_lines(config.annotations, source):
        fields = text.split("*", 2)
        if len(fields) != 3:
            source.problems.append(source.caption_problem(number, "expected 'idx*image_path*caption'"))
            continue
        caption_id, image, caption = (value.strip() for value in fields)
        records.append((image, image, caption_id, caption, config.split, number))
    source.frame = pd.DataFrame.from_records(records, columns=RAW_COLUMNS)
    source.frame["image_path"] = _resolve(config.image_root, source.frame["image_path"])
    return source


# ---------------------------------------------------------------- locating images

def relocate_images(source: SourceRows, image_root: Path | None, workers: int = 0) -> dict[str, str]:
    """Point `source`'s image paths that do not exist at the file found under `image_root` by a trailing part of
    the annotation's own path, longest first (`val2014/COCO_val2014_x.jpg`, then the file name `x.jpg`); returns
    {old path: found path}.

    Annotations written on another machine (the official LAMP lists carry their authors' absolute paths) then
    work once `data.image_root` names the local image folder. A path found neither way stays, and is "missing".
    """
    moved = _relocations(source.frame, image_root, workers)
    if moved:
        source.frame["image_path"] = source.frame["image_path"].map(moved).fillna(source.frame["image_path"])
    return moved


def _relocations(frame: pd.DataFrame, image_root: Path | None, workers: int) -> dict[str, str]:
    """{path: found} for image paths that do not exist but are found under `image_root`."""
    if image_root is None:
        return {}
    annotated = frame.drop_duplicates("image_path").set_index("image_path")["image_id"]
    with ThreadPoolExecutor(max_workers=_workers(workers)) as pool:
        found = pool.map(_relocated, annotated.index, annotated.values, [image_root] * len(annotated), chunksize=256)
        moved = dict(zip(annotated.index, found))
    return {path: new for path, new in moved.items() if new is not None}


def _relocated(path: str, annotated: str, image_root: Path) -> str | None:
    if os.path.isfile(path):
        return None
    parts = PurePosixPath(annotated.replace("\\", "/")).parts  # lists written on Windows, too
    parts = parts[1:] if parts and parts[0] == "/" else parts
    for start in range(len(parts)):
        candidate = image_root.joinpath(*parts[start:])
        if str(candidate) != path and candidate.is_file():
            return str(candidate)
    return None


def _workers(workers: int) -> int:
    """File checks wait on the disk, not the CPU: more threads than cores."""
    return workers or min(32, 4 * (os.cpu_count() or 1))


# ---------------------------------------------------------------- checks

def check_image(path: str, min_side: int) -> str | None:
    """Why the image at `path` is unusable, or None when it is fine."""
    if not os.path.isfile(path):
        return "missing"
    try:
        with Image.open(path) as image:
            width, height = image.size
            if min(width, height) < min_side:
                return f"too small ({width}x{height} px, minimum side {min_side})"
            # JPEG decodes at a reduced scale: still reads every byte, so truncation is caught, 8x cheaper.
            image.draft("RGB", (min_side, min_side))
            image.load()
    except Image.DecompressionBombError as exc:
        return f"too large ({exc})"
    except Exception as exc:  # Pillow raises many types for corrupt files; all mean the same here
        return f"undecodable ({type(exc).__name__}: {exc})"
    return None


def check_images(image_paths: Iterable[str], min_side: int, workers: int = 0) -> dict[str, str]:
    """{path: reason} for every unusable image, checked in parallel (Pillow decodes without the GIL)."""
    unique = sorted(set(image_paths))
    with ThreadPoolExecutor(max_workers=_workers(workers)) as pool:
        verdicts = pool.map(check_image, unique, [min_side] * len(unique), chunksize=64)
        reasons = list(tqdm(verdicts, total=len(unique), desc="checking images", unit="img", mininterval=2, disable=None))
    return {path: reason for path, reason in zip(unique, reasons) if reason is not None}


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


# ---------------------------------------------------------------- assembly

@dataclass
class IngestResult:
    captions: pd.DataFrame
    true_triplets: pd.DataFrame
    report: dict[str, Any]

    @property
    def failure(self) -> str | None:
        return self.report.get("failure")


def assemble(config: IngestConfig, source: SourceRows, bad_images: dict[str, str],
             relocated: dict[str, str] | None = None) -> IngestResult:
    """Apply the checks, policies and the captions-per-image limit; the report accounts for every input caption."""
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

    usable = frame[~bad_caption & ~on_bad_image].drop(columns="row")
    usable["split"] = usable["split"].map(SPLIT_ALIASES) if usable["split"].notna().all() else \
        _split_by_image(usable["image_id"], config.val_fraction, config.test_fraction, config.seed)
    over_limit = _over_limit(usable["image_id"], config.captions_per_image)
    kept = usable[~over_limit].reset_index(drop=True)
    triplets = source.true_triplets
    triplets = triplets[triplets["caption_id"].isin(kept["caption_id"])] if triplets is not None else \
        pd.DataFrame({"caption_id": pd.Series(dtype=str), "triplets": pd.Series(dtype=object)})

    dropped = source.input_captions - len(kept)
    report = {
        "source": config.source,
        "annotations": _fingerprint(config.annotations),
        "image_root": str(config.image_root) if config.image_root else None,
        "captions": {"input": source.input_captions, "kept": len(kept), "dropped": dropped,
                     "dropped_bad_caption": int(bad_caption.sum()) + len(source.problems),
                     "dropped_bad_image": int((on_bad_image & ~bad_caption).sum()),
                     "dropped_over_limit": int(over_limit.sum())},
        "images": {"input": int(frame["image_path"].nunique()), "kept": int(kept["image_path"].nunique()),
                   "bad": len(bad_images), "re_rooted": len(relocated or {})},
        "splits": {name: {"images": int(group["image_id"].nunique()), "captions": len(group)}
                   for name, group in kept.groupby("split", sort=True)},
        "captions_per_image": {str(k): int(v) for k, v in sorted(Counter(kept.groupby("image_id").size()).items())},
        "caption_limit": _limit_report(usable, over_limit, config.captions_per_image),
        "policy": {"on_bad_image": config.on_bad_image, "on_bad_caption": config.on_bad_caption},
        "problem_counts": dict(sorted(Counter(_reason_kind(p) for p in caption_problems + image_problems).items())),
        "problems": image_problems + caption_problems,
    }
    counts = report["captions"]
    assert counts["dropped_bad_caption"] + counts["dropped_bad_image"] + counts["dropped_over_limit"] == dropped
    failing = []
    if image_problems and config.on_bad_image == "fail":
        failing += image_problems
    if caption_problems and config.on_bad_caption == "fail":
        failing += caption_problems
    if failing:
        report["failure"] = _summary(failing)
    elif kept.empty:
        report["failure"] = "ingest: no usable captions left"
    return IngestResult(kept[schemas.CAPTIONS.names], triplets, report)


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


def run(config: IngestConfig, demo_image_dir: Path = paths.DEMO_IMAGES, captions_path: Path = paths.CAPTIONS,
        triplets_path: Path = paths.TRUE_TRIPLETS, report_path: Path = paths.INGEST_REPORT) -> IngestResult:
    """The whole stage without Prefect; raises InputDataError with the one-line summary on failure."""
    source = read_source(config, demo_image_dir)
    relocated = relocate_images(source, config.image_root, config.workers)
    bad_images = check_images(source.frame["image_path"], config.min_image_side, config.workers)
    result = assemble(config, source, bad_images, relocated)
    write_outputs(result, captions_path, triplets_path, report_path, demo_image_dir)
    if result.failure:
        raise InputDataError(result.failure)
    return result
