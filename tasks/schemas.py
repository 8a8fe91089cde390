"""The Parquet contracts of the pipeline: every stage reads and writes through this module.

One pyarrow schema per artifact (docs/data.md, docs/knowledge.md, docs/features.md). Writers cast to the schema,
readers check it, so a column renamed or retyped in one stage fails loudly at the boundary instead of downstream.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import InputDataError

SPLITS = ("train", "val", "test")

TRIPLET = pa.struct([("subject", pa.string()), ("action", pa.string()), ("object", pa.string())])

CAPTIONS = pa.schema(
    [
        ("image_id", pa.string()),
        ("image_path", pa.string()),
        ("caption_id", pa.string()),
        ("caption", pa.string()),
        ("split", pa.string()),
    ],
    metadata={"artifact": "captions"},
)

# Ground-truth triplets of the demo captions, used to score the knowledge stage.
TRUE_TRIPLETS = pa.schema(
    [("caption_id", pa.string()), ("triplets", pa.list_(TRIPLET))],
    metadata={"artifact": "true_triplets"},
)

KNOWLEDGE = pa.schema(
    [
        ("caption_id", pa.string()),
        ("caption", pa.string()),
        ("triplets", pa.list_(TRIPLET)),
        ("states", pa.list_(pa.string())),
        ("status", pa.string()),  # ok | partial | empty
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("attempts", pa.int32()),
    ],
    metadata={"artifact": "knowledge"},
)

REJECTS = pa.schema(
    [
        ("caption_id", pa.string()),
        ("attempt", pa.int32()),
        ("reason", pa.string()),
        ("raw_output", pa.string()),
    ],
    metadata={"artifact": "rejects"},
)


# data/features/<split>/: the rows of the feature arrays (featurize writes them, the model stages read them).
FEATURE_IMAGES = pa.schema(
    [("row", pa.int32()), ("image_id", pa.string()), ("image_path", pa.string())],
    metadata={"artifact": "feature_images"},
)

FEATURE_CAPTIONS = pa.schema(
    [
        ("row", pa.int32()),
        ("caption_id", pa.string()),
        ("caption", pa.string()),
        ("image_id", pa.string()),
        ("image_row", pa.int32()),  # row of the caption's image in images.parquet (and image.npy)
        ("status", pa.string()),  # the knowledge status: ok | partial | empty
        ("n_triplets", pa.int32()),
    ],
    metadata={"artifact": "feature_captions"},
)

# The stage that writes each artifact, named when a reader finds it missing.
MADE_BY = {"captions": "ingest", "true_triplets": "ingest", "knowledge": "validate", "rejects": "validate",
           "feature_images": "featurize", "feature_captions": "featurize"}


class SchemaError(ValueError):
    """A Parquet file or frame does not match its contract."""


def to_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Cast a frame to `schema` (columns in schema order); missing or extra columns are an error."""
    expected = set(schema.names)
    if set(frame.columns) != expected:
        missing = sorted(expected - set(frame.columns))
        extra = sorted(set(frame.columns) - expected)
        raise SchemaError(f"{schema.metadata[b'artifact'].decode()}: missing columns {missing}, unexpected {extra}")
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def write(frame: pd.DataFrame, schema: pa.Schema, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(to_table(frame, schema), path)


def read(path: Path, schema: pa.Schema) -> pd.DataFrame:
    """Read a Parquet artifact and check it was written with `schema`."""
    artifact = schema.metadata[b"artifact"].decode()
    if not Path(path).is_file():
        raise InputDataError(f"{path}: not found; run `dvc repro {MADE_BY[artifact]}`")
    table = pq.read_table(path)
    if not table.schema.remove_metadata().equals(schema.remove_metadata()):
        raise SchemaError(f"{path}: schema differs from the {schema.metadata[b'artifact'].decode()} contract:\n"
                          f"found {table.schema.remove_metadata()}\nexpected {schema.remove_metadata()}")
    return table.to_pandas()
