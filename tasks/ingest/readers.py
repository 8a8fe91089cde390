"""Reading the annotations of each source into one raw frame (RAW_COLUMNS), with problems for unparsable rows."""
from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ijson
import pandas as pd
import pyarrow.parquet as pq

from tasks import paths
from tasks.config import InputDataError
from tasks.ingest.config import TABLE_FORMATS, IngestConfig
from tasks.ingest.demo import generate_demo

# The raw-row frame every reader returns; `row` locates the caption in its file for messages.
RAW_COLUMNS = ["image_id", "image_path", "caption_id", "caption", "split", "row"]


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
    demo = config.demo  # checked as data.demo by the config
    captions, triplets = generate_demo(image_dir, demo.n_images, demo.image_size, config.seed, demo.splits,
                                       demo.passive_voice, demo.colour_cast)
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
        frame = _jsonl_frame(path, source)
    else:
        frame = _delimited_frame(path, fmt, source)
    missing = {"image", "caption"} - set(frame.columns)
    if missing:
        raise InputDataError(f"{path}: missing column(s) {sorted(missing)}; found {sorted(set(frame.columns) - {'row'})}")
    if "caption_id" not in frame.columns:
        # Flickr30K's own token format: image#k, k counting that image's captions.
        frame["caption_id"] = frame["image"] + "#" + frame.groupby("image").cumcount().astype(str)
    if "split" not in frame.columns:
        frame["split"] = None  # assigned by image after the checks, see stage._split_by_image
    frame = frame.rename(columns={"image": "image_id"})
    frame["image_path"] = _resolve(config.image_root, frame["image_id"])
    source.frame = frame[RAW_COLUMNS]
    return source


def _jsonl_frame(path: Path, source: SourceRows) -> pd.DataFrame:
    """One JSON object per line, every value as a string; other lines become caption problems."""
    records = []
    for number, text in _decoded_lines(path, source):
        record = _json_object(text)
        if isinstance(record, str):
            source.problems.append(source.caption_problem(number, f"not a JSON object ({record})"))
            continue
        records.append({key: "" if value is None else str(value) for key, value in record.items()} | {"row": number})
    return pd.DataFrame.from_records(records)


def _json_object(text: str) -> dict[str, Any] | str:
    """The line's JSON object, or why it is not one."""
    try:
        record = json.loads(text)
    except ValueError as exc:
        return str(exc)
    return record if isinstance(record, dict) else "not a JSON object"


def _delimited_frame(path: Path, fmt: str, source: SourceRows) -> pd.DataFrame:
    """A CSV or TSV file with a header line, every value as a string."""
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
    return frame


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
