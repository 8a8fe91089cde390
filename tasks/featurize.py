"""Stage `featurize`: frozen backbone features of every split -> data/features/ and reports/featurize.json.

Per split, `data/features/<split>/` holds (the contract the model stages read; the arrays load with
np.load(mmap_mode="r")), with I images, C captions, D = embed dim, K = max_triplets, S = slot_tokens:

  images.parquet     row, image_id, image_path: the split's distinct images, first-appearance order of captions
  captions.parquet   row, caption_id, caption, image_id, image_row, status, n_triplets: captions.parquet order
  image.npy          float16 (I, D)        zero-shot encode_image, L2-normalised
  text.npy           float16 (C, D)        frozen caption features g(t) = encode_text, L2-normalised
  slot_tokens.npy    int32 (C, K, 3, S)    token ids of triplet k's subject/action/object, no SOT/EOT, 0-padded
  triplet_mask.npy   bool (C, K)           triplet k exists (all False for status empty)
  states.npy         float16 (C, K, D)     encode_text of state_template, L2-normalised, 0 where no triplet
  templates.npy      float16 (C, K, D)     encode_text of triplet_template, L2-normalised, 0 where no triplet
  topk_i2t.npy       int32 (I, min(k, C))  caption rows of each image's most similar captions, best first
  topk_t2i.npy       int32 (C, min(k, I))  image rows of each caption's most similar images, best first

`data/features/meta.json` names the backbone (its config and the sha256 of its weights), D, K, S, top_k, the
templates and the counts per split.
"""
from __future__ import annotations

import json
import shutil
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap

from tasks import backbone, paths, retrieval, schemas
from tasks.config import InputDataError, ParamError, checked

SLOTS = ("subject", "action", "object")
STATUSES = ("ok", "partial", "empty")
ATTRIBUTE_ACTIONS = ("is", "are")  # <girl, is, small>: attribute knowledge rather than an action
WRITE_ROWS = 65536  # feature rows scattered into a memory-mapped array at a time
EXAMPLES_IN_MESSAGES = 5


@dataclass(frozen=True)
class FeaturizeConfig:
    SECTION: ClassVar[str] = "featurize"

    max_triplets: int | None = checked(least=1)  # K triplet slots per caption; None: llm.max_triplets
    slot_tokens: int = checked(least=1)
    state_template: str
    triplet_template: str
    top_k: int = checked(least=1)
    chunk_size: int = checked(least=1)
    batch_size: int = checked(least=1)
    workers: int = checked(least=0)
    device: str
    drop_attributes: bool  # the paper's "w/o attribute knowledge" ablation: leave out <x, is, y> triplets

    def resolve(self, params: Mapping[str, Any]) -> FeaturizeConfig:
        _check_template("state_template", self.state_template, (*SLOTS, "state"), required="state")
        _check_template("triplet_template", self.triplet_template, SLOTS)
        if self.max_triplets is not None:
            return self
        llm_triplets = (params.get("llm") or {}).get("max_triplets")
        if isinstance(llm_triplets, bool) or not isinstance(llm_triplets, int) or llm_triplets < 1:
            raise ParamError("max_triplets", f"null means llm.max_triplets, which is not an integer >= 1: "
                                             f"{llm_triplets!r}")
        return replace(self, max_triplets=llm_triplets)


def _check_template(key: str, template: str, fields: Sequence[str], required: str | None = None) -> None:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ParamError(key, f"not a format string ({exc})") from None
    unknown = sorted(names - set(fields))
    if unknown:
        raise ParamError(key, f"unknown fields {unknown}; allowed: {{{'}, {'.join(fields)}}}")
    if required and required not in names:
        raise ParamError(key, f"must contain {{{required}}}")


def _examples(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:EXAMPLES_IN_MESSAGES])
    return shown + (", ..." if len(ids) > EXAMPLES_IN_MESSAGES else "")


