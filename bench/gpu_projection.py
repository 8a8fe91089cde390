"""What a GPU run of the paper's presets costs: measured on this CPU at ViT-B/16 shapes, counted in FLOPs, projected.

    python bench/gpu_projection.py [--tflops 100] [--batch 16] [--pairs 40] [--images 16]

Measures four units of work with random weights (their FLOPs counted by torch's FlopCounterMode, their time on
this CPU): featurizing an image (the frozen image tower) and a caption (the frozen text tower, on the caption and
its K state sentences), one training step of params.yaml's objective, and re-ranking a pair. The presets' work
is then counted from the Karpathy splits' sizes and params.yaml (epochs, batch, k = 20, validation every epoch)
and turned into wall time at --tflops effective TFLOP/s per GPU, on 1 and on 8 GPUs (training spreads over
them with DistributedDataParallel; featurize, validation and evaluation run on one). The effective figure is
the assumption: 100 is about a third of an A100's bf16 peak, what ViT training commonly reaches. The LLM
knowledge stage runs on its own vLLM server and is not part of this projection.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from model import Batch, Knowledge, Objective, build_model  # noqa: E402
from tasks.ablations import applied, presets  # noqa: E402
from tasks.config import load_params  # noqa: E402


@dataclass(frozen=True)
class DataSet:
    """Karpathy split sizes (images; 5 captions each, as data.captions_per_image counts them)."""
    train: int
    val: int
    test: int


DATA_SETS = {"flickr30k-vit-b-16": DataSet(29_000, 1_014, 1_000), "coco-vit-b-16": DataSet(113_287, 5_000, 5_000)}
CAPTIONS_PER_IMAGE = 5
TRAINING = "train (both stages)"


def measured(work) -> tuple[float, float]:
    """(FLOPs, seconds) of one call of `work`, after a warm-up call."""
    work()
    counter = FlopCounterMode(display=False)
    torch.backends.mha.set_fastpath_enabled(False)  # its fused kernel is invisible to the counter
    with counter:
        work()
    torch.backends.mha.set_fastpath_enabled(True)
    started = time.perf_counter()
    work()
    return counter.get_total_flops(), time.perf_counter() - started


def units(params: dict, batch: int, pairs: int, images: int) -> dict[str, tuple[float, float]]:
    """(FLOPs, CPU seconds) per image featurized, per caption featurized, per training anchor, per pair re-ranked."""
    torch.manual_seed(0)
    model = build_model({"prompt": params["prompt"]}, open_clip.CLIP(**open_clip.get_model_config("ViT-B-16")))
    visual = model.clip.visual
    size, embed, slots = visual.image_size[0], visual.output_dim, params["llm"]["max_triplets"]
    context = model.clip.context_length

    def knowledge(rows: int) -> Knowledge:  # 1..K triplets per caption: the padding mask is part of the cost
        counts = torch.randint(1, slots + 1, (rows,))
        return Knowledge(mask=torch.arange(slots)[None] < counts[:, None],
                         slot_tokens=torch.randint(1, 49000, (rows, slots, 3, params["featurize"]["slot_tokens"])),
                         states=F.normalize(torch.randn(rows, slots, embed), dim=-1))

    pictures, texts = torch.randn(images, 3, size, size), torch.randint(1, 49000, (images, context))
    results = {}
    with torch.inference_mode():
        flops, seconds = measured(lambda: model.clip.encode_image(pictures))
        results["featurize image"] = (flops / images, seconds / images)
        flops, seconds = measured(lambda: model.clip.encode_text(texts))
        results["featurize caption"] = ((1 + slots) * flops / images, (1 + slots) * seconds / images)  # + states
        prefix, pair_knowledge = model.image_prefix(pictures[:1]).index(torch.zeros(pairs, dtype=torch.long)), \
            knowledge(pairs)
        flops, seconds = measured(lambda: model.encode_from_prefix(prefix, pair_knowledge))
        results["re-rank pair"] = (flops / pairs, seconds / pairs)
    model.set_trainable(1)
    model.train()
    step_batch = Batch(model.image_prefix(torch.randn(batch, 3, size, size)), knowledge(batch),
                       F.normalize(torch.randn(batch, embed), dim=-1), torch.arange(batch),
                       other_image=torch.arange(batch).roll(1))
    objective = Objective(model, ("contrastive",), params["train"]["margin"], params["train"]["negatives"])

    def step() -> None:
        model.zero_grad(set_to_none=True)
        objective(step_batch).backward()
    flops, seconds = measured(step)
    results[f"train anchor ({params['train']['negatives']})"] = (flops / batch, seconds / batch)
    return results


def projected_work(name: str, params: dict, unit: dict[str, tuple[float, float]]) -> dict[str, float]:
    """FLOPs of each stage of a preset's run; only training spreads over GPUs (featurize, validation on the main
    process and evaluate run on one)."""
    sizes, train = DATA_SETS[name], params["train"]
    top_k = params["featurize"]["top_k"]
    train_anchor = next(flops for key, (flops, _) in unit.items() if key.startswith("train anchor"))
    all_images = sizes.train + sizes.val + sizes.test
    epochs = train["stage1"]["epochs"] + train["stage2"]["epochs"]
    val_pairs = top_k * sizes.val * (1 + CAPTIONS_PER_IMAGE)  # i2t and t2i candidates
    return {
        "featurize": all_images * (unit["featurize image"][0]
                                   + CAPTIONS_PER_IMAGE * unit["featurize caption"][0]),
        TRAINING: epochs * sizes.train * CAPTIONS_PER_IMAGE * train_anchor,
        "validation (every epoch)": epochs * val_pairs * unit["re-rank pair"][0],
        "evaluate (test re-ranking)": top_k * sizes.test * (1 + CAPTIONS_PER_IMAGE) * unit["re-rank pair"][0],
    }


def duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflops", type=float, default=100.0, help="effective TFLOP/s of one GPU")
    parser.add_argument("--batch", type=int, default=16, help="anchors of the measured training step")
    parser.add_argument("--pairs", type=int, default=40, help="pairs of the measured re-ranking pass")
    parser.add_argument("--images", type=int, default=16, help="images and captions of the featurize passes")
    args = parser.parse_args()
    base = load_params(ROOT / "params.yaml")
    known = presets(ROOT)
    runs = {name: applied(base, known[name].overrides) for name in DATA_SETS}
    unit = units(runs["flickr30k-vit-b-16"], args.batch, args.pairs, args.images)

    print(f"Measured on this CPU ({torch.get_num_threads()} threads), ViT-B-16, random weights, injection layer "
          f"{runs['flickr30k-vit-b-16']['prompt']['injection_layer']}:\n")
    print("| unit of work | GFLOPs | CPU ms | CPU GFLOP/s |")
    print("|---|---|---|---|")
    for name, (flops, seconds) in unit.items():
        print(f"| {name} | {flops / 1e9:.1f} | {1000 * seconds:.0f} | {flops / seconds / 1e9:.0f} |")
    print(f"\nProjected at {args.tflops:g} effective TFLOP/s per GPU (8 GPUs: training data-parallel, "
          "the rest on one):\n")
    print("| preset | stage | PFLOPs | 1 GPU | 8 GPUs |")
    print("|---|---|---|---|---|")
    for name, params in runs.items():
        work = projected_work(name, params, unit)
        seconds = {stage: flops / (args.tflops * 1e12) for stage, flops in work.items()}
        on_eight = {stage: time_s / 8 if stage == TRAINING else time_s for stage, time_s in seconds.items()}
        for stage, flops in work.items():
            print(f"| {name} | {stage} | {flops / 1e15:.2f} | {duration(seconds[stage])} | "
                  f"{duration(on_eight[stage])} |")
        print(f"| {name} | total | {sum(work.values()) / 1e15:.2f} | {duration(sum(seconds.values()))} | "
              f"{duration(sum(on_eight.values()))} |")


if __name__ == "__main__":
    main()
