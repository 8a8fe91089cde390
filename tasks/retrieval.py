"""Zero-shot retrieval from L2-normalised features: blockwise top-k candidate lists and Recall@K.

Similarities are computed block by block (chunk_size queries x chunk_size gallery items), keeping a running
top-k per query, so COCO's 5K x 25K test split, or its 113K x 566K train split, never needs a full matrix.
Ties are broken by the lower gallery row, which makes the lists independent of the block size.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

RECALL_AT = (1, 5, 10)


def _block_top_k(similarities: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (values, columns) of each row, by value descending and then column ascending."""
    kth = torch.topk(similarities, k, dim=1).values[:, -1:]
    above = similarities > kth
    at_kth = similarities == kth
    # Of the items tied with the k-th value, keep the lowest columns, as many as there are places left.
    places_left = k - above.sum(dim=1, keepdim=True)
    keep = above | (at_kth & (at_kth.cumsum(dim=1) <= places_left))
    columns = keep.nonzero()[:, 1].view(len(similarities), k)  # row-major: ascending columns per row
    values = similarities.gather(1, columns)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, order), columns.gather(1, order)


def top_k(queries: np.ndarray, gallery: np.ndarray, k: int, chunk_size: int, out: np.ndarray,
          device: torch.device | str = "cpu", desc: str = "top-k") -> np.ndarray:
    """For each query row, the gallery rows of its k highest cosine similarities, written into `out` (N, k) int32.

    `k` must not exceed the gallery size. Features are float16 and L2-normalised; products are taken in float32.
    """
    gallery_on_device = torch.from_numpy(np.ascontiguousarray(gallery)).to(device)
    for start in tqdm(range(0, len(queries), chunk_size), desc=desc, unit="chunk"):
        query = torch.from_numpy(np.ascontiguousarray(queries[start:start + chunk_size])).to(device).float()
        best_values = torch.empty((len(query), 0), device=device)
        best_rows = torch.empty((len(query), 0), dtype=torch.long, device=device)
        for offset in range(0, len(gallery_on_device), chunk_size):
            block = query @ gallery_on_device[offset:offset + chunk_size].float().T
            values, rows = _block_top_k(block, min(k, block.shape[1]))
            # Earlier blocks hold lower rows, so a stable sort keeps them first among equal values.
            values, rows = torch.cat([best_values, values], dim=1), torch.cat([best_rows, rows + offset], dim=1)
            order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
            best_values, best_rows = values.gather(1, order), rows.gather(1, order)
        out[start:start + len(query)] = best_rows.cpu().numpy().astype(np.int32)
    return out


def recalls(top_i2t: np.ndarray, top_t2i: np.ndarray, image_row: np.ndarray,
            ks: Sequence[int] = RECALL_AT) -> dict[str, float | None]:
    """Recall@K in percent from the candidate lists; an image is a hit if any of its captions is in its top K.

    A K longer than the lists is only answerable when the lists hold the whole gallery; otherwise it is None.
    """
    n_images, n_captions = len(top_i2t), len(top_t2i)
    result: dict[str, float | None] = {}
    for direction, ranked, gallery_size, hit in (
            ("i2t", top_i2t, n_captions, lambda r: (image_row[r] == np.arange(n_images)[:, None]).any(axis=1)),
            ("t2i", top_t2i, n_images, lambda r: (r == image_row[:, None]).any(axis=1))):
        for k in ks:
            answerable = len(ranked) > 0 and (k <= ranked.shape[1] or ranked.shape[1] == gallery_size)
            result[f"{direction}_r{k}"] = 100 * float(hit(ranked[:, :k]).mean()) if answerable else None
    values = list(result.values())
    result["rsum"] = sum(values) if None not in values else None
    return {name: None if value is None else round(value, 2) for name, value in result.items()}
