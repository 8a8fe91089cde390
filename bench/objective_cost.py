"""Step time and peak memory of each in-batch objective on ViT-B-16 shapes (random weights, CPU), as ratios to paired.

    python bench/objective_cost.py [--model ViT-B-16] [--sizes 32 128] [--memory-gb 18] [--injection-layer 6] [--repeats 2]

Training steps (forward and backward of stage 1's contrastive loss, as tasks/train/stage.py runs it) per
objective and batch size B, each in its own process so its peak resident memory is its own. `paired` runs B image
passes, `consistent` 2B, `batch_cross` B²: a configuration whose projected memory exceeds --memory-gb is measured
at the largest B that fits (halving), next to paired at that B. Target for the default (`consistent`): <= 2.0x
paired's step time at B = 128.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import open_clip
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from model import Batch, Knowledge, Objective, build_model  # noqa: E402
from tasks.config import load_params  # noqa: E402

OBJECTIVES = ("paired", "consistent", "batch_cross")
PASSES = {"paired": lambda b: b, "consistent": lambda b: 2 * b, "batch_cross": lambda b: b * b}
# Resident memory of one image pass with gradients through 6 ViT-B/16 blocks, measured here (B = 16 vs 32):
# enough to tell whether a configuration fits before starting it.
GB_PER_PASS = 0.06


def resident_gb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def one_step(model_name: str, injection_layer: int, negatives: str, anchors: int, max_triplets: int,
             repeats: int) -> dict:
    """Build the model and a batch of `anchors` random images and captions; time steps after a warm-up."""
    torch.manual_seed(0)
    prompt = load_params(ROOT / "params.yaml")["prompt"] | {"injection_layer": injection_layer}
    model = build_model({"prompt": prompt}, open_clip.CLIP(**open_clip.get_model_config(model_name)))
    model.set_trainable(1)
    model.train()
    size, embed = model.clip.visual.image_size[0], model.clip.visual.output_dim

    def batch(b: int) -> Batch:
        # 1..K triplets per caption, as LLM answers have them: the padding mask is part of the cost.
        counts = torch.randint(1, max_triplets + 1, (b,))
        knowledge = Knowledge(mask=torch.arange(max_triplets)[None] < counts[:, None],
                              slot_tokens=torch.randint(1, 49000, (b, max_triplets, 3, 8)),
                              states=F.normalize(torch.randn(b, max_triplets, embed), dim=-1))
        with torch.no_grad():
            prefix = model.image_prefix(torch.randn(b, 3, size, size))
        return Batch(prefix, knowledge, F.normalize(torch.randn(b, embed), dim=-1), torch.arange(b),
                     other_image=torch.arange(b).roll(1))

    objective = Objective(model, ("contrastive",), 0.2, negatives)
    objective(batch(2)).backward()  # warm-up: kernels, allocator
    step_batch = batch(anchors)
    before = resident_gb()
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        objective(step_batch).backward()
        times.append(time.perf_counter() - started)
    seconds = min(times)  # the least disturbed run
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB
    return {"seconds": seconds, "peak_gb": peak, "step_gb": max(peak - before, 0.0)}


def measure(args: argparse.Namespace, negatives: str, anchors: int) -> dict:
    command = [sys.executable, __file__, "--worker", negatives, str(anchors), "--model", args.model,
               "--injection-layer", str(args.injection_layer), "--max-triplets", str(args.max_triplets),
               "--repeats", str(args.repeats)]
    # A GPU's caching allocator keeps freed memory for the next step; glibc would hand blocks over 32 MB back to
    # the system and fault them in again, a cost that grows with B and would swamp the comparison.
    keep_memory = os.environ | {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=keep_memory)
    if result.returncode != 0:
        raise SystemExit(f"{negatives} at B = {anchors} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def largest_fitting(negatives: str, anchors: int, memory_gb: float) -> int:
    while anchors > 2 and PASSES[negatives](anchors) * GB_PER_PASS > memory_gb:
        anchors //= 2
    return anchors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--memory-gb", type=float, default=18.0, help="largest projected step memory to start")
    parser.add_argument("--injection-layer", type=int, default=6, help="frozen blocks before the prompts (6: half)")
    parser.add_argument("--max-triplets", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="steps per configuration; the fastest counts")
    parser.add_argument("--worker", nargs=2, metavar=("NEGATIVES", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(one_step(args.model, args.injection_layer, args.worker[0], int(args.worker[1]),
                                  args.max_triplets, args.repeats)))
        return

    print(f"{args.model}, injection layer {args.injection_layer}, {torch.get_num_threads()} threads, "
          f"one step of stage 1 (forward + backward)\n")
    print("| objective | asked B | measured B | image passes | step s | x paired | peak GB | MB per pass |")
    print("|---|---|---|---|---|---|---|---|")
    measured: dict[tuple[str, int], dict] = {}

    def result(negatives: str, anchors: int) -> dict:
        if (negatives, anchors) not in measured:
            measured[negatives, anchors] = measure(args, negatives, anchors)
        return measured[negatives, anchors]

    for size in args.sizes:
        for negatives in OBJECTIVES:
            anchors = largest_fitting(negatives, size, args.memory_gb)
            step, paired = result(negatives, anchors), result("paired", anchors)
            passes = PASSES[negatives](anchors)
            print(f"| {negatives} | {size} | {anchors} | {passes} | {step['seconds']:.1f} | "
                  f"{step['seconds'] / paired['seconds']:.2f}x | {step['peak_gb']:.1f} | "
                  f"{1000 * step['step_gb'] / passes:.0f} |", flush=True)


if __name__ == "__main__":
    main()
