"""Stage `base_clip` without Prefect: scratch training, weights files, open_clip tags, the saved local-dir."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import huggingface_hub
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tasks import backbone, base_clip, schemas
from tasks.config import InputDataError, from_params
from tests.conftest import PARAMS, merged, params_with
from tests.small_demo import TINY_CLIP, write_demo

# Contrastive training on the train split (params.yaml's demo backbone also learns the demo corpus's scenes).
SCRATCH = {"epochs": 2, "batch_size": 16, "warmup_steps": 2, "seed": 3, "corpus": "train", "scene_supervision": 0.0}


@pytest.fixture(scope="module")
def captions_path(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("demo"))[0]


def config(**clip) -> base_clip.ClipConfig:
    values = merged({"model": TINY_CLIP, "pretrained": "scratch", "device": "cpu", "scratch": SCRATCH}, clip)
    return from_params(base_clip.ClipConfig, params_with(clip=values))


def run(tmp_path: Path, captions_path: Path, cfg: base_clip.ClipConfig, name: str = "base_clip") -> dict:
    return base_clip.run(cfg, captions_path=captions_path, out_dir=tmp_path / name,
                         report_path=tmp_path / f"{name}.json")


def tiny_model(seed: int = 0) -> open_clip.CLIP:
    backbone.register_project_configs()
    torch.manual_seed(seed)
    return open_clip.create_model(TINY_CLIP)


def assert_same_weights(first: torch.nn.Module, second: torch.nn.Module) -> None:
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_scratch_training_is_seeded_and_reported(tmp_path, captions_path):
    first = run(tmp_path, captions_path, config(), "first")
    second = run(tmp_path, captions_path, config(), "second")
    other = run(tmp_path, captions_path, config(scratch=SCRATCH | {"seed": 4}), "other")

    assert first["weights_sha256"] == second["weights_sha256"] != other["weights_sha256"]
    assert (tmp_path / "first" / backbone.WEIGHTS_FILE).read_bytes() == \
        (tmp_path / "second" / backbone.WEIGHTS_FILE).read_bytes()
    report = json.loads((tmp_path / "first.json").read_text())
    assert report["source"] == {"kind": "scratch", **PARAMS["clip"]["scratch"], **SCRATCH}
    assert len(report["loss_per_epoch"]) == 2 and all(np.isfinite(report["loss_per_epoch"]))
    counts = report["parameters"]
    assert counts["visual"] + counts["text"] + counts["logit_scale"] == counts["total"] > 0
    val = schemas.read(captions_path, schemas.CAPTIONS).query("split == 'val'")
    zero_shot = report["val_zero_shot"]
    assert (zero_shot["images"], zero_shot["captions"]) == (val["image_id"].nunique(), len(val))
    assert all(0 <= zero_shot[key] <= 100 for key in ("i2t_r1", "t2i_r1", "i2t_r10", "t2i_r10"))
    assert report["seconds"] > 0


def test_saved_backbone_is_a_self_contained_open_clip_local_dir(tmp_path, captions_path):
    captions = schemas.read(captions_path, schemas.CAPTIONS)
    trained, _ = base_clip.train_from_scratch(TINY_CLIP, captions, config().scratch, torch.device("cpu"))
    backbone.save_backbone(trained, backbone.model_config(TINY_CLIP), tmp_path / "clip")

    saved = json.loads((tmp_path / "clip" / backbone.CONFIG_FILE).read_text())
    assert set(saved) == {"model_cfg", "preprocess_cfg"}
    assert saved["model_cfg"]["vision_cfg"]["image_size"] == 32 and saved["preprocess_cfg"]["size"] == [32, 32]
    # open_clip alone rebuilds it (no project config registered under that name is needed).
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'clip'}")
    assert_same_weights(model, trained)

    loaded, preprocess, tokenizer = backbone.load_backbone(tmp_path / "clip")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert isinstance(tokenizer, open_clip.SimpleTokenizer) and tokenizer.context_length == 32
    with Image.open(captions["image_path"].iloc[0]) as image:
        images = torch.stack([preprocess(image.convert("RGB"))] * 2)
    tokens = tokenizer(captions["caption"].iloc[:3].tolist())
    # Frozen like the loaded one: torch takes another (equally valid) attention path for parameters that need grads.
    trained.requires_grad_(False)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), trained.encode_image(images))
        assert torch.equal(loaded.encode_text(tokens), trained.encode_text(tokens))


def test_local_state_dict_files_load(tmp_path, captions_path):
    source = tiny_model(seed=1)
    state = source.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "weights.safetensors")
    # A training checkpoint: nested under "state_dict", saved from a DistributedDataParallel "module.".
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pt")

    for file in ("weights.safetensors", "ddp.pt"):
        model, model_cfg, source_info = backbone.create_pretrained(TINY_CLIP, str(tmp_path / file))
        assert_same_weights(model, source)
        assert source_info == {"kind": "file", "file": str(tmp_path / file),
                               "sha256": backbone.sha256_of(tmp_path / file)}
        assert model_cfg == backbone.model_config(TINY_CLIP)

    report = run(tmp_path, captions_path, config(pretrained=str(tmp_path / "weights.safetensors")))
    assert report["source"]["kind"] == "file" and "loss_per_epoch" not in report
    loaded, _, _ = backbone.load_backbone(tmp_path / "base_clip")
    assert_same_weights(loaded, source)


def test_pickled_modules_and_mismatched_weights_fail_naming_the_file(tmp_path):
    model = tiny_model()
    torch.save(model, tmp_path / "module.pt")
    state = model.state_dict()
    state["visual.proj"] = state["visual.proj"][:4]
    del state["text_projection"]
    torch.save(state, tmp_path / "mismatch.pth")
    (tmp_path / "garbage.safetensors").write_bytes(b"no tensors here")

    expected = {"module.pt": r"module\.pt: holds a pickled open_clip\.model\.CLIP, not a plain state dict.*refused",
                "mismatch.pth": r"mismatch\.pth: weights do not match clip\.model ViT-Tiny-Test: .*text_projection.*"
                                r"size mismatch for visual\.proj",
                "garbage.safetensors": r"garbage\.safetensors: not a readable safetensors file",
                "missing.pt": r"missing\.pt: file not found"}
    for file, message in expected.items():
        with pytest.raises(InputDataError, match=message) as failure:
            backbone.create_pretrained(TINY_CLIP, str(tmp_path / file))
        assert "\n" not in str(failure.value) and str(tmp_path / file) in str(failure.value)


def test_open_clip_tag_offline_fails_with_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    with pytest.raises(InputDataError, match=r"could not fetch the 'openai' weights of ViT-B-32 \(the Hugging Face "
                                             r"hub is offline: HF_HUB_OFFLINE=1\).*local \.safetensors/\.pt file"
                       ) as failure:
        backbone.create_pretrained("ViT-B-32", "openai")
    assert "\n" not in str(failure.value)


@pytest.mark.parametrize("clip, expected", [
    ({"model": "ViT-Nope"}, r"clip\.model: 'ViT-Nope' is neither an open_clip model .* \(ViT-Demo, ViT-Tiny-Test\)"),
    ({"model": "ViT-B-16-SigLIP"}, r"'ViT-B-16-SigLIP' has a timm vision tower, a Hugging Face tokenizer"),
    ({"model": "RN50"}, r"'RN50' has a ResNet vision tower"),
    ({"model": "hf-hub:timm/ViT-B-16-SigLIP"}, r"clip\.model: 'hf-hub:timm/ViT-B-16-SigLIP': give a model name"),
    ({"pretrained": "laion9b"}, r"'laion9b' is not an open_clip tag of ViT-Tiny-Test \(it has none\)"),
    ({"pretrained": "openai", "model": "ViT-B-32"}, r"could not fetch the 'openai' weights of ViT-B-32"),
    ({"device": "tpu"}, r"clip\.device: 'tpu' is not a device"),
    ({"scratch": {"epochs": 0}}, r"clip\.scratch\.epochs: must be >= 1"),
    ({"scratch": {"learning_rate": 1}}, r"clip\.scratch: unknown keys \['learning_rate'\]"),
    ({"pretrain": "openai"}, r"clip: unknown keys \['pretrain'\]"),
    ({"scratch": 5}, r"clip\.scratch: must be a mapping of settings, got 5 \(int\)"),
    ({"scratch": {"corpus": "web"}}, r"clip\.scratch\.corpus: 'web' is not one of train, demo"),
    ({"scratch": {"lr": "fast"}}, r"clip\.scratch\.lr: must be a number, got 'fast' \(str\)"),
    ({"model": None}, r"clip\.model: must be set \(null is not allowed here\)"),
    ({"scratch": {"corpus": "demo", "corpus_images": 2}}, r"clip\.scratch \(corpus demo\): n_images must be"),
    ({"scratch": {"scene_supervision": 1.0}}, r"scene_supervision: needs clip\.scratch\.corpus: demo"),
    ({"scratch": {"corpus": "demo", "scene_supervision": -1}}, r"clip\.scratch\.scene_supervision: must be >= 0"),
])
def test_bad_params_are_named(tmp_path, captions_path, monkeypatch, clip, expected):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(InputDataError, match=expected):
        run(tmp_path, captions_path, config(**clip))
    assert not (tmp_path / "base_clip").exists()


def test_scratch_needs_train_captions(tmp_path, captions_path):
    captions = schemas.read(captions_path, schemas.CAPTIONS)
    schemas.write(captions[captions["split"] == "test"], schemas.CAPTIONS, tmp_path / "test_only.parquet")
    with pytest.raises(InputDataError, match="no train captions to train clip.model 'ViT-Tiny-Test' from scratch"):
        run(tmp_path, tmp_path / "test_only.parquet", config())


def test_scratch_on_a_demo_corpus_needs_no_train_split_and_is_seeded(tmp_path, captions_path):
    captions = schemas.read(captions_path, schemas.CAPTIONS)
    schemas.write(captions[captions["split"] != "train"], schemas.CAPTIONS, tmp_path / "no_train.parquet")
    scratch = SCRATCH | {"epochs": 1, "corpus": "demo", "corpus_images": 16, "corpus_seed": 5}
    report = run(tmp_path, tmp_path / "no_train.parquet", config(scratch=scratch))
    assert report["source"]["corpus"] == "demo" and report["source"]["corpus_pairs"] == 16 * 5
    assert report["val_zero_shot"]["images"] == captions.loc[captions["split"] == "val", "image_id"].nunique()
    again = run(tmp_path, tmp_path / "no_train.parquet", config(scratch=scratch), "again")
    assert again["weights_sha256"] == report["weights_sha256"]  # the corpus is a pure function of its seed
    other = run(tmp_path, tmp_path / "no_train.parquet", config(scratch=scratch | {"corpus_seed": 6}), "other")
    assert other["weights_sha256"] != report["weights_sha256"]


def test_scene_labels_follow_the_twins(tmp_path):
    corpus = base_clip.demo_corpus(tmp_path, {"vision_cfg": {"image_size": 32}},
                                   replace(config().scratch, corpus="demo", corpus_images=8, corpus_seed=2))
    per_image = corpus.groupby("image_id")[list(base_clip.SCENE_COLUMNS)].agg(set)
    assert per_image.map(len).eq(1).all().all()  # every caption of an image has its image's labels
    base, role_swap, action_swap, action_role_swap = per_image.map(min).to_dict("records")[:4]
    assert (role_swap["agent"], role_swap["patient"]) == (base["patient"], base["agent"])
    assert role_swap["action"] == base["action"] != action_swap["action"] == action_role_swap["action"]
    assert (action_role_swap["agent"], action_role_swap["patient"]) == (base["patient"], base["agent"])


def test_scene_supervision_shapes_the_backbone_and_leaves_no_head(tmp_path, captions_path):
    scratch = SCRATCH | {"epochs": 2, "corpus": "demo", "corpus_images": 32, "corpus_seed": 5}
    plain = run(tmp_path, captions_path, config(scratch=scratch), "plain")
    supervised = run(tmp_path, captions_path, config(scratch=scratch | {"scene_supervision": 1.0}), "supervised")
    assert "scene_loss_per_epoch" not in plain
    scene_losses = supervised["scene_loss_per_epoch"]
    assert len(scene_losses) == 2 and all(np.isfinite(scene_losses))
    assert supervised["weights_sha256"] != plain["weights_sha256"]
    saved, _, _ = backbone.load_backbone(tmp_path / "supervised")  # open_clip's own keys only
    assert saved.state_dict().keys() == tiny_model().state_dict().keys()
