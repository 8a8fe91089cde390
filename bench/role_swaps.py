"""Where the demo's twin view is lost: role swaps (B acts on A) against action swaps (A does another thing to B).

    python bench/role_swaps.py [--model models/stage2]

Run it in a workspace that holds a demo run's outputs (`make demo`). A role swap's captions are word permutations
of the scene's, so only a score that conditions the image on the caption (the action knowledge) can tell them
apart; an action swap's differ in the verb, which the frozen text tower already reads. For the train and test
splits it prints, with chance at 50 %:

- how alike the frozen text features g(t) of a caption and its twin's same-template caption are;
- pairwise accuracy: an image's own caption against its twin's same-template caption, zero-shot and re-ranked
  by the model (s(i, t) = cos(f(i | t), g(t)));
- a linear probe on the frozen image features (the split's, with its colour cast) trained on the train split:
  which actor type is the agent, and whether the agent and patient probes put the two actors the right way round;
- on the test split, the re-ranked Rsum, and what it would be if the wrong candidates from the query's role swap
  (or from its whole twin group) ranked below the right ones: the most that telling them apart can add.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tasks import paths, schemas  # noqa: E402
from tasks.evaluate.twins import twin_groups  # noqa: E402
from tasks.ingest.demo import GROUP_SIZE, NOUNS  # noqa: E402
from tasks.rerank.features import FeatureSplit  # noqa: E402
from tasks.rerank.prefixes import PrefixSource  # noqa: E402
from tasks.rerank.scores import rerank, score_pairs  # noqa: E402
from tasks.retrieval import recalls  # noqa: E402
from tasks.train.model_files import load_model  # noqa: E402

ROLE_SWAP, ACTION_SWAP = 1, 2  # member XOR this = the twin (members: scene, role swap, action swap, its role swap)


def image_numbers(split: FeatureSplit) -> np.ndarray:
    """Each image's demo number: number // GROUP_SIZE is its twin group, number % GROUP_SIZE its member."""
    return split.images["image_id"].str.removeprefix("demo_").astype(int).to_numpy()


