"""Recall@K of zero-shot and re-ranked lists against a brute-force computation over whole score matrices, ties included."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluate.twins import group_pairs, twin_groups, twin_view
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


@pytest.mark.parametrize("seed", [0, 1])
def test_twin_view_matches_brute_force_within_each_group(seed):
    """R@1 with each query's candidates cut to its own twin group, against plain loops over a whole score table."""
    rng = np.random.default_rng(seed)
    image_ids = [f"demo_{i:05d}" for i in (0, 1, 2, 3, 8, 9, 10, 11, 20, 21, 22, 23)]  # groups 0, 2, 5
    groups = twin_groups(image_ids)
    assert groups.tolist() == [0] * 4 + [2] * 4 + [5] * 4
    image_of = np.repeat(np.arange(len(image_ids)), 5)
    image_features = (rng.integers(-2, 3, (len(image_ids), 8)) / 4).astype(np.float16)
    text_features = (rng.integers(-2, 3, (len(image_of), 8)) / 4).astype(np.float16)
    rerank_table = rng.integers(0, 3, (len(image_ids), len(image_of))).astype(np.float32)  # many ties

    def brute_force(table):
        i2t = [image_of[max((c for c in range(len(image_of)) if groups[image_of[c]] == groups[i]),
                            key=lambda c: (table[i, c], -c))] == i for i in range(len(image_ids))]
        t2i = [max((i for i in range(len(image_ids)) if groups[i] == groups[image_of[c]]),
                   key=lambda i: (table[i, c], -i)) == image_of[c] for c in range(len(image_of))]
        return {"i2t_r1": round(100 * np.mean(i2t), 2), "t2i_r1": round(100 * np.mean(t2i), 2)}

    zero_shot_table = image_features.astype(np.float32) @ text_features.astype(np.float32).T
    asked = []
    view = twin_view(groups, image_of, image_features, text_features,
                     lambda images, captions: asked.append((images, captions)) or rerank_table[images, captions])
    assert view["zero_shot"] == brute_force(zero_shot_table)
    assert view["reranked"] == brute_force(rerank_table)
    images, captions = asked[0]
    assert view["groups"] == 3 and view["pairs"] == len(images) == 3 * 4 * 20  # every pair within a group, once
    assert (groups[images] == groups[image_of[captions]]).all()
    assert len(set(zip(images.tolist(), captions.tolist()))) == len(images)


def test_twin_view_is_the_demos_only():
    assert twin_groups(["demo_00004", "1000092795.jpg"]) is None
    assert twin_groups([]) is None
    images, captions = group_pairs(np.array([0, 0]), np.array([0, 1, 1]))
    assert images.tolist() == [0, 0, 0, 1, 1, 1] and captions.tolist() == [0, 1, 2, 0, 1, 2]
