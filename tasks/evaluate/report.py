"""reports/retrieval.html: sample queries of both directions with thumbnails, captions, the knowledge used and how
re-ranking moved the right answer; one self-contained file (images embedded, readable offline)."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from tasks.rerank.features import FeatureSplit
from tasks.rerank.scores import Reranked

SHOWN = 5  # candidates shown per query in the report


def correct_ranks(split: FeatureSplit, i2t: np.ndarray, t2i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of the first correct item in each query's list; 0 when it is not in the list."""
    def first_hit(hits: np.ndarray) -> np.ndarray:
        return np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    image_row = split.image_row
    return (first_hit(image_row[i2t] == np.arange(len(i2t))[:, None]),
            first_hit(np.asarray(t2i) == image_row[:, None]))


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
                 result: dict[str, Any], queries: int, thumbnail_size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = result["top_k"]
    image_paths = split.images["image_path"].tolist()
    captions = split.captions
    thumbs: dict[int, str] = {}

    def thumb(image: int, correct: bool) -> str:
        if image not in thumbs:
            thumbs[image] = _thumbnail(image_paths[image], thumbnail_size)
        return f'<img class="{"hit" if correct else ""}" src="{thumbs[image]}" alt="{html.escape(split.images.image_id[image])}">'

    def caption_item(row: int, correct: bool) -> str:
        return f'<li class="{"hit" if correct else ""}">{html.escape(captions.caption[row])}</li>'

    zero_i2t, zero_t2i = correct_ranks(split, np.asarray(split.topk_i2t), np.asarray(split.topk_t2i))
    new_i2t, new_t2i = correct_ranks(split, reranked.i2t, reranked.t2i)
    sections = []
    for query in _sample(zero_t2i, new_t2i, queries, rng):
        truth = split.image_row[query]
        known = knowledge.loc[captions.caption_id[query]] if captions.caption_id[query] in knowledge.index else None
        before = "".join(thumb(i, i == truth) for i in split.topk_t2i[query][:SHOWN])
        after = "".join(thumb(i, i == truth) for i in reranked.t2i[query][:SHOWN])
        sections.append(f'<section><h3>text &rarr; image: &ldquo;{html.escape(captions.caption[query])}&rdquo;</h3>'
                        f'{_knowledge_html(known)}{_rank_text(zero_t2i[query], new_t2i[query], k)}'
                        f'<div class="row"><b>zero-shot</b>{before}</div><div class="row"><b>re-ranked</b>{after}</div>'
                        '</section>')
    for query in _sample(zero_i2t, new_i2t, queries, rng):
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
