"""Can the prompt modules learn to tell the demo's twins apart at all? Fit twin groups, watch twin-view R@1.

    python bench/twin_fit.py [--steps 600] [--lr 1e-3] [--injection-layer 0] [--no-knowledge]

Run it in a workspace that holds a demo run's outputs (models/base_clip, data/features: `make demo`, or
`dvc exp apply <experiment>` for, say, truth knowledge without the colour cast). Every step is two random train
twin groups, 8 images with one caption each, every (image, caption) cell scored as re-ranking scores it
(`batch_cross`): the most direct signal there is for "who does what to whom". Prints R@1 within twin groups
(tasks/evaluate/twins.py) on the train and test splits every 200 steps, zero-shot against the prompt model. A
model that cannot raise the train figures cannot learn the twins from any batch or objective.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from model import Batch, Objective, PromptConfig  # noqa: E402
from tasks import paths  # noqa: E402
from tasks.backbone import load_backbone, sha256_of  # noqa: E402
from tasks.config import from_params, load_params  # noqa: E402
from tasks.evaluate.twins import twin_groups, twin_view  # noqa: E402
from tasks.rerank.features import FeatureSplit  # noqa: E402
from tasks.rerank.prefixes import PrefixSource  # noqa: E402
from tasks.rerank.scores import score_pairs  # noqa: E402
from tasks.train.model_files import prompt_model  # noqa: E402

GROUPS_PER_STEP = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--injection-layer", type=int, default=0)
    parser.add_argument("--no-knowledge", action="store_true", help="visual prompts only")
    args = parser.parse_args()
    params = load_params("params.yaml")
    params["prompt"] |= {"injection_layer": args.injection_layer}
    if args.no_knowledge:
        params["prompt"] |= {"use_triplets": False, "use_states": False}
    torch.manual_seed(0)
    clip, preprocess, _ = load_backbone(paths.BASE_CLIP, "cpu")
    model = prompt_model(clip, from_params(PromptConfig, params))
    trainable = model.set_trainable(1)
    optimizer = torch.optim.AdamW(trainable.values(), lr=args.lr, weight_decay=0.01)
    objective = Objective(model, ("contrastive",), 0.2, "batch_cross")
    backbone_sha = sha256_of(paths.BASE_CLIP / "open_clip_model.safetensors")
    splits = {}
    for name in ("train", "test"):
        split = FeatureSplit.load(name)
        groups = twin_groups(split.images["image_id"].tolist())
        if groups is None:
            raise SystemExit(f"{paths.FEATURES / name}: not the demo's images; twin groups exist on the demo only")
        splits[name] = (split, PrefixSource(model, preprocess, split.images["image_path"].tolist(), "cpu",
                                            paths.PREFIX_CACHE, backbone_sha), groups)

    def report(step: int) -> None:
        model.eval()
        line = [f"step {step:5d}"]
        for name, (split, source, groups) in splits.items():
            view = twin_view(groups, split.image_row, split.image, split.text,
                             lambda i, c, split=split, source=source: score_pairs(model, source, split, i, c, 256,
                                                                                  "cpu", progress=False))
            line.append(f"{name} zero-shot {view['zero_shot']['i2t_r1']:5.1f}/{view['zero_shot']['t2i_r1']:5.1f} "
                        f"model {view['reranked']['i2t_r1']:5.1f}/{view['reranked']['t2i_r1']:5.1f}")
        print("  ".join(line) + f"  ({time.perf_counter() - started:.0f} s)", flush=True)
        model.train()

    split, source, groups = splits["train"]
    captions_of_image = [np.flatnonzero(split.image_row == image) for image in range(len(split.images))]
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    print("twin-view R@1 image->text / text->image, in %; chance 25")
    for step in range(args.steps):
        if step % 200 == 0:
            report(step)
        chosen = rng.choice(np.unique(groups), GROUPS_PER_STEP, replace=False)
        images = np.flatnonzero(np.isin(groups, chosen))
        captions = np.array([rng.choice(captions_of_image[image]) for image in images])
        loss = objective(Batch(source.prefix(images), split.knowledge(captions), split.text_features(captions),
                               torch.from_numpy(images)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    report(args.steps)


if __name__ == "__main__":
    main()