def twin_caption_pairs(split: FeatureSplit, numbers: np.ndarray,
                       swap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image rows, own caption rows, twin's same-template caption rows) over whole twin groups."""
    row_of_number = {number: row for row, number in enumerate(numbers)}
    captions_of_image = [np.flatnonzero(split.image_row == image) for image in range(len(numbers))]
    images, own, twin = [], [], []
    for image, number in enumerate(numbers):
        partner = row_of_number.get(number - number % GROUP_SIZE + (number % GROUP_SIZE ^ swap))
        if partner is None or len(captions_of_image[partner]) != len(captions_of_image[image]):
            continue
        images += [image] * len(captions_of_image[image])
        own += list(captions_of_image[image])
        twin += list(captions_of_image[partner])
    return np.array(images), np.array(own), np.array(twin)


def twin_relation(query_images: np.ndarray, candidate_images: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """ROLE_SWAP, ACTION_SWAP or both (3) where a candidate's image is a twin of the query's, else 0."""
    same_group = numbers[query_images] // GROUP_SIZE == numbers[candidate_images] // GROUP_SIZE
    return np.where(same_group, numbers[query_images] % GROUP_SIZE ^ numbers[candidate_images] % GROUP_SIZE, 0)


def moved_last(ranked: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """Candidate lists with the `moved` entries put after the others, each part in its order."""
    return np.take_along_axis(ranked, np.argsort(moved, axis=1, kind="stable"), axis=1)


def scene_roles(split: FeatureSplit) -> tuple[np.ndarray, np.ndarray]:
    """The true agent and patient noun of every image (index into NOUNS), from the generator's triplets."""
    truth = schemas.read(paths.TRUE_TRIPLETS, schemas.TRUE_TRIPLETS).set_index("caption_id")["triplets"]
    first_caption = split.captions.groupby("image_row")["caption_id"].first()
    actions = [truth[first_caption[image]][0] for image in range(len(split.images))]
    return (np.array([NOUNS.index(t["subject"]) for t in actions]),
            np.array([NOUNS.index(t["object"]) for t in actions]))


def linear_probe(features: np.ndarray, labels: np.ndarray):
    """Multinomial logistic regression (L-BFGS, small L2) -> a function giving class scores."""
    weights = torch.zeros(features.shape[1], len(NOUNS), requires_grad=True)
    bias = torch.zeros(len(NOUNS), requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=500)
    inputs, targets = torch.from_numpy(features), torch.from_numpy(labels)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(inputs @ weights + bias, targets) + 1e-3 * weights.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda x: (torch.from_numpy(x) @ weights + bias).detach().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/stage2", help="trained prompt modules")
    args = parser.parse_args()
    model, preprocess, model_config = load_model(Path(args.model), device="cpu")
    splits = {name: FeatureSplit.load(name) for name in ("train", "test")}
    if any(twin_groups(split.images["image_id"].tolist()) is None for split in splits.values()):
        raise SystemExit(f"{paths.FEATURES}: not the demo's images; role swaps exist on the demo only")
    numbers = {name: image_numbers(split) for name, split in splits.items()}
    roles = {name: scene_roles(split) for name, split in splits.items()}
    train_features = splits["train"].image.astype(np.float32)
    agent_probe = linear_probe(train_features, roles["train"][0])
    patient_probe = linear_probe(train_features, roles["train"][1])

    sources = {name: PrefixSource(model, preprocess, split.images["image_path"].tolist(), "cpu", paths.PREFIX_CACHE,
                                  model_config["backbone_sha256"]) for name, split in splits.items()}
    print(f"model {args.model}; pairwise figures in %, chance 50")
    for name, split in splits.items():
        source = sources[name]
        text = split.text.astype(np.float32)
        image = split.image.astype(np.float32)
        for label, swap in (("role swap", ROLE_SWAP), ("action swap", ACTION_SWAP)):
            images, own, twin = twin_caption_pairs(split, numbers[name], swap)
            text_cos = np.einsum("pd,pd->p", text[own], text[twin]).mean()
            zero_shot = np.einsum("pd,pd->p", image[images], text[own] - text[twin]) > 0
            own_scores = score_pairs(model, source, split, images, own, 256, "cpu", progress=False)
            twin_scores = score_pairs(model, source, split, images, twin, 256, "cpu", progress=False)
            print(f"{name:5s} {label:11s}: text cos {text_cos:.3f}; own caption beats the twin's: "
                  f"zero-shot {100 * zero_shot.mean():5.1f}, model {100 * (own_scores > twin_scores).mean():5.1f} "
                  f"({len(images)} pairs)")
        agent, patient = roles[name]
        agent_scores, patient_scores = agent_probe(image), patient_probe(image)
        rows, distinct = np.arange(len(agent)), agent != patient
        right_way = (agent_scores[rows, agent] + patient_scores[rows, patient]
                     > agent_scores[rows, patient] + patient_scores[rows, agent])
        print(f"{name:5s} probe on frozen image features: agent type {100 * (agent_scores.argmax(1) == agent).mean():.1f} "
              f"(chance {100 / len(NOUNS):.1f}), roles the right way round {100 * right_way[distinct].mean():.1f}")

    test = splits["test"]
    reranked = rerank(model, sources["test"], test, 256, "cpu", progress=False)
    row = test.image_row
    i2t_relation = twin_relation(np.arange(len(test.images))[:, None], row[reranked.i2t], numbers["test"])
    t2i_relation = twin_relation(row[:, None], reranked.t2i, numbers["test"])
    bounds = []
    for label, relations in (("role swaps", [ROLE_SWAP]), ("every twin", [ROLE_SWAP, ACTION_SWAP, 3])):
        rsum = recalls(moved_last(reranked.i2t, np.isin(i2t_relation, relations)),
                       moved_last(reranked.t2i, np.isin(t2i_relation, relations)), row)["rsum"]
        bounds.append(f"{label} {rsum:.1f}")
    print(f"test  re-ranked Rsum {recalls(reranked.i2t, reranked.t2i, row)['rsum']:.1f}; with the wrong candidates "
          f"below the right ones: {', '.join(bounds)}")


if __name__ == "__main__":
    main()
