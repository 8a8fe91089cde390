"""The in-batch objectives on a tiny CLIP: what each cell scores, gradients, and the DDP all-gather."""
from __future__ import annotations

import os
import socket

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model import Batch, Objective
from model.objective import gather
from tasks.rerank.features import FeatureSplit
from tasks.train.batches import hardest_other_images
from tests.test_model import images, random_knowledge, tiny_model

IMAGE_ROWS = [0, 1, 2, 0, 3, 4]  # image 0 has a caption on each process of the DDP test
OTHER_IMAGE = [1, 2, 0, 4, 5, 3]  # the batch row whose image each caption is also scored on
HALF = len(IMAGE_ROWS) // 2


def batch_of(model, rows: slice = slice(None)) -> Batch:
    """The test batch (or rows of it: a process's share, whose other images are then counted from its start)."""
    image_rows = torch.tensor(IMAGE_ROWS)
    knowledge = random_knowledge([2, 0, 1, 3, 1, 2])
    text = torch.nn.functional.normalize(torch.randn(len(IMAGE_ROWS), 32, generator=torch.Generator().manual_seed(3)),
                                         dim=-1)
    prefix = model.image_prefix(images(5)).index(image_rows)
    chosen = torch.arange(len(IMAGE_ROWS))[rows]
    return Batch(prefix.index(chosen), knowledge.index(chosen), text[chosen], image_rows[chosen],
                 other_image=torch.tensor(OTHER_IMAGE)[chosen] - chosen[0])


def loss_and_gradients(model, negatives: str, batch: Batch) -> tuple[float, dict[str, torch.Tensor]]:
    trainable = model.set_trainable(1)
    model.zero_grad()
    loss = Objective(model, ("contrastive", "triplet"), 0.2, negatives)(batch)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in trainable.items() if p.grad is not None}


def test_consistent_cells_score_the_image_under_the_captions_own_knowledge():
    model = tiny_model().eval()
    batch = batch_of(model)
    with torch.no_grad():
        paired, paired_t2i, _, _ = Objective(model, ("contrastive",), 0.2, "paired").global_scores(batch)
        consistent, consistent_t2i, _, _ = Objective(model, ("contrastive",), 0.2, "consistent").global_scores(batch)
        # Equal up to float rounding: i2t and t2i are two matmuls, whose summation order depends on the CPU's kernels.
        assert torch.allclose(paired_t2i, paired.T, atol=1e-6) and torch.allclose(consistent_t2i, consistent.T, atol=1e-6)
        for caption, other in enumerate(OTHER_IMAGE):
            as_reranked = model.score_from_prefix(batch.prefix.index(torch.tensor([other])),
                                                  batch.knowledge.index(torch.tensor([caption])), batch.text[[caption]])
            assert torch.allclose(consistent[other, caption], as_reranked[0], atol=1e-5)
            assert not torch.isclose(paired[other, caption], as_reranked[0], atol=1e-4)
    changed = torch.zeros_like(paired, dtype=torch.bool)
    changed[OTHER_IMAGE, range(len(OTHER_IMAGE))] = True
    assert torch.allclose(consistent[~changed], paired[~changed], atol=1e-6)  # every other cell is the paired score


def test_consistent_gradients_reach_the_prompts_and_differ_from_paired():
    model = tiny_model()
    losses, gradients = {}, {}
    for negatives in ("paired", "consistent"):
        losses[negatives], gradients[negatives] = loss_and_gradients(model, negatives, batch_of(model))
    assert set(gradients["consistent"]) == set(gradients["paired"]) == set(model.trainable_parameters(1))
    assert all(torch.isfinite(g).all() for g in gradients["consistent"].values())
    assert losses["consistent"] != losses["paired"]
    assert not torch.allclose(gradients["consistent"]["visual_prompts"], gradients["paired"]["visual_prompts"])


def test_the_hardest_other_image_is_the_best_zero_shot_match_of_another_image():
    rng = np.random.default_rng(0)
    image_row = np.array([0, 0, 1, 2, 2, 3, 4])
    features = rng.normal(size=(len(image_row) + 5, 8)).astype(np.float16)
    split = FeatureSplit("train", pd.DataFrame(), pd.DataFrame({"image_row": image_row}), text=features[:7],
                         image=features[7:], slot_tokens=None, triplet_mask=None, states=None, templates=None,
                         topk_i2t=None, topk_t2i=None)
    captions = np.array([1, 0, 3, 6, 4])
    chosen = hardest_other_images(split, captions)
    for row, caption in enumerate(captions):
        candidates = [r for r in range(len(captions)) if image_row[captions[r]] != image_row[caption]]
        scores = [float(features[caption].astype(np.float32) @ features[7 + image_row[captions[r]]].astype(np.float32))
                  for r in candidates]
        assert chosen[row] == candidates[int(np.argmax(scores))]
    assert list(hardest_other_images(split, np.array([0, 1]))) == [-1, -1]  # one image: no other to score


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ddp_process(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = tiny_model()
        results = {negatives: loss_and_gradients(model, negatives, batch_of(model, slice(rank * HALF, (rank + 1) * HALF)))
                   for negatives in ("paired", "consistent")}
        uneven = torch.arange(rank + 2, dtype=torch.float32).requires_grad_()
        gathered, offset = gather(uneven * 10, with_grad=True)
        gathered.sum().backward()
        results["gather"] = (gathered.detach(), offset, uneven.grad)
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_make_the_loss_of_one_process_on_the_whole_batch(tmp_path):
    out = str(tmp_path / "ddp")
    mp.spawn(_ddp_process, args=(_free_port(), out), nprocs=2)
    processes = [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]
    for negatives in ("paired", "consistent"):
        whole_loss, whole_gradients = loss_and_gradients(tiny_model(), negatives, batch_of(tiny_model()))
        assert sum(p[negatives][0] for p in processes) / 2 == pytest.approx(whole_loss, abs=1e-5)
        for name, gradient in whole_gradients.items():  # DistributedDataParallel averages the processes' gradients
            assert torch.allclose(sum(p[negatives][1][name] for p in processes) / 2, gradient, atol=1e-6, rtol=1e-4)
    for rank, process in enumerate(processes):
        gathered, offset, gradient = process["gather"]
        assert gathered.tolist() == [0, 10, 0, 10, 20] and offset == [0, 2][rank]  # 2 rows, then 3: padded and cut
        assert gradient.tolist() == [20.0] * (rank + 2)  # d(sum on both processes) / d(row) = 2 x 10
