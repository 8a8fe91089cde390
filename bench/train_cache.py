"""One training epoch (stage 1) reading cached frozen features and image prefixes vs computing them per batch.

    dvc repro featurize                # the demo's (or any) features and backbone
    python bench/train_cache.py [--steps N] [--injection-layer L]

Cached: text features, state features and the image prefixes (blocks before the injection layer) come from
data/features/ and a prefix cache filled once (its fill time is printed apart). Uncached: every batch decodes
and preprocesses its images, runs the frozen blocks before l, and encodes its captions and state sentences with
the frozen text tower. Both run the same batches with the params.yaml settings, side by side in one run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model import ActionAwareCLIP, Knowledge, Objective, PromptConfig  # noqa: E402
from tasks import paths, schemas  # noqa: E402
from tasks.backbone import load_backbone, sha256_of  # noqa: E402
from tasks.config import from_params, load_params  # noqa: E402
from tasks.featurize import FeaturizeConfig  # noqa: E402
from tasks.rerank.features import FeatureSplit  # noqa: E402
from tasks.rerank.prefixes import PrefixSource  # noqa: E402
from tasks.train.batches import BatchMaker  # noqa: E402
from tasks.train.config import TrainConfig  # noqa: E402


@dataclass(frozen=True)
class EncodedOnTheFly:
    """A FeatureSplit whose caption and state features are encoded by the frozen text tower at every call."""

    split: FeatureSplit
    clip: torch.nn.Module
    tokenizer: object
    state_sentences: np.ndarray  # (C, K) object array of templated state sentences ("" where no triplet)

    def __getattr__(self, name: str):
        return getattr(self.split, name)

    @torch.no_grad()  # not inference_mode: the features take part in the autograd graph of the loss
    def _encode(self, texts: list[str]) -> torch.Tensor:
        return self.clip.encode_text(self.tokenizer(texts), normalize=True).float()

    def text_features(self, rows: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        return self._encode(self.split.captions["caption"].to_numpy()[rows].tolist()).to(device)

    def knowledge(self, rows: np.ndarray, device: torch.device | str = "cpu") -> Knowledge:
        cached = self.split.knowledge(rows, device)
        sentences = self.state_sentences[rows]
        present = sentences != ""
        states = torch.zeros_like(cached.states)
        if present.any():
            states[torch.from_numpy(present)] = self._encode(sentences[present].tolist()).to(states.device)
        return replace(cached, states=states)


def state_sentences(split: FeatureSplit, template: str) -> np.ndarray:
    knowledge = schemas.read(paths.KNOWLEDGE, schemas.KNOWLEDGE).set_index("caption_id")
    sentences = np.full(split.triplet_mask.shape, "", dtype=object)
    for row, caption_id in enumerate(split.captions["caption_id"]):
        entry = knowledge.loc[caption_id]
        for k, (triplet, state) in enumerate(zip(entry["triplets"][:sentences.shape[1]], entry["states"])):
            sentences[row, k] = template.format(state=state, **triplet)
    return sentences


def epoch_seconds(model: ActionAwareCLIP, split, source: PrefixSource, config: TrainConfig, steps: int) -> float:
    objective = Objective(model, ("contrastive",), config.margin, config.negatives)
    optimizer = torch.optim.AdamW(model.set_trainable(1).values(), lr=config.stage1.lr)
    order = np.random.default_rng(config.seed).permutation(len(split.captions))
    batches = BatchMaker(split, source, config, torch.device("cpu"))
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        loss = objective(batches.make(order, step, np.random.default_rng(step)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default: a whole epoch)")
    parser.add_argument("--injection-layer", type=int, default=None,
                        help="instead of prompt.injection_layer: how many frozen blocks the prefix cache holds")
    args = parser.parse_args()
    params = load_params()
    config, prompt = from_params(TrainConfig, params), from_params(PromptConfig, params)
    if args.injection_layer is not None:
        prompt = replace(prompt, injection_layer=args.injection_layer)
    clip, preprocess, tokenizer = load_backbone(paths.BASE_CLIP)
    torch.manual_seed(config.seed)
    model = ActionAwareCLIP(clip, prompt)
    split = FeatureSplit.load("train")
    steps = args.steps or len(split.captions) // config.batch_size
    image_paths = split.images["image_path"].tolist()
    sha = sha256_of(paths.BASE_CLIP / "open_clip_model.safetensors")
    template = from_params(FeaturizeConfig, params).state_template
    with tempfile.TemporaryDirectory(prefix="prefix-cache-") as cache_dir:
        started = time.perf_counter()
        cached_source = PrefixSource(model, preprocess, image_paths, torch.device("cpu"), Path(cache_dir), sha)
        fill = time.perf_counter() - started
        uncached = EncodedOnTheFly(split, clip, tokenizer, state_sentences(split, template))
        uncached_source = PrefixSource(model, preprocess, image_paths, torch.device("cpu"), None, sha)
        initial = {name: value.clone() for name, value in model.state_dict().items()}
        without = epoch_seconds(model, uncached, uncached_source, config, steps)
        model.load_state_dict(initial)
        with_caches = epoch_seconds(model, split, cached_source, config, steps)
    print(f"{len(image_paths)} train images, {steps} steps of {config.batch_size} anchors, negatives "
          f"{config.negatives}, injection layer {model.injection_layer}, torch threads {torch.get_num_threads()}")
    print(f"without caches: {without:.1f} s   with caches: {with_caches:.1f} s   ratio {with_caches / without:.2f}x "
          f"(target <= 0.60x); filling the prefix cache once took {fill:.1f} s")


if __name__ == "__main__":
    main()
