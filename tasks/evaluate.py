"""Stage `evaluate`: zero-shot top-k preselection vs action-aware re-ranking on one split, side by side.

Writes metrics/eval.json ({"zero_shot": {...}, "reranked": {...}} with R@1/5/10 both directions and Rsum,
SPEC section 6; and how much the knowledge moves the score), plots/ for `dvc plots show`, and
reports/retrieval.html: sample queries with thumbnails, captions, the knowledge used and how re-ranking moved
the right answer, self-contained (no network).
"""
from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from tasks import paths, schemas
from tasks.backbone import resolve_device
from tasks.config import InputDataError, section, write_json
from tasks.features import FeatureSplit
from tasks.prefixes import PrefixSource
from tasks.rerank import Reranked, knowledge_effect, rerank
from tasks.retrieval import recalls
from tasks.train import load_model

SHOWN = 5  # candidates shown per query in the report


@dataclass(frozen=True)
class EvaluateConfig:
    split: str = "test"
    model: str = "models/stage2"
    device: str = "auto"
    batch_size: int = 256          # (image, caption) pairs per forward pass
    prefix_cache: bool = True
    report_queries: int = 12       # per direction in reports/retrieval.html
    thumbnail_size: int = 96
    seed: int = 0

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "EvaluateConfig":
        values = section(params, "evaluate", {f.name for f in fields(cls)})
        config = cls(**values)
        if config.split not in schemas.SPLITS:
            raise InputDataError(f"params.yaml: evaluate.split must be one of {schemas.SPLITS}, got {config.split!r}")
        return config