def align_knowledge(captions: pd.DataFrame, knowledge: pd.DataFrame, captions_path: Path,
                    knowledge_path: Path) -> pd.DataFrame:
    """The knowledge rows in captions order: every caption must have exactly one, made for its text."""
    repeated = knowledge["caption_id"][knowledge["caption_id"].duplicated()].unique().tolist()
    if repeated:
        raise InputDataError(f"{knowledge_path}: {len(repeated)} caption ids have more than one row "
                             f"({_examples(repeated)}); re-run `dvc repro validate`")
    known, wanted = set(knowledge["caption_id"]), set(captions["caption_id"])
    missing = [caption_id for caption_id in captions["caption_id"] if caption_id not in known]
    extra = [caption_id for caption_id in knowledge["caption_id"] if caption_id not in wanted]
    if missing or extra:
        problems = [f"no row for {len(missing)} captions of {captions_path} ({_examples(missing)})"] if missing else []
        problems += [f"{len(extra)} rows for captions not in {captions_path} ({_examples(extra)})"] if extra else []
        raise InputDataError(f"{knowledge_path}: {'; '.join(problems)}; re-run `dvc repro validate`")
    aligned = knowledge.set_index("caption_id").loc[captions["caption_id"]].reset_index()
    for caption_id, text, known_text, triplets, states, status in zip(
            aligned["caption_id"], captions["caption"], aligned["caption"], aligned["triplets"], aligned["states"],
            aligned["status"]):
        where = f"{knowledge_path}: caption {caption_id}"
        if status not in STATUSES:
            raise InputDataError(f"{where}: status '{status}' is not one of {', '.join(STATUSES)}")
        if len(triplets) != len(states):
            raise InputDataError(f"{where}: {len(triplets)} triplets but {len(states)} states")
        if (status == "empty") != (len(triplets) == 0):
            raise InputDataError(f"{where}: status '{status}' with {len(triplets)} triplets")
        if text != known_text:
            raise InputDataError(f"{where}: knowledge made for '{known_text}', but the caption is '{text}'; "
                                 "re-run `dvc repro validate`")
    return aligned


@dataclass
class SplitKnowledge:
    """The triplets kept for one split (at most K per caption), as flat (caption row, triplet index) lists."""

    rows: np.ndarray
    ks: np.ndarray
    triplets: list[tuple[str, str, str]]
    states: list[str]
    beyond_max: int  # triplets dropped because a caption had more than K

    @classmethod
    def of(cls, knowledge: pd.DataFrame, max_triplets: int, drop_attributes: bool = False) -> SplitKnowledge:
        rows, ks, triplets, states, beyond = [], [], [], [], 0
        for row, (caption_triplets, caption_states) in enumerate(zip(knowledge["triplets"], knowledge["states"])):
            if drop_attributes:
                kept = [(t, s) for t, s in zip(caption_triplets, caption_states) if t["action"] not in ATTRIBUTE_ACTIONS]
                caption_triplets, caption_states = [t for t, _ in kept], [s for _, s in kept]
            beyond += max(0, len(caption_triplets) - max_triplets)
            for k, (triplet, state) in enumerate(zip(caption_triplets[:max_triplets], caption_states)):
                rows.append(row)
                ks.append(k)
                triplets.append(tuple(triplet[slot] for slot in SLOTS))
                states.append(state)
        return cls(np.asarray(rows, dtype=np.int64), np.asarray(ks, dtype=np.int64), triplets, states, beyond)


def slot_token_ids(tokenizer: Any, texts: Sequence[str], length: int) -> np.ndarray:
    """(N, length) int32: each text's token ids as the tokenizer produces them, without SOT/EOT, truncated, 0-padded."""
    ids = np.zeros((len(texts), length), dtype=np.int32)
    for row, text in enumerate(texts):
        tokens = tokenizer.encode(text)[:length]
        ids[row, :len(tokens)] = tokens
    return ids


