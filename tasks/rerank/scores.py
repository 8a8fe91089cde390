"""Re-ranking (paper section 3.5): zero-shot CLIP preselects the top-k, the action-aware score orders them.

Both directions use the same score s(i, t) = cos(f(i | t), g(t)), so every (image, caption) pair that is a
candidate in either direction is scored once. Pairs are scored grouped by image, so each image's prefix is
read once per batch. Ties keep the zero-shot order (a stable sort), and the items beyond the top-k keep their
zero-shot ranks, which Recall@1/5/10 never reach for k >= 10.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from model import ActionAwareCLIP
from tasks.rerank.features import FeatureSplit
from tasks.rerank.prefixes import PrefixSource


@dataclass(frozen=True)
class Reranked:
    i2t: np.ndarray         # (I, k) caption rows, re-ranked
    t2i: np.ndarray         # (C, k) image rows, re-ranked
    i2t_scores: np.ndarray  # (I, k) s(i, t) of the zero-shot candidates, in zero-shot order
    t2i_scores: np.ndarray  # (C, k)
    pairs: int              # distinct (image, caption) pairs scored


def candidate_pairs(split: FeatureSplit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (image, caption) pairs of both directions' candidate lists, sorted by image, and for every
    list entry (i2t entries first, then t2i) the index of its pair."""
    n_images, k = split.topk_i2t.shape
    n_captions = len(split.topk_t2i)
    images = np.concatenate([np.repeat(np.arange(n_images), k), np.asarray(split.topk_t2i).ravel()])
    captions = np.concatenate([np.asarray(split.topk_i2t).ravel(), np.repeat(np.arange(n_captions), split.topk_t2i.shape[1])])
    keys, entry_pair = np.unique(images.astype(np.int64) * n_captions + captions, return_inverse=True)
    return keys // n_captions, keys % n_captions, entry_pair


@torch.inference_mode()
def score_pairs(model: ActionAwareCLIP, source: PrefixSource, split: FeatureSplit, image_rows: np.ndarray,
                caption_rows: np.ndarray, batch_size: int, device: torch.device, progress: bool = True,
                knowledge_rows: np.ndarray | None = None) -> np.ndarray:
    """s(i, t) of aligned image and caption rows; knowledge_rows (default: caption_rows) say whose knowledge
    conditions the image."""
    knowledge_rows = caption_rows if knowledge_rows is None else knowledge_rows
    scores = np.empty(len(image_rows), dtype=np.float32)
    starts = range(0, len(image_rows), batch_size)
    for start in tqdm(starts, desc=f"re-ranking {split.split}", unit="batch", disable=not progress):
        images, captions = image_rows[start:start + batch_size], caption_rows[start:start + batch_size]
        batch_scores = model.score_from_prefix(source.prefix(images),
                                               split.knowledge(knowledge_rows[start:start + batch_size], device),
                                               split.text_features(captions, device))
        scores[start:start + len(images)] = batch_scores.float().cpu().numpy()
    return scores


def rerank(model: ActionAwareCLIP, source: PrefixSource, split: FeatureSplit, batch_size: int,
           device: torch.device, progress: bool = True) -> Reranked:
    was_training = model.training
    model.eval()
    image_rows, caption_rows, entry_pair = candidate_pairs(split)
    scores = score_pairs(model, source, split, image_rows, caption_rows, batch_size, device, progress)
    model.train(was_training)
    n_i2t = split.topk_i2t.size
    i2t_scores = scores[entry_pair[:n_i2t]].reshape(split.topk_i2t.shape)
    t2i_scores = scores[entry_pair[n_i2t:]].reshape(split.topk_t2i.shape)

    return Reranked(reorder(split.topk_i2t, i2t_scores), reorder(split.topk_t2i, t2i_scores), i2t_scores,
                    t2i_scores, len(image_rows))


def reorder(candidates: np.ndarray, candidate_scores: np.ndarray) -> np.ndarray:
    """Each row's candidates by score, descending; equal scores keep their zero-shot order."""
    order = np.argsort(-candidate_scores, axis=1, kind="stable")
    return np.take_along_axis(np.asarray(candidates), order, axis=1)


def captions_of_other_images(image_row: np.ndarray, captions: np.ndarray,
                             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random caption of another image for each caption row; rows with none (one image) are left out."""
    others = rng.integers(0, len(image_row), size=len(captions))
    for _ in range(100):  # redraw the rows that hit their own image; bounded, for splits of few images
        same = image_row[others] == image_row[captions]
        if not same.any():
            break
        others[same] = rng.integers(0, len(image_row), size=int(same.sum()))
    keep = image_row[others] != image_row[captions]
    return captions[keep], others[keep]


def knowledge_effect(model: ActionAwareCLIP, source: PrefixSource, split: FeatureSplit, batch_size: int,
                     device: torch.device, seed: int, max_pairs: int = 1024) -> dict[str, float | int]:
    """How much the knowledge moves the score: each sampled caption's true pair s(i, t) under its own knowledge
    and under another caption's (same g(t)). A mean change near 0, against the spread of the scores, says
    the model ignores the knowledge and acts as plain visual prompt tuning."""
    rng = np.random.default_rng(seed)
    captions = np.sort(rng.choice(len(split.captions), size=min(max_pairs, len(split.captions)), replace=False))
    captions, others = captions_of_other_images(split.image_row, captions, rng)
    if len(captions) == 0:  # a split of one image
        return {"pairs": 0, "mean_abs_change": None, "score_std": None}
    was_training = model.training
    model.eval()
    images = split.image_row[captions]
    own = score_pairs(model, source, split, images, captions, batch_size, device, progress=False)
    swapped = score_pairs(model, source, split, images, captions, batch_size, device, progress=False,
                          knowledge_rows=others)
    model.train(was_training)
    return {"pairs": len(captions), "mean_abs_change": round(float(np.abs(own - swapped).mean()), 5),
            "score_std": round(float(own.std(ddof=1)), 5)}