def correct_ranks(split: FeatureSplit, i2t: np.ndarray, t2i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of the first correct item in each query's list; 0 when it is not in the list."""
    def first_hit(hits: np.ndarray) -> np.ndarray:
        return np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    image_row = split.image_row
    return (first_hit(image_row[i2t] == np.arange(len(i2t))[:, None]),
            first_hit(np.asarray(t2i) == image_row[:, None]))


def run(params: dict[str, Any], features_dir: Path = paths.FEATURES, knowledge_path: Path = paths.KNOWLEDGE,
        cache_dir: Path = paths.PREFIX_CACHE, progress: bool = True) -> dict[str, Any]:
    config = EvaluateConfig.from_params(params)
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
    result = {"split": config.split, "images": len(split.images), "captions": len(split.captions),
              "top_k": int(split.topk_i2t.shape[1]), "model": config.model, "zero_shot": zero_shot, "reranked": after,
              "gain": {name: round(after[name] - zero_shot[name], 2) for name in after
                       if after[name] is not None and zero_shot[name] is not None},
              "knowledge_effect": sensitivity, "pairs_scored": reranked.pairs, "seconds": round(seconds, 2),
              "prefix_seconds": round(prefix_seconds, 2), "device": str(device)}
    write_json(paths.EVAL_METRICS, result)
    _write_plots(split, reranked, zero_shot, after)
    knowledge = schemas.read(knowledge_path, schemas.KNOWLEDGE).set_index("caption_id")
    write_report(paths.RETRIEVAL_REPORT, split, reranked, knowledge, result, config)
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


# ---------------------------------------------------------------- the HTML report

def _thumbnail(path: str, size: int) -> str:
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _sample(ranks_before: np.ndarray, ranks_after: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Queries whose right answer moved (up and down), then others, so the report shows what re-ranking did."""
    moved = np.flatnonzero((ranks_before != ranks_after) & (ranks_before > 0))
    improved = moved[(ranks_after[moved] < ranks_before[moved]) & (ranks_after[moved] > 0)]
    worsened = np.setdiff1d(moved, improved)
    picks = [rng.permutation(improved)[:count - count // 3], rng.permutation(worsened)[:count // 3]]
    chosen = np.concatenate(picks)
    rest = rng.permutation(np.setdiff1d(np.arange(len(ranks_before)), chosen))[:count - len(chosen)]
    return np.concatenate([chosen, rest]).astype(int)


def _knowledge_html(row: pd.Series | None) -> str:
    if row is None or row["status"] == "empty" or len(row["triplets"]) == 0:
        return '<div class="k empty">no valid knowledge: learned null prompt</div>'
    items = "".join(f"<li>&lt;{html.escape(t['subject'])}, {html.escape(t['action'])}, {html.escape(t['object'])}"
                    f"&gt; <span class=\"state\">{html.escape(state)}</span></li>"
                    for t, state in zip(row["triplets"], row["states"]))
    return f'<ul class="k">{items}</ul>'


def _rank_text(before: int, after: int, k: int) -> str:
    show = lambda rank: str(rank) if rank else f"&gt;{k}"  # noqa: E731
    arrow = "better" if after and (not before or after < before) else "worse" if before and (not after or after > before) else "same"
    return f'<span class="rank {arrow}">rank of the right answer: {show(before)} &rarr; {show(after)}</span>'


def write_report(path: Path, split: FeatureSplit, reranked: Reranked, knowledge: pd.DataFrame,
                 result: dict[str, Any], config: EvaluateConfig) -> None:
    rng = np.random.default_rng(config.seed)
    k = result["top_k"]
    image_paths = split.images["image_path"].tolist()
    captions = split.captions
    thumbs: dict[int, str] = {}

    def thumb(image: int, correct: bool) -> str:
        if image not in thumbs:
            thumbs[image] = _thumbnail(image_paths[image], config.thumbnail_size)
        return f'<img class="{"hit" if correct else ""}" src="{thumbs[image]}" alt="{html.escape(split.images.image_id[image])}">'

    def caption_item(row: int, correct: bool) -> str:
        return f'<li class="{"hit" if correct else ""}">{html.escape(captions.caption[row])}</li>'

    zero_i2t, zero_t2i = correct_ranks(split, np.asarray(split.topk_i2t), np.asarray(split.topk_t2i))
    new_i2t, new_t2i = correct_ranks(split, reranked.i2t, reranked.t2i)
    sections = []
    for query in _sample(zero_t2i, new_t2i, config.report_queries, rng):
        truth = split.image_row[query]
        known = knowledge.loc[captions.caption_id[query]] if captions.caption_id[query] in knowledge.index else None
        before = "".join(thumb(i, i == truth) for i in split.topk_t2i[query][:SHOWN])
        after = "".join(thumb(i, i == truth) for i in reranked.t2i[query][:SHOWN])
        sections.append(f'<section><h3>text &rarr; image: &ldquo;{html.escape(captions.caption[query])}&rdquo;</h3>'
                        f'{_knowledge_html(known)}{_rank_text(zero_t2i[query], new_t2i[query], k)}'
                        f'<div class="row"><b>zero-shot</b>{before}</div><div class="row"><b>re-ranked</b>{after}</div>'
                        '</section>')
    for query in _sample(zero_i2t, new_i2t, config.report_queries, rng):
        hits = set(np.flatnonzero(split.image_row == query))
        before = "".join(caption_item(c, c in hits) for c in split.topk_i2t[query][:SHOWN])
        after = "".join(caption_item(c, c in hits) for c in reranked.i2t[query][:SHOWN])
        sections.append(f'<section><h3>image &rarr; text</h3>{thumb(query, True)}'
                        f'{_rank_text(zero_i2t[query], new_i2t[query], k)}'
                        f'<div class="cols"><div><b>zero-shot</b><ol>{before}</ol></div>'
                        f'<div><b>re-ranked</b><ol>{after}</ol></div></div></section>')
    header = "".join(f"<th>{name}</th>" for name in result["zero_shot"])
    table_rows = "".join(f"<tr><td>{method}</td>" + "".join(f"<td>{value}</td>" for value in result[method].values())
                         + "</tr>" for method in ("zero_shot", "reranked"))
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ActPrompt retrieval: {result['split']}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
section {{ border-top: 1px solid #ddd; padding: 0.8em 0; }} h3 {{ font-size: 1em; margin: 0.2em 0; }}
img {{ margin: 2px; border: 3px solid transparent; image-rendering: pixelated; }} img.hit {{ border-color: #2a2; }}
li.hit {{ color: #2a2; font-weight: bold; }} .row b {{ display: inline-block; width: 6em; vertical-align: top; }}
.cols {{ display: flex; gap: 2em; }} .k {{ font-size: 0.9em; color: #555; margin: 0.2em 0; }}
.state {{ color: #888; font-style: italic; }} .rank {{ font-size: 0.9em; }} .better {{ color: #2a2; }}
.worse {{ color: #c22; }}
</style></head><body>
<h1>Retrieval on the {result['split']} split</h1>
<p>{result['images']} images, {result['captions']} captions; zero-shot CLIP preselects the top {k}, the action-aware
model re-ranks them ({result['pairs_scored']} image-caption pairs scored in {result['seconds']} s on {result['device']}).
Right answers are outlined in green.</p>
<table><tr><th></th>{header}</tr>{table_rows}</table>
{''.join(sections)}
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