def write_text_features(path: Path, shape: tuple[int, ...], positions: tuple[np.ndarray, ...], texts: Sequence[str],
                        encode: Callable[[list[str], str], np.ndarray], desc: str) -> int:
    """Encode each distinct text once and write its feature at each of its positions (zeros elsewhere).

    Returns how many distinct texts were encoded.
    """
    codes, distinct = pd.factorize(pd.Series(texts, dtype=object))
    features = encode(list(distinct), desc)
    out = open_memmap(path, mode="w+", dtype=np.float16, shape=shape)  # a new file reads as zeros
    for start in range(0, len(codes), WRITE_ROWS):
        stop = start + WRITE_ROWS
        out[tuple(position[start:stop] for position in positions)] = features[codes[start:stop]]
    out.flush()
    return len(distinct)


def write_array(path: Path, values: np.ndarray) -> None:
    out = open_memmap(path, mode="w+", dtype=values.dtype, shape=values.shape)
    out[...] = values
    out.flush()


@dataclass
class Encoder:
    """The frozen backbone with the stage's batch size, workers and device."""

    model: Any
    preprocess: Any
    tokenizer: Any
    config: FeaturizeConfig
    device: Any

    @property
    def dim(self) -> int:
        return self.model.visual.output_dim

    def images(self, image_paths: list[str], desc: str) -> np.ndarray:
        return backbone.encode_images(self.model, self.preprocess, image_paths, self.config.batch_size,
                                      self.config.workers, self.device, desc)

    def texts(self, texts: list[str], desc: str) -> np.ndarray:
        return backbone.encode_texts(self.model, self.tokenizer, texts, self.config.batch_size, self.device, desc)


