"""The demo's twin-only view: every query ranked among its own twin group only.

A demo twin group is a scene, its role swap, an action swap and that one's role swap (tasks/ingest/demo): 4 images
and their 20 captions with the same two actors and the same caption words up to order and verb. Ranked against
only these, a query is answered by who does what to whom, which a bag-of-words model cannot tell apart (chance:
R@1 25 % image -> text, 25 % text -> image). Real data sets have no such groups, so the view is the demo's only.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from tasks.ingest.demo import twin_group_index

DEMO_IMAGE_ID = re.compile(r"demo_\d+")


def twin_groups(image_ids: Sequence[str]) -> np.ndarray | None:
    """The twin group of every image when all are demo images, else None."""
    if not len(image_ids) or not all(DEMO_IMAGE_ID.fullmatch(image_id) for image_id in image_ids):
        return None
    return np.array([twin_group_index(image_id) for image_id in image_ids])


def group_pairs(groups: np.ndarray, image_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image rows, caption rows) of every image-caption pair within one twin group, ordered by image. The
    (images, captions) tables here are dense: the demo's splits are small."""
    images, captions = np.nonzero(groups[:, None] == groups[image_row][None, :])
    return images.astype(np.int64), captions.astype(np.int64)


def within_group_r1(groups: np.ndarray, image_row: np.ndarray, pair_images: np.ndarray, pair_captions: np.ndarray,
                    scores: np.ndarray) -> dict[str, float]:
    """R@1 in percent of each direction with candidates restricted to the query's twin group; `scores` are those
    of group_pairs' pairs. Equal scores go to the lower row, as the candidate lists break ties."""
    table = np.full((len(groups), len(image_row)), -np.inf)  # pairs across groups are never candidates
    table[pair_images, pair_captions] = scores
    i2t_hits = image_row[table.argmax(axis=1)] == np.arange(len(groups))
    t2i_hits = table.argmax(axis=0) == image_row
    return {"i2t_r1": round(100 * float(i2t_hits.mean()), 2), "t2i_r1": round(100 * float(t2i_hits.mean()), 2)}


def twin_view(groups: np.ndarray, image_row: np.ndarray, image_features: np.ndarray, text_features: np.ndarray,
              rerank_scores: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> dict[str, object]:
    """Zero-shot and re-ranked R@1 within twin groups; rerank_scores(image rows, caption rows) -> s(i, t)."""
    images, captions = group_pairs(groups, image_row)
    zero_shot = np.einsum("pd,pd->p", image_features[images].astype(np.float32),
                          text_features[captions].astype(np.float32))
    return {"groups": len(np.unique(groups)), "pairs": len(images),
            "zero_shot": within_group_r1(groups, image_row, images, captions, zero_shot),
            "reranked": within_group_r1(groups, image_row, images, captions, rerank_scores(images, captions))}
