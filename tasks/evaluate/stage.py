"""Stage `evaluate`: zero-shot top-k preselection vs action-aware re-ranking on one split, side by side.

Writes metrics/eval.json ({"zero_shot": {...}, "reranked": {...}} with R@1/5/10 both directions and Rsum, as
docs/evaluation.md describes; how much the knowledge moves the score; on the demo, R@1 within twin groups),
plots/ for `dvc plots show`, and reports/retrieval.html (tasks/evaluate/report.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from tasks import paths, schemas
from tasks.backbone import resolve_device
from tasks.config import checked, from_params, write_json
from tasks.evaluate.report import correct_ranks, write_report
from tasks.evaluate.twins import twin_groups, twin_view
from tasks.rerank.features import FeatureSplit
from tasks.rerank.prefixes import PrefixSource
from tasks.rerank.scores import Reranked, knowledge_effect, rerank, score_pairs
from tasks.retrieval import recalls
from tasks.train.model_files import load_model


@dataclass(frozen=True)
class EvaluateConfig:
    SECTION: ClassVar[str] = "evaluate"

    split: str = checked(choices=schemas.SPLITS)
    model: str                                   # the trained prompt modules: models/stage2 (or models/stage1)
    device: str
    batch_size: int = checked(least=1)           # (image, caption) pairs per forward pass
    prefix_cache: bool
    report_queries: int = checked(least=0)       # per direction in reports/retrieval.html
    thumbnail_size: int = checked(least=8)
    seed: int


def run(params: dict[str, Any], features_dir: Path = paths.FEATURES, knowledge_path: Path = paths.KNOWLEDGE,
        cache_dir: Path = paths.PREFIX_CACHE, progress: bool = True) -> dict[str, Any]:
    config = from_params(EvaluateConfig, params)
    device = resolve_device(config.device, "evaluate.device")
    started = time.perf_counter()
    model, preprocess, model_config = load_model(Path(config.model), device=device)
    split = FeatureSplit.load(config.split, features_dir)
    source = PrefixSource(model, preprocess, split.images["image_path"].tolist(), device,
                          cache_dir if config.prefix_cache else None, model_config["backbone_sha256"])
    prefix_seconds = time.perf_counter() - started
    reranked = rerank(model, source, split, config.batch_size, device, progress)
    seconds = time.perf_counter() - started
    sensitivity = knowledge_effect(model, source, split, config.batch_size, device, config.seed)
    zero_shot = recalls(np.asarray(split.topk_i2t), np.asarray(split.topk_t2i), split.image_row)
    after = recalls(reranked.i2t, reranked.t2i, split.image_row)
    groups = twin_groups(split.images["image_id"].tolist())
    twins = None if groups is None else twin_view(
        groups, split.image_row, split.image, split.text,
        lambda images, captions: score_pairs(model, source, split, images, captions, config.batch_size, device,
                                             progress=False))
    result = {"split": config.split, "images": len(split.images), "captions": len(split.captions),
              "top_k": int(split.topk_i2t.shape[1]), "model": config.model, "zero_shot": zero_shot, "reranked": after,
              "gain": {name: round(after[name] - zero_shot[name], 2) for name in after
                       if after[name] is not None and zero_shot[name] is not None},
              "knowledge_effect": sensitivity, "twin_view": twins, "pairs_scored": reranked.pairs,
              "seconds": round(seconds, 2), "prefix_seconds": round(prefix_seconds, 2), "device": str(device)}
    write_json(paths.EVAL_METRICS, result)
    _write_plots(split, reranked, zero_shot, after)
    knowledge = schemas.read(knowledge_path, schemas.KNOWLEDGE).set_index("caption_id")
    write_report(paths.RETRIEVAL_REPORT, split, reranked, knowledge, result, config.report_queries,
                 config.thumbnail_size, config.seed)
    return result


def _write_plots(split: FeatureSplit, reranked: Reranked, zero_shot: dict, after: dict) -> None:
    paths.RECALL_PLOT.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"metric": name, "method": method, "recall": values[name]}
            for method, values in (("zero_shot", zero_shot), ("reranked", after))
            for name in values if name != "rsum" and values[name] is not None]
    pd.DataFrame(rows).to_csv(paths.RECALL_PLOT, index=False)
    zero_i2t, zero_t2i = correct_ranks(split, np.asarray(split.topk_i2t), np.asarray(split.topk_t2i))
    new_i2t, new_t2i = correct_ranks(split, reranked.i2t, reranked.t2i)
    shifts = pd.concat([pd.DataFrame({"direction": "i2t", "zero_shot_rank": zero_i2t, "reranked_rank": new_i2t}),
                        pd.DataFrame({"direction": "t2i", "zero_shot_rank": zero_t2i, "reranked_rank": new_t2i})])
    shifts[(shifts.zero_shot_rank > 0)].to_csv(paths.RANK_PLOT, index=False)
