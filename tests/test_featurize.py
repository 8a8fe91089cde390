"""Stage `featurize`: the data/features/ contract on a small demo with a tiny CLIP, top-k and recall, bad input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from tasks import backbone, featurize, paths, retrieval, schemas
from tasks.config import InputDataError, from_params
from tests.conftest import PARAMS, params_with
from tests.small_demo import TINY_CLIP, knowledge_from_truth, write_demo

K, S, D = 4, 8, 32  # llm.max_triplets, featurize.slot_tokens, the tiny CLIP's embed dim
LONG_SLOT = "very big and very yellow horse with a long tail near the old tree"  # more than S tokens
ARRAYS = {"image": np.float16, "text": np.float16, "slot_tokens": np.int32, "triplet_mask": np.bool_,
          "states": np.float16, "templates": np.float16, "topk_i2t": np.int32, "topk_t2i": np.int32}


def config(**values) -> featurize.FeaturizeConfig:
    changes = {"max_triplets": None, "device": "cpu", "chunk_size": 3, "batch_size": 16}
    return from_params(featurize.FeaturizeConfig, params_with(featurize=changes | values, llm={"max_triplets": K}))


@dataclass
class Stage:
    root: Path
    captions: pd.DataFrame
    knowledge: pd.DataFrame
    report: dict

    def run(self, cfg: featurize.FeaturizeConfig, out: Path, knowledge: pd.DataFrame | None = None) -> dict:
        knowledge_path = self.root / "knowledge.parquet"
        if knowledge is not None:
            knowledge_path = out.parent / f"{out.name}-knowledge.parquet"
            schemas.write(knowledge, schemas.KNOWLEDGE, knowledge_path)
        return featurize.run(cfg, backbone_dir=self.root / "clip", captions_path=self.root / "captions.parquet",
                             knowledge_path=knowledge_path, out_dir=out, report_path=out.parent / f"{out.name}.json")

    def split(self, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        in_split = (self.captions["split"] == name).to_numpy()
        return self.captions[in_split].reset_index(drop=True), self.knowledge[in_split].reset_index(drop=True)

    def arrays(self, name: str, root: Path | None = None) -> dict[str, np.ndarray]:
        folder = (root or self.root / "features") / name
        return {array: np.load(folder / f"{array}.npy", mmap_mode="r") for array in ARRAYS}


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> Stage:
    root = tmp_path_factory.mktemp("featurize")
    captions_path, truth = write_demo(root)
    captions = schemas.read(captions_path, schemas.CAPTIONS)
    knowledge = knowledge_from_truth(captions, truth)
    # Caption 1: more triplets than K, one with a slot longer than S tokens.
    first = knowledge.at[1, "triplets"][0]
    extra = [{**first, "object": f"thing {n}"} for n in range(5)] + [{**first, "subject": LONG_SLOT}]
    knowledge.at[1, "triplets"] = extra
    knowledge.at[1, "states"] = [f"state number {n} of the scene" for n in range(len(extra))]
    schemas.write(knowledge, schemas.KNOWLEDGE, root / "knowledge.parquet")
    backbone.register_project_configs()
    torch.manual_seed(0)  # an untrained tiny CLIP: the features only have to be its own
    backbone.save_backbone(open_clip.create_model(TINY_CLIP), backbone.model_config(TINY_CLIP), root / "clip")
    stage = Stage(root, captions, knowledge, {})
    stage.report = stage.run(config(), root / "features")
    return stage


def test_contract_rows_shapes_and_dtypes(stage):
    meta = json.loads((stage.root / "features" / "meta.json").read_text())
    assert (meta["embed_dim"], meta["max_triplets"], meta["slot_tokens"], meta["top_k"]) == (D, K, S, 20)
    assert meta["backbone"]["model_cfg"] == backbone.model_config(TINY_CLIP)
    assert meta["backbone"]["weights_sha256"] == backbone.sha256_of(stage.root / "clip" / backbone.WEIGHTS_FILE)
    assert meta["templates"] == {"state": PARAMS["featurize"]["state_template"],
                                 "triplet": PARAMS["featurize"]["triplet_template"]}
    assert list(meta["splits"]) == ["train", "val", "test"]
    assert sum(counts["captions"] for counts in meta["splits"].values()) == len(stage.captions)

    for split in meta["splits"]:
        captions, knowledge = stage.split(split)
        folder = stage.root / "features" / split
        images = schemas.read(folder / "images.parquet", schemas.FEATURE_IMAGES)
        table = schemas.read(folder / "captions.parquet", schemas.FEATURE_CAPTIONS)
        assert images["row"].tolist() == list(range(len(images)))
        assert images["image_id"].tolist() == list(dict.fromkeys(captions["image_id"]))  # first appearance
        assert table["row"].tolist() == list(range(len(captions)))
        assert table[["caption_id", "caption", "image_id"]].equals(captions[["caption_id", "caption", "image_id"]])
        assert (images["image_id"].to_numpy()[table["image_row"]] == table["image_id"]).all()
        assert table["status"].tolist() == knowledge["status"].tolist()
        assert table["n_triplets"].tolist() == [min(len(t), K) for t in knowledge["triplets"]]

        n_images, n_captions = len(images), len(captions)
        shapes = {"image": (n_images, D), "text": (n_captions, D), "slot_tokens": (n_captions, K, 3, S),
                  "triplet_mask": (n_captions, K), "states": (n_captions, K, D), "templates": (n_captions, K, D),
                  "topk_i2t": (n_images, min(20, n_captions)), "topk_t2i": (n_captions, min(20, n_images))}
        for name, array in stage.arrays(split).items():
            assert (array.dtype, array.shape) == (ARRAYS[name], shapes[name]), name
        assert meta["splits"][split] == {"images": n_images, "captions": n_captions,
                                         "triplets": int(table["n_triplets"].sum()),
                                         "top_k_i2t": shapes["topk_i2t"][1], "top_k_t2i": shapes["topk_t2i"][1]}


def test_features_are_the_frozen_backbones_normalised_outputs(stage):
    model, preprocess, tokenizer = backbone.load_backbone(stage.root / "clip")
    captions, knowledge = stage.split("test")
    arrays = stage.arrays("test")
    for name in ("image", "text", "states", "templates"):
        norms = np.linalg.norm(arrays[name].astype(np.float32), axis=-1)
        assert np.allclose(norms[norms > 0], 1, atol=2e-3), name

    images = pd.read_parquet(stage.root / "features" / "test" / "images.parquet")
    with torch.no_grad(), Image.open(images["image_path"].iloc[2]) as image:
        expected = model.encode_image(preprocess(image.convert("RGB"))[None], normalize=True)[0].numpy()
        assert np.allclose(arrays["image"][2], expected, atol=1e-3)
        row = int(np.flatnonzero(arrays["triplet_mask"][:, 1])[0])
        triplet, state = knowledge.at[row, "triplets"][1], knowledge.at[row, "states"][1]
        texts = {"text": captions.at[row, "caption"],
                 "states": PARAMS["featurize"]["state_template"].format(**triplet, state=state),
                 "templates": PARAMS["featurize"]["triplet_template"].format(**triplet)}
        for name, text in texts.items():
            expected = model.encode_text(tokenizer([text]), normalize=True)[0].numpy()
            found = arrays[name][row] if name == "text" else arrays[name][row, 1]
            assert np.allclose(found, expected, atol=1e-3), name


def test_knowledge_arrays_follow_the_triplets(stage):
    tokenizer = open_clip.get_tokenizer(f"local-dir:{stage.root / 'clip'}")
    for split in ("train", "val", "test"):
        _, knowledge = stage.split(split)
        arrays = stage.arrays(split)
        for row, (triplets, status) in enumerate(zip(knowledge["triplets"], knowledge["status"])):
            kept = min(len(triplets), K)
            assert arrays["triplet_mask"][row].tolist() == [k < kept for k in range(K)]
            if status == "empty":
                assert not arrays["triplet_mask"][row].any()
            for k in range(K):
                if k >= kept:  # no triplet: zeros everywhere
                    assert not arrays["slot_tokens"][row, k].any()
                    assert not arrays["states"][row, k].any() and not arrays["templates"][row, k].any()
                    continue
                for slot, name in enumerate(featurize.SLOTS):
                    ids = tokenizer.encode(triplets[k][name])[:S]
                    assert arrays["slot_tokens"][row, k, slot].tolist() == ids + [0] * (S - len(ids))
        assert stage.report["splits"][split]["triplets_beyond_max"] == \
            sum(max(0, len(triplets) - K) for triplets in knowledge["triplets"])
    assert len(tokenizer.encode(LONG_SLOT)) > S and len(stage.knowledge.at[1, "triplets"]) > K


def test_distinct_texts_are_encoded_once(stage):
    counts = stage.report["splits"]["train"]
    _, knowledge = stage.split("train")
    states = {state for states in knowledge["states"] for state in states[:K]}
    assert counts["encoded_texts"]["captions"] == len(set(stage.split("train")[0]["caption"]))
    assert counts["encoded_texts"]["states"] <= counts["triplets"] and counts["encoded_texts"]["states"] >= len(states)
    assert counts["encoded_texts"]["templates"] < counts["triplets"]  # demo triplets repeat


def test_top_k_lists_are_ranked_and_independent_of_the_chunk_size(stage, tmp_path):
    stage.run(config(chunk_size=4096), tmp_path / "features")
    for split in ("train", "val", "test"):
        chunked, whole = stage.arrays(split), stage.arrays(split, tmp_path / "features")
        for name in ARRAYS:
            assert np.array_equal(chunked[name], whole[name]), (split, name)
        similarities = chunked["image"].astype(np.float32) @ chunked["text"].astype(np.float32).T
        for scores, ranked in ((similarities, chunked["topk_i2t"]), (similarities.T, chunked["topk_t2i"])):
            listed = np.take_along_axis(scores, ranked, axis=1)
            assert (np.diff(listed, axis=1) <= 1e-6).all()  # best first
            unlisted = scores.copy()
            np.put_along_axis(unlisted, ranked, -np.inf, axis=1)
            assert (listed[:, -1] >= unlisted.max(axis=1) - 1e-6).all()  # nothing better was left out


@pytest.mark.parametrize("k, chunk_size", [(1, 1), (5, 4), (7, 3), (12, 1000)])
def test_top_k_equals_a_stable_argsort_ties_included(k, chunk_size):
    rng = np.random.default_rng(k)
    # Vectors of quarters from a small palette: products are exact in any summation order, and many tie.
    palette = rng.integers(-2, 3, size=(3, 8)) / 4
    queries = palette[rng.integers(0, 3, 9)].astype(np.float16)
    gallery = palette[rng.integers(0, 3, 12)].astype(np.float16)
    scores = queries.astype(np.float32) @ gallery.astype(np.float32).T
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    found = retrieval.top_k(queries, gallery, k, chunk_size, np.empty((9, k), np.int32))
    assert np.array_equal(found, expected)


def test_recalls_count_an_image_as_found_by_any_of_its_captions():
    image_row = np.array([0, 0, 1, 1])  # captions 0, 1 show image 0; captions 2, 3 image 1
    top_i2t = np.array([[2, 1, 3, 0], [3, 2, 0, 1]])  # image 0: first own caption at rank 2; image 1: rank 1
    top_t2i = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])  # caption 0 and 3 miss at rank 1
    result = retrieval.recalls(top_i2t, top_t2i, image_row, ks=(1, 2))
    assert result == {"i2t_r1": 50.0, "i2t_r2": 100.0, "t2i_r1": 50.0, "t2i_r2": 100.0, "rsum": 300.0}
    # Lists shorter than K over a larger gallery cannot answer R@K.
    partial = retrieval.recalls(top_i2t[:, :2], top_t2i, image_row, ks=(1, 3))
    assert partial["i2t_r3"] is None and partial["t2i_r3"] == 100.0 and partial["rsum"] is None


def broken(knowledge: pd.DataFrame, how: str) -> pd.DataFrame:
    broken = knowledge.copy()
    if how == "missing":
        return broken.drop(index=[0, 5, 9]).reset_index(drop=True)
    if how == "extra":
        return pd.concat([broken, broken.iloc[[2]].assign(caption_id="ghost#0")], ignore_index=True)
    if how == "duplicate":
        return pd.concat([broken, broken.iloc[[2]]], ignore_index=True)
    if how == "status":
        broken.at[2, "status"] = "empty"  # caption 2 has triplets
        return broken
    broken.at[2, "caption"] = "a different caption"
    return broken


@pytest.mark.parametrize("how, expected", [
    ("missing", r"knowledge\.parquet: no row for 3 captions of .*captions\.parquet \(demo_00000#0, demo_00001#0, "
                r"demo_00001#4\); re-run `dvc repro validate`"),
    ("extra", r"knowledge\.parquet: 1 rows for captions not in .*captions\.parquet \(ghost#0\)"),
    ("duplicate", r"knowledge\.parquet: 1 caption ids have more than one row \(demo_00000#2\)"),
    ("status", r"knowledge\.parquet: caption demo_00000#2: status 'empty' with \d triplets"),
    ("text", r"knowledge\.parquet: caption demo_00000#2: knowledge made for 'a different caption'"),
])
def test_knowledge_that_does_not_match_the_captions_fails_naming_the_ids(stage, tmp_path, how, expected):
    with pytest.raises(InputDataError, match=expected) as failure:
        stage.run(config(), tmp_path / "features", knowledge=broken(stage.knowledge, how))
    assert "\n" not in str(failure.value)
    assert not (tmp_path / "features").exists()


@pytest.mark.parametrize("values, expected", [
    ({"top_k": 0}, r"featurize\.top_k: must be >= 1, got 0"),
    ({"slot_tokens": "8"}, r"featurize\.slot_tokens: must be an integer, got '8' \(str\)"),
    ({"state_template": "<{subject}, {verb}> is {state}"}, r"featurize\.state_template: unknown fields \['verb'\]"),
    ({"state_template": "<{subject}, {action}, {object}>"}, r"featurize\.state_template: must contain \{state\}"),
    ({"triplet_template": "a {subject"}, r"featurize\.triplet_template: not a format string"),
    ({"device": "gpu0"}, r"featurize\.device: 'gpu0' is not a device"),
    ({"top-k": 5}, r"featurize: unknown keys \['top-k'\]"),
    ({"top_k": 2.5}, r"featurize\.top_k: must be an integer, got 2\.5 \(float\)"),
    ({"workers": -1}, r"featurize\.workers: must be >= 0, got -1"),
])
def test_bad_params_are_named(stage, tmp_path, values, expected):
    with pytest.raises(InputDataError, match=expected):
        stage.run(config(**values), tmp_path / "features")


def test_max_triplets_defaults_to_the_llm_setting():
    def max_triplets(featurize_k, llm_k) -> int:
        params = params_with(featurize={"max_triplets": featurize_k}, llm={"max_triplets": llm_k})
        return from_params(featurize.FeaturizeConfig, params).max_triplets

    assert max_triplets(None, 3) == 3
    assert max_triplets(2, 3) == 2
    with pytest.raises(InputDataError, match="featurize.max_triplets: null means llm.max_triplets, which is not an "
                                             "integer >= 1: None"):
        max_triplets(None, None)


def test_a_missing_setting_is_named():
    params = params_with()
    del params["featurize"]["top_k"]
    with pytest.raises(InputDataError, match=r"^params\.yaml: featurize: missing keys \['top_k'\]"):
        from_params(featurize.FeaturizeConfig, params)


@pytest.mark.parametrize("missing, expected", [
    ("clip", r"clip: no backbone \(open_clip_config\.json \+ open_clip_model\.safetensors\); "
             r"run `dvc repro base_clip`"),
    ("knowledge.parquet", r"knowledge\.parquet: not found; run `dvc repro validate`"),
])
def test_missing_inputs_are_one_clear_error(stage, tmp_path, missing, expected):
    inputs = {name: stage.root / name for name in ("clip", "captions.parquet", "knowledge.parquet")}
    inputs[missing] = tmp_path / missing
    with pytest.raises(InputDataError, match=expected):
        featurize.run(config(), backbone_dir=inputs["clip"], captions_path=inputs["captions.parquet"],
                      knowledge_path=inputs["knowledge.parquet"], out_dir=tmp_path / "features",
                      report_path=tmp_path / "featurize.json")


@pytest.mark.slow
def test_failed_flow_exits_with_one_line(prefect_api_url, stage, tmp_path):
    shutil.copytree(stage.root / "clip", tmp_path / paths.BASE_CLIP)
    (tmp_path / paths.CAPTIONS).parent.mkdir(parents=True)
    shutil.copy(stage.root / "captions.parquet", tmp_path / paths.CAPTIONS)
    schemas.write(broken(stage.knowledge, "missing"), schemas.KNOWLEDGE, tmp_path / paths.KNOWLEDGE)
    params = yaml.safe_load((Path(__file__).parent.parent / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    finished = subprocess.run([sys.executable, "-m", "flows.featurize"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env=os.environ | {"PREFECT_API_URL": prefect_api_url})
    assert finished.returncode == 1
    assert "Traceback" not in finished.stderr
    assert finished.stderr.strip().splitlines()[-1].startswith(
        f"featurize: {paths.KNOWLEDGE}: no row for 3 captions of {paths.CAPTIONS} (demo_00000#0, ")
