"""Recall@K of zero-shot and re-ranked lists against a brute-force computation over whole score matrices, ties included."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.rerank.scores import reorder
from tasks.retrieval import recalls, top_k


def brute_force(zero_shot: np.ndarray, rerank_scores: np.ndarray, image_of: np.ndarray, k: int,
                ks=(1, 5, 10)) -> tuple[dict, dict]:
    """Plain loops: rank every gallery item by (-score, row); re-rank the first k by (-new score, zero-shot place)."""
    n_images, n_captions = zero_shot.shape

    def ranked(scores_of, gallery, first_k_rescored):
        order = sorted(range(gallery), key=lambda item: (-scores_of(item), item))
        if first_k_rescored is None:
            return order
        head = sorted(order[:k], key=lambda item: (-first_k_rescored(item), order.index(item)))
        return head + order[k:]

    results = []
    for rescored in (False, True):
        hits = {}
        for K in ks:
            i2t = [any(image_of[c] == i for c in ranked(lambda c, i=i: zero_shot[i, c], n_captions,
                                                       (lambda c, i=i: rerank_scores[i, c]) if rescored else None)[:K])
                   for i in range(n_images)]
            t2i = [image_of[c] in ranked(lambda i, c=c: zero_shot[i, c], n_images,
                                         (lambda i, c=c: rerank_scores[i, c]) if rescored else None)[:K]
                   for c in range(n_captions)]
            hits[f"i2t_r{K}"], hits[f"t2i_r{K}"] = 100 * np.mean(i2t), 100 * np.mean(t2i)
        results.append(hits)
    return results[0], results[1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n_images, per_image, k = 14, 5, 12
    image_of = np.repeat(np.arange(n_images), per_image)
    # Few distinct vectors of quarters: every product is exact in any summation order, and many tie.
    palette = rng.integers(-2, 3, size=(4, 8)) / 4
    image_features = palette[rng.integers(0, 4, n_images)].astype(np.float16)
    text_features = palette[rng.integers(0, 4, n_images * per_image)].astype(np.float16)
    zero_shot = image_features.astype(np.float32) @ text_features.astype(np.float32).T
    rerank_scores = rng.integers(0, 3, zero_shot.shape).astype(np.float32)  # ties again

    top_i2t = top_k(image_features, text_features, k, chunk_size=5, out=np.empty((n_images, k), np.int32))
    top_t2i = top_k(text_features, image_features, k, chunk_size=7, out=np.empty((len(image_of), k), np.int32))
    reranked_i2t = reorder(top_i2t, np.take_along_axis(rerank_scores, top_i2t, axis=1))
    reranked_t2i = reorder(top_t2i, np.take_along_axis(rerank_scores.T, top_t2i, axis=1))

    expected_zero, expected_reranked = brute_force(zero_shot, rerank_scores, image_of, k)
    got_zero = recalls(top_i2t, top_t2i, image_of)
    got_reranked = recalls(reranked_i2t, reranked_t2i, image_of)
    for name, value in expected_zero.items():
        assert got_zero[name] == pytest.approx(value, abs=0.01), name
        assert got_reranked[name] == pytest.approx(expected_reranked[name], abs=0.01), name
    assert got_reranked["rsum"] == pytest.approx(sum(expected_reranked.values()), abs=0.06)


def test_ties_keep_the_zero_shot_order():
    candidates = np.array([[7, 3, 9, 1]])
    assert reorder(candidates, np.array([[0.5, 0.9, 0.5, 0.9]])).tolist() == [[3, 1, 7, 9]]
