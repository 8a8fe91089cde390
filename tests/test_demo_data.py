"""Tests of the demo dataset: determinism, the data contract, true triplets and bag-of-words hardness."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.ingest.demo import (
    ACTIONS,
    CAPTIONS_PER_IMAGE,
    GROUP_SIZE,
    generate_demo,
    twin_group_index,
)

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
ACTION_WORDS = {word for forms in ACTIONS.values() for verb in forms
                for phrase in (verb.present, verb.gerund, verb.participle) for word in phrase.split()}


def words(caption: str) -> Counter[str]:
    return Counter(caption.replace(",", "").split())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate_demo(tmp_path_factory.mktemp("demo"), 160, 48, 0, FRACTIONS)


@pytest.fixture(scope="module")
def captions(demo: tuple[pd.DataFrame, pd.DataFrame]) -> pd.DataFrame:
    return demo[0]


def test_same_seed_gives_identical_frames_and_png_bytes(tmp_path: Path) -> None:
    first = generate_demo(tmp_path / "a", 12, 64, 7, FRACTIONS)
    second = generate_demo(tmp_path / "b", 12, 64, 7, FRACTIONS)
    other_seed = generate_demo(tmp_path / "c", 12, 64, 8, FRACTIONS)

    # Only the directory in image_path may differ between the two runs.
    for frame in (first[0], second[0]):
        frame["image_path"] = frame["image_path"].map(lambda p: Path(p).name)
    pd.testing.assert_frame_equal(first[0], second[0])
    pd.testing.assert_frame_equal(first[1], second[1])
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(names) == 12
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    assert not first[0]["caption"].equals(other_seed[0]["caption"])
    assert any((tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes() for name in names)


def test_captions_follow_the_contract(captions: pd.DataFrame) -> None:
    assert list(captions.columns) == ["image_id", "image_path", "caption_id", "caption", "split"]
    assert captions["image_id"].nunique() == 160
    assert (captions.groupby("image_id").size() == CAPTIONS_PER_IMAGE).all()
    assert captions["caption_id"].is_unique
    expected_ids = [f"demo_{i:05d}#{k}" for i in range(160) for k in range(CAPTIONS_PER_IMAGE)]
    assert captions["caption_id"].tolist() == expected_ids  # ordered by image, then caption index
    assert set(captions["split"]) == {"train", "val", "test"}
    # 40 groups split 0.6 / 0.2 / 0.2 exactly.
    assert captions.drop_duplicates("image_id")["split"].value_counts().to_dict() == {"train": 96, "val": 32,
                                                                                     "test": 32}


def test_twins_share_one_split(captions: pd.DataFrame) -> None:
    groups = captions.assign(group=captions["image_id"].map(twin_group_index))
    assert (groups.groupby("group")["split"].nunique() == 1).all()
    assert (groups.groupby("group")["image_id"].nunique() == GROUP_SIZE).all()


def test_image_files_exist_with_the_requested_size(captions: pd.DataFrame) -> None:
    for path in captions["image_path"].unique():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (48, 48)


def test_a_partial_last_group(tmp_path: Path) -> None:
    captions, triplets = generate_demo(tmp_path, 7, 32, 0, {"train": 1.0, "val": 0.0, "test": 0.0})
    assert captions["image_id"].unique().tolist() == [f"demo_{i:05d}" for i in range(7)]
    assert len(triplets) == 7 * CAPTIONS_PER_IMAGE
    assert set(captions["split"]) == {"train"}


def test_every_caption_states_its_triplets(demo: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    captions, triplets = demo
    assert triplets["caption_id"].tolist() == captions["caption_id"].tolist()
    for caption, caption_triplets in zip(captions["caption"], triplets["triplets"]):
        caption_words = words(caption)
        action, *attributes = caption_triplets
        assert action["action"] in ACTIONS
        assert action["subject"] in caption_words and action["object"] in caption_words
        for attribute in attributes:
            assert attribute["action"] == "is"
            assert attribute["subject"] in caption_words and attribute["object"] in caption_words


def test_passive_captions_keep_the_agent_as_subject(demo: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    captions, triplets = demo
    passive = [(caption, found[0]) for caption, found in zip(captions["caption"], triplets["triplets"])
               if " by " in caption]
    assert len(passive) > 50
    for caption, action in passive:
        patient_phrase, agent_phrase = caption.split(" is ", 1)[0], caption.split(" by ")[-1]
        assert agent_phrase.split()[-1] == action["subject"], caption
        assert patient_phrase.split()[-1] == action["object"], caption


def test_without_passive_voice_the_agent_comes_first_and_the_images_stay(
        tmp_path: Path, demo: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    captions, triplets = generate_demo(tmp_path, 160, 48, 0, FRACTIONS, passive_voice=False)
    assert not captions["caption"].str.contains(" by ").any()
    for caption, found in zip(captions["caption"], triplets["triplets"]):
        caption_words = caption.replace(",", "").split()
        last_object = len(caption_words) - 1 - caption_words[::-1].index(found[0]["object"])
        assert caption_words.index(found[0]["subject"]) < last_object, caption
    with_passive = demo[0]
    assert captions["split"].tolist() == with_passive["split"].tolist()
    for mine, theirs in zip(captions["image_path"].unique(), with_passive["image_path"].unique()):
        assert Path(mine).read_bytes() == Path(theirs).read_bytes()  # the same scenes, only other wording


def test_a_colour_cast_scales_the_pixels_and_keeps_the_captions(tmp_path: Path) -> None:
    gains = (1.0, 0.8, 0.55)
    plain = generate_demo(tmp_path / "plain", 8, 32, 3, FRACTIONS)
    cast = generate_demo(tmp_path / "cast", 8, 32, 3, FRACTIONS, colour_cast=gains)
    for frame in (plain[0], cast[0]):
        frame["image_path"] = frame["image_path"].map(lambda p: Path(p).name)
    pd.testing.assert_frame_equal(plain[0], cast[0])
    pd.testing.assert_frame_equal(plain[1], cast[1])
    for name in plain[0]["image_path"].unique():
        original = np.asarray(Image.open(tmp_path / "plain" / name), dtype=np.float64)
        tinted = np.asarray(Image.open(tmp_path / "cast" / name), dtype=np.float64)
        np.testing.assert_array_equal(tinted, np.clip(np.rint(original * gains), 0, 255))
        assert tinted[..., 2].mean() < 0.6 * original[..., 2].mean()


def test_role_swaps_give_different_captions_with_the_same_words(captions: pd.DataFrame) -> None:
    by_words: dict[tuple[tuple[str, int], ...], set[tuple[str, str]]] = {}
    for image_id, caption in zip(captions["image_id"], captions["caption"]):
        by_words.setdefault(tuple(sorted(words(caption).items())), set()).add((image_id, caption))
    swapped = [same for same in by_words.values()
               if len({image for image, _ in same}) > 1 and len({text for _, text in same}) > 1]
    assert len(swapped) > 100


def test_action_swaps_differ_only_in_action_words(captions: pd.DataFrame) -> None:
    texts = captions.set_index("caption_id")["caption"]
    split = captions.set_index("image_id")["split"].to_dict()
    base, action_swap = "demo_00000", "demo_00002"  # first and third image of twin group 0
    assert split[base] == split[action_swap]
    for index in range(CAPTIONS_PER_IMAGE):
        first, second = words(texts[f"{base}#{index}"]), words(texts[f"{action_swap}#{index}"])
        difference = (first - second) + (second - first)
        assert difference and set(difference) <= ACTION_WORDS


def jaccard(query: Counter[str], bag: Counter[str]) -> float:
    return (query & bag).total() / (query | bag).total()


def expected_recall_at_1(scored: list[tuple[str, dict[str, float]]]) -> float:
    """Text-to-image R@1 over (gold image, score per image) pairs, ties broken at random (expected value)."""
    hits = 0.0
    for gold, scores in scored:
        best = max(scores.values())
        if scores[gold] == best:
            hits += 1 / sum(score == best for score in scores.values())
    return hits / len(scored)


def test_bag_of_words_oracle_cannot_separate_role_swaps(captions: pd.DataFrame) -> None:
    """An oracle that knows every word of every test image's captions, the query's own included."""
    test = captions[captions["split"] == "test"]
    image_words = {image: sum(map(words, group), Counter()) for image, group in test.groupby("image_id")["caption"]}
    scored = [(image_id, {image: jaccard(words(caption), bag) for image, bag in image_words.items()})
              for image_id, caption in zip(test["image_id"], test["caption"])]
    # A role swap's captions use exactly the same words, so the oracle flips a coin between each scene and
    # its role swap: 1/2 is its ceiling, where an action-aware model can reach 1.0.
    # Measured 0.44 (seed 0, 32 test images).
    assert expected_recall_at_1(scored) < 0.55


def test_bag_of_words_retrieval_prefers_the_role_swap(captions: pd.DataFrame) -> None:
    """Leave-one-out nearest caption: each test image is scored by its caption closest to the query."""
    test = captions[captions["split"] == "test"]
    by_image = {image: list(zip(group["caption_id"], group["caption"])) for image, group in test.groupby("image_id")}
    scored = [(image_id, {image: max(jaccard(words(caption), words(text)) for other_id, text in entries
                                     if other_id != caption_id)
                          for image, entries in by_image.items()})
              for image_id, caption_id, caption in zip(test["image_id"], test["caption_id"], test["caption"])]
    # Measured 0.04 (seed 0, 150 images): the role swap holds a word-for-word permutation of the query,
    # which beats every other caption of the right image.
    assert expected_recall_at_1(scored) < 0.2


# The generator checks its counts (tasks/base_clip.py passes clip.scratch values); split fractions, passive_voice
# and colour_cast are checked where they come from, params.yaml's data.demo (tests/test_ingest.py).
@pytest.mark.parametrize(("arguments", "message"), [
    ({"n_images": 2}, "n_images"),
    ({"image_size": 16}, "image_size"),
    ({"image_size": 512}, "image_size"),
    ({"seed": -1}, "seed"),
    ({"seed": True}, "seed"),
])
def test_invalid_arguments_are_rejected(tmp_path: Path, arguments: dict[str, object], message: str) -> None:
    valid = {"image_dir": tmp_path, "n_images": 6, "image_size": 32, "seed": 0, "split_fractions": FRACTIONS}
    with pytest.raises(ValueError, match=message):
        generate_demo(**{**valid, **arguments})
