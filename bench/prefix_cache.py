"""Re-ranking cost with and without the cached image prefix, on a ViT-B-16-shaped model (random weights).

    python bench/prefix_cache.py [--model ViT-B-16] [--images 2] [--candidates 20] [--repeats 3]

Re-ranking scores every image under each of its top-k candidate captions' knowledge. Blocks before the
injection layer l do not depend on the caption: the cached path runs them once per image, the uncached path
once per (image, candidate). Prints both times measured side by side in one run, their ratio (target <= 0.6x
at l = L/2), the largest score difference between the paths, and the parameter counts per training stage.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import open_clip
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from model import Knowledge, build_model  # noqa: E402
from tasks.config import load_params  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--max-triplets", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--injection-layer", type=int, default=None, help="default: half the depth")
    args = parser.parse_args()

    torch.manual_seed(0)
    prompt = load_params(ROOT / "params.yaml")["prompt"] | {"injection_layer": args.injection_layer}
    model = build_model({"prompt": prompt}, open_clip.CLIP(**open_clip.get_model_config(args.model))).eval()
    visual = model.clip.visual
    size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
    embed = visual.output_dim
    pairs = args.images * args.candidates
    pictures = torch.randn(args.images, 3, size, size)
    image_of_pair = torch.arange(args.images).repeat_interleave(args.candidates)
    counts = torch.randint(0, args.max_triplets + 1, (pairs,))
    knowledge = Knowledge(mask=torch.arange(args.max_triplets)[None] < counts[:, None],
                          slot_tokens=torch.randint(1, 49000, (pairs, args.max_triplets, 3, 8)),
                          states=F.normalize(torch.randn(pairs, args.max_triplets, embed), dim=-1))
    text = F.normalize(torch.randn(pairs, embed), dim=-1)

    def uncached() -> torch.Tensor:
        return model.score(pictures[image_of_pair], knowledge, text)

    def cached() -> torch.Tensor:
        return model.score_from_prefix(model.image_prefix(pictures).index(image_of_pair), knowledge, text)

    timings: dict[str, list[float]] = {"uncached": [], "cached": []}
    with torch.inference_mode():
        difference = (uncached() - cached()).abs().max().item()  # also warms up both paths
        for _ in range(args.repeats):  # interleaved, so both see the same machine state
            for name, path in (("uncached", uncached), ("cached", cached)):
                started = time.perf_counter()
                path()
                timings[name].append(time.perf_counter() - started)
    layers = visual.transformer.layers
    uncached_s, cached_s = (statistics.median(timings[name]) for name in ("uncached", "cached"))
    print(f"{args.model}: {layers} blocks, injection layer l={model.injection_layer}, {args.images} images x "
          f"{args.candidates} candidates, torch threads {torch.get_num_threads()}")
    print(f"uncached: {uncached_s:.2f} s  ({pairs / uncached_s:.1f} pairs/s)")
    print(f"cached prefix: {cached_s:.2f} s  ({pairs / cached_s:.1f} pairs/s)")
    expected = (model.injection_layer + args.candidates * (layers - model.injection_layer)) / (args.candidates * layers)
    print(f"ratio cached/uncached: {cached_s / uncached_s:.2f}x  (target <= 0.60x; block-count bound {expected:.2f}x)")
    print(f"largest score difference between the paths: {difference:.2e}")
    backbone = sum(p.numel() for p in model.clip.parameters())
    for stage in (1, 2):
        count = sum(p.numel() for p in model.trainable_parameters(stage).values())
        print(f"stage {stage} trainable parameters: {count:,} = {100 * count / backbone:.1f}% of the frozen "
              f"backbone ({backbone:,})")


if __name__ == "__main__":
    main()