def featurize_split(split: str, captions: pd.DataFrame, knowledge: pd.DataFrame, config: FeaturizeConfig,
                    encoder: Encoder, out_dir: Path) -> dict[str, Any]:
    """Write one split's contract into out_dir; returns its counts and zero-shot recalls."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = captions.drop_duplicates("image_id")[["image_id", "image_path"]].reset_index(drop=True)
    images.insert(0, "row", np.arange(len(images), dtype=np.int32))
    image_row = pd.Series(images["row"].to_numpy(), index=images["image_id"]).loc[captions["image_id"]].to_numpy()
    kept = SplitKnowledge.of(knowledge, config.max_triplets, config.drop_attributes)
    n_captions, k_max, dim = len(captions), config.max_triplets, encoder.dim
    mask = np.zeros((n_captions, k_max), dtype=bool)
    mask[kept.rows, kept.ks] = True
    table = pd.DataFrame({"row": np.arange(n_captions, dtype=np.int32), "caption_id": captions["caption_id"].to_numpy(),
                          "caption": captions["caption"].to_numpy(), "image_id": captions["image_id"].to_numpy(),
                          "image_row": image_row.astype(np.int32), "status": knowledge["status"].to_numpy(),
                          "n_triplets": mask.sum(axis=1).astype(np.int32)})
    schemas.write(images, schemas.FEATURE_IMAGES, out_dir / "images.parquet")
    schemas.write(table, schemas.FEATURE_CAPTIONS, out_dir / "captions.parquet")
    write_array(out_dir / "triplet_mask.npy", mask)

    slot_texts = [slot for triplet in kept.triplets for slot in triplet]
    codes, distinct = pd.factorize(pd.Series(slot_texts, dtype=object))
    slot_ids = slot_token_ids(encoder.tokenizer, list(distinct), config.slot_tokens)
    slot_tokens = np.zeros((n_captions, k_max, len(SLOTS), config.slot_tokens), dtype=np.int32)
    slot_tokens[kept.rows, kept.ks] = slot_ids[codes].reshape(len(kept.triplets), len(SLOTS), config.slot_tokens)
    write_array(out_dir / "slot_tokens.npy", slot_tokens)

    image_features = encoder.images(images["image_path"].tolist(), f"{split} images")
    write_array(out_dir / "image.npy", image_features)
    fields = [dict(zip(SLOTS, triplet)) for triplet in kept.triplets]
    encoded = {
        "captions": write_text_features(out_dir / "text.npy", (n_captions, dim), (np.arange(n_captions),),
                                        captions["caption"].tolist(), encoder.texts, f"{split} captions"),
        "states": write_text_features(out_dir / "states.npy", (n_captions, k_max, dim), (kept.rows, kept.ks),
                                      [config.state_template.format(**f, state=s) for f, s in zip(fields, kept.states)],
                                      encoder.texts, f"{split} states"),
        "templates": write_text_features(out_dir / "templates.npy", (n_captions, k_max, dim), (kept.rows, kept.ks),
                                         [config.triplet_template.format(**f) for f in fields], encoder.texts,
                                         f"{split} templates"),
    }

    text_features = np.load(out_dir / "text.npy")
    top_i2t = retrieval.top_k(image_features, text_features, min(config.top_k, n_captions), config.chunk_size,
                              open_memmap(out_dir / "topk_i2t.npy", mode="w+", dtype=np.int32,
                                          shape=(len(images), min(config.top_k, n_captions))),
                              encoder.device, f"{split} top-k i2t")
    top_t2i = retrieval.top_k(text_features, image_features, min(config.top_k, len(images)), config.chunk_size,
                              open_memmap(out_dir / "topk_t2i.npy", mode="w+", dtype=np.int32,
                                          shape=(n_captions, min(config.top_k, len(images)))),
                              encoder.device, f"{split} top-k t2i")
    top_i2t.flush()
    top_t2i.flush()
    return {"images": len(images), "captions": n_captions,
            "status": {status: int((table["status"] == status).sum()) for status in STATUSES},
            "triplets": len(kept.triplets), "triplets_beyond_max": kept.beyond_max, "encoded_texts": encoded,
            "top_k_i2t": top_i2t.shape[1], "top_k_t2i": top_t2i.shape[1],
            "zero_shot": retrieval.recalls(top_i2t, top_t2i, image_row)}


def run(config: FeaturizeConfig, backbone_dir: Path = paths.BASE_CLIP, captions_path: Path = paths.CAPTIONS,
        knowledge_path: Path = paths.KNOWLEDGE, out_dir: Path = paths.FEATURES,
        report_path: Path = paths.FEATURIZE_REPORT) -> dict[str, Any]:
    """The whole stage without Prefect."""
    started = time.perf_counter()
    captions = schemas.read(captions_path, schemas.CAPTIONS)
    knowledge = align_knowledge(captions, schemas.read(knowledge_path, schemas.KNOWLEDGE), captions_path,
                                knowledge_path)
    device = backbone.resolve_device(config.device, "featurize.device")
    model, preprocess, tokenizer = backbone.load_backbone(backbone_dir, device)
    encoder = Encoder(model, preprocess, tokenizer, config, device)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # no split of an earlier run may survive
    splits = {}
    for split in schemas.SPLITS:
        in_split = (captions["split"] == split).to_numpy()
        if in_split.any():
            splits[split] = featurize_split(split, captions[in_split].reset_index(drop=True),
                                            knowledge[in_split].reset_index(drop=True), config, encoder,
                                            out_dir / split)
    meta = {"backbone": backbone.backbone_meta(backbone_dir), "embed_dim": encoder.dim,
            "max_triplets": config.max_triplets, "slot_tokens": config.slot_tokens, "top_k": config.top_k,
            "templates": {"state": config.state_template, "triplet": config.triplet_template},
            "splits": {split: {key: counts[key] for key in ("images", "captions", "triplets", "top_k_i2t", "top_k_t2i")}
                       for split, counts in splits.items()}}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    report = {"backbone_weights_sha256": meta["backbone"]["weights_sha256"], "device": str(device),
              "config": asdict(config), "embed_dim": encoder.dim, "splits": splits,
              "seconds": round(time.perf_counter() - started, 1)}
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
