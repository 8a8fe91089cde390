"""Training stages 1/2 and evaluation on a tiny CLIP: resume after kill -9, determinism, DDP, modes, reports."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tasks import base_clip, featurize, paths, schemas
from tasks.config import InputDataError, from_params
from tasks.rerank.scores import captions_of_other_images, knowledge_effect
from tasks.retrieval import recalls
from tasks.train.batches import neighbourhood_captions, sample_negatives
from tasks.train.config import TrainConfig
from tests.conftest import merged, params_with
from tests.small_demo import TINY_CLIP, knowledge_from_truth, write_demo

pytestmark = pytest.mark.slow  # every test trains in subprocesses on a tiny CLIP: minutes

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS = params_with(
    prompt={"injection_layer": None, "n_visual_prompts": 2, "adapter_dim": 16, "triplet_layers": 1},
    train={"negatives": "cross", "cross_negatives": 2, "batch_size": 8, "device": "cpu", "checkpoint_every": 2,
           "select_best": False,
           "stage1": {"epochs": 2, "lr": 0.003, "weight_decay": 0.0, "warmup_steps": 2},
           "stage2": {"epochs": 1, "lr": 0.001, "weight_decay": 0.0, "warmup_steps": 0}},
    evaluate={"device": "cpu", "batch_size": 64, "report_queries": 4},
)


@pytest.fixture(scope="module")
def features_project(tmp_path_factory) -> Path:
    """A folder laid out like the repository after `featurize`: tiny backbone, features, knowledge."""
    root = tmp_path_factory.mktemp("trained")
    captions_path, truth = write_demo(root / "data/interim", n_images=32)
    captions = schemas.read(captions_path, schemas.CAPTIONS)
    schemas.write(knowledge_from_truth(captions, truth), schemas.KNOWLEDGE, root / "data/processed/knowledge.parquet")
    clip = from_params(base_clip.ClipConfig, params_with(clip={
        "model": TINY_CLIP, "pretrained": "scratch", "device": "cpu",
        "scratch": {"epochs": 1, "batch_size": 16, "corpus": "train", "scene_supervision": 0.0}}))
    base_clip.run(clip, captions_path=captions_path, out_dir=root / "models/base_clip",
                  report_path=root / "reports/base_clip.json")
    features = from_params(featurize.FeaturizeConfig, params_with(featurize={"device": "cpu"}, llm={"max_triplets": 4}))
    featurize.run(features, backbone_dir=root / "models/base_clip", captions_path=captions_path,
                  knowledge_path=root / "data/processed/knowledge.parquet", out_dir=root / "data/features",
                  report_path=root / "reports/featurize.json")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return root


def copy_project(source: Path, target: Path, **train) -> Path:
    shutil.copytree(source, target)
    params = yaml.safe_load((target / "params.yaml").read_text())
    (target / "params.yaml").write_text(yaml.safe_dump(merged(params, {"train": train})))
    return target


def python(*args: str, cwd: Path, **popen) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out


def train_and_evaluate(root: Path) -> dict:
    for stage in ("1", "2"):
        finish(python("-m", "tasks.train.stage", stage, cwd=root))
    finish(python("-c", "from tasks.evaluate import stage; from tasks.config import load_params; "
                        "stage.run(load_params(), progress=False)", cwd=root))
    return json.loads((root / "metrics/eval.json").read_text())


def without_timings(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("seconds", "prefix_seconds", "resumed_from_step")}


def test_kill_9_resumes_and_the_same_seed_gives_the_same_result(features_project, tmp_path):
    straight = copy_project(features_project, tmp_path / "straight", select_best=True)
    resumed = copy_project(features_project, tmp_path / "resumed", select_best=True)
    straight_eval = train_and_evaluate(straight)

    running = python("-m", "tasks.train.stage", "1", cwd=resumed)
    deadline = time.monotonic() + 240
    while not list((resumed / "checkpoints/stage1").glob("step-*/position.json")):
        assert running.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.05)
    running.send_signal(signal.SIGKILL)
    running.wait()
    assert not (resumed / "models/stage1").exists()
    resumed_eval = train_and_evaluate(resumed)

    stage1 = json.loads((resumed / "metrics/train_stage1.json").read_text())
    assert stage1["resumed_from_step"] >= 2
    assert not (resumed / "checkpoints/stage1").exists()  # a finished run leaves nothing to resume
    logged = (resumed / "dvclive/train_stage1/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert len(logged) - 1 >= stage1["steps"]  # the plot continued across the kill (header + a row per step)
    for stage in ("stage1", "stage2"):
        a = load_file(straight / "models" / stage / "model.safetensors")
        b = load_file(resumed / "models" / stage / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a), stage
    assert without_timings(json.loads((straight / "metrics/train_stage1.json").read_text())) == without_timings(stage1)
    assert without_timings(straight_eval) == without_timings(resumed_eval)
    twins = straight_eval["twin_view"]  # the demo's images: R@1 within twin groups, every pair in a group scored
    assert twins["pairs"] == 20 * straight_eval["images"] and set(twins["reranked"]) == {"i2t_r1", "t2i_r1"}


def test_select_best_keeps_the_weights_with_the_best_val_rsum(features_project, tmp_path):
    root = copy_project(features_project, tmp_path / "best", select_best=True, score_batch_size=64,
                        stage1={"epochs": 3, "lr": 0.01, "warmup_steps": 1})
    finish(python("-m", "tasks.train.stage", "1", cwd=root))
    summary = json.loads((root / "metrics/train_stage1.json").read_text())
    validated = {h["epoch"]: h["val"]["rsum"] for h in summary["history"] if "val" in h}
    assert sorted(validated) == [1, 2, 3]  # stage 1 starts from random prompts: no contender
    best = summary["selected"]
    assert best["rsum"] == max(validated.values()) == validated[best["epoch"]] == summary["val"]["rsum"]
    assert not (root / "checkpoints/stage1").exists()
    finish(python("-m", "tasks.train.stage", "2", cwd=root))
    stage2 = json.loads((root / "metrics/train_stage2.json").read_text())
    assert stage2["history"][0] == {"epoch": 0, "val": summary["val"]}  # stage 1's model competes in stage 2
    assert stage2["selected"]["rsum"] == max(h["val"]["rsum"] for h in stage2["history"])

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"].update(split="val", model="models/stage1")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    finish(python("-c", "from tasks.evaluate import stage; from tasks.config import load_params; "
                        "stage.run(load_params(), progress=False)", cwd=root))
    evaluated = json.loads((root / "metrics/eval.json").read_text())
    assert evaluated["reranked"]["rsum"] == best["rsum"]  # the saved model is the selected one


def test_batch_cross_scores_each_image_under_the_scored_captions_knowledge(features_project):
    from model import Objective, build_model
    from tasks.backbone import load_backbone
    from tasks.rerank.features import FeatureSplit
    from tasks.rerank.prefixes import PrefixSource
    from tasks.train.batches import paired_batch

    clip, preprocess, _ = load_backbone(features_project / "models/base_clip", torch.device("cpu"))
    model = build_model({"prompt": PARAMS["prompt"]}, clip_model=clip).eval()
    split = FeatureSplit.load("train", features_project / "data/features")
    source = PrefixSource(model, preprocess, split.images["image_path"].tolist(), torch.device("cpu"), None, "")
    batch = paired_batch(split, source, np.arange(5), torch.device("cpu"))
    with torch.no_grad():
        crossed = Objective(model, ("contrastive",), 0.2, "batch_cross").cross_conditioned_scores(batch)
        paired, _, _, _ = Objective(model, ("contrastive",), 0.2, "paired").global_scores(batch)
        for b, c in ((0, 0), (1, 3), (4, 2)):
            expected = model.score_from_prefix(batch.prefix.index(torch.tensor([b])),
                                               batch.knowledge.index(torch.tensor([c])), batch.text[[c]])
            assert torch.allclose(crossed[b, c], expected[0], atol=1e-4)  # batched vs single: rounding
    assert torch.allclose(crossed.diagonal(), paired.diagonal(), atol=1e-4)
    assert (crossed - paired).abs().max() > 1e-3  # off the diagonal the knowledge differs


def test_knowledge_effect_is_zero_without_knowledge(features_project):
    from model import build_model
    from tasks.backbone import load_backbone
    from tasks.rerank.features import FeatureSplit
    from tasks.rerank.prefixes import PrefixSource

    clip, preprocess, _ = load_backbone(features_project / "models/base_clip", torch.device("cpu"))
    split = FeatureSplit.load("train", features_project / "data/features")
    effects = {}
    for name, switches in (("full", {}), ("none", {"use_triplets": False, "use_states": False})):
        model = build_model({"prompt": PARAMS["prompt"] | switches}, clip_model=clip).eval()
        source = PrefixSource(model, preprocess, split.images["image_path"].tolist(), torch.device("cpu"), None, "")
        effects[name] = knowledge_effect(model, source, split, 16, torch.device("cpu"), seed=0, max_pairs=40)
    assert effects["full"]["pairs"] == effects["none"]["pairs"] == 40
    assert effects["none"]["mean_abs_change"] == 0.0  # visual prompts alone: the knowledge cannot move the score
    assert effects["full"]["mean_abs_change"] > 1e-4 and effects["full"]["score_std"] > 0


def test_the_swapped_knowledge_comes_from_another_image():
    image_row = np.array([0, 0, 0, 1, 1, 2])
    captions = np.arange(6)
    for seed in range(20):
        kept, others = captions_of_other_images(image_row, captions, np.random.default_rng(seed))
        assert list(kept) == list(captions) and (image_row[others] != image_row[kept]).all()
    kept, others = captions_of_other_images(np.zeros(4, dtype=int), np.arange(4), np.random.default_rng(0))
    assert len(kept) == len(others) == 0  # one image: nothing to swap with


def test_cross_negatives_come_from_the_best_ranked_wrong_candidates():
    candidates = np.array([[7, 1, 2, 3, 4, 5]])  # zero-shot order, best first
    valid = np.array([[False, True, True, False, True, True]])  # 7 and 3 are the anchor's own
    for seed in range(20):
        chosen, ok = sample_negatives(candidates, valid, 2, 3, np.random.default_rng(seed))
        assert ok.all() and set(chosen[0]) <= {1, 2, 4} and len(set(chosen[0])) == 2
    chosen, ok = sample_negatives(candidates, valid, 4, 3, np.random.default_rng(0))
    assert set(chosen[0][ok[0]]) == {1, 2, 4} and ok.sum() == 3  # fewer eligible than asked: padded, invalid
    chosen, ok = sample_negatives(candidates, valid, 4, None, np.random.default_rng(0))
    assert set(chosen[0][ok[0]]) == {1, 2, 4, 5} and ok.all()


def test_neighbourhood_batches_bring_each_seed_captions_of_its_near_miss_images(features_project):
    from tasks.rerank.features import FeatureSplit

    split = FeatureSplit.load("train", features_project / "data/features")
    image_row = split.image_row
    captions_of_image = [np.flatnonzero(image_row == image) for image in range(len(split.images))]
    seeds = np.array([0, 7, 12])
    for seed in range(5):
        rows = neighbourhood_captions(split, seeds, 3, 4, captions_of_image, np.random.default_rng(seed))
        assert len(rows) == len(seeds) * 4 and list(rows[::4]) == list(seeds)
        for i, anchor in enumerate(seeds):
            near_misses = [image for image in np.asarray(split.topk_t2i[anchor]) if image != image_row[anchor]][:4]
            picked = image_row[rows[4 * i + 1:4 * i + 4]]
            assert set(picked) <= set(near_misses) and len(set(picked)) == 3


def test_neighbourhood_batches_change_what_stage_one_learns(features_project, tmp_path):
    weights = {}
    for neighbours in (0, 3):
        root = copy_project(features_project, tmp_path / f"n{neighbours}", negatives="batch_cross",
                            batch_neighbours=neighbours, negative_pool=None, stage1={"epochs": 1, "lr": 0.003})
        finish(python("-m", "tasks.train.stage", "1", cwd=root))
        summary = json.loads((root / "metrics/train_stage1.json").read_text())
        assert summary["batch_neighbours"] == neighbours and np.isfinite(summary["final_loss"])
        weights[neighbours] = load_file(root / "models/stage1/model.safetensors")
    assert not all(torch.equal(weights[0][n], weights[3][n]) for n in weights[0])


@pytest.mark.parametrize("mode", ["one_stage", "combined"])
def test_single_stage_modes_pass_stage_one_on(features_project, tmp_path, mode):
    root = copy_project(features_project, tmp_path / mode, mode=mode, stage1={"epochs": 1, "lr": 0.003})
    for stage in ("1", "2"):
        finish(python("-m", "tasks.train.stage", stage, cwd=root))
    assert json.loads((root / "metrics/train_stage2.json").read_text())["skipped"] == f"train.mode is {mode}"
    stage1 = load_file(root / "models/stage1/model.safetensors")
    stage2 = load_file(root / "models/stage2/model.safetensors")
    assert all(torch.equal(stage1[name], stage2[name]) for name in stage1)


def test_each_kind_of_negatives_trains_differently(features_project, tmp_path):
    weights = {}
    for negatives in ("paired", "consistent", "batch_cross", "cross"):
        root = copy_project(features_project, tmp_path / negatives, negatives=negatives, stage1={"epochs": 1, "lr": 0.003})
        finish(python("-m", "tasks.train.stage", "1", cwd=root))
        summary = json.loads((root / "metrics/train_stage1.json").read_text())
        assert summary["negatives"] == negatives and np.isfinite(summary["final_loss"])
        weights[negatives] = load_file(root / "models/stage1/model.safetensors")
    for first, second in itertools.combinations(weights, 2):
        assert not all(torch.equal(weights[first][n], weights[second][n]) for n in weights[first])


def test_augmented_training_crops_alike_in_every_run_and_caches_only_validation(features_project, tmp_path):
    weights = {}
    for run, workers in (("serial", 0), ("threads", 2)):
        root = copy_project(features_project, tmp_path / run, augment=True, crop_scale=[0.3, 1.0], workers=workers,
                            negatives="consistent", stage1={"epochs": 1, "lr": 0.003})
        finish(python("-m", "tasks.train.stage", "1", cwd=root))
        weights[run] = load_file(root / "models/stage1/model.safetensors")
        cached = [json.loads((folder / "complete.json").read_text()) for folder in (root / paths.PREFIX_CACHE).iterdir()]
        val_images = schemas.read(root / "data/features/val/images.parquet", schemas.FEATURE_IMAGES)["image_path"]
        assert [entry["images"] for entry in cached] == [hashlib.sha256("\n".join(val_images).encode()).hexdigest()]
    assert all(torch.equal(weights["serial"][n], weights["threads"][n]) for n in weights["serial"])
    root = copy_project(features_project, tmp_path / "plain", negatives="consistent", stage1={"epochs": 1, "lr": 0.003})
    finish(python("-m", "tasks.train.stage", "1", cwd=root))
    plain = load_file(root / "models/stage1/model.safetensors")
    assert not all(torch.equal(weights["serial"][n], plain[n]) for n in plain)  # the crops changed what it learnt


def test_max_steps_ends_the_stage_early_with_the_last_epochs_validation(features_project, tmp_path):
    root = copy_project(features_project, tmp_path / "capped", max_steps=3, stage1={"epochs": 2, "lr": 0.003})
    finish(python("-m", "tasks.train.stage", "1", cwd=root))
    summary = json.loads((root / "metrics/train_stage1.json").read_text())
    assert summary["steps"] == 3 and summary["epochs"] == 1
    assert [entry["epoch"] for entry in summary["history"]] == [1] and "val" in summary["history"][0]


def test_ddp_with_two_gloo_processes(features_project, tmp_path):
    root = copy_project(features_project, tmp_path / "ddp", processes=2, stage1={"epochs": 1, "lr": 0.003})
    finish(python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tasks.train.stage", "1",
                  cwd=root), timeout=400)
    summary = json.loads((root / "metrics/train_stage1.json").read_text())
    assert summary["processes"] == 2
    n_train = len(schemas.read(root / "data/features/train/captions.parquet", schemas.FEATURE_CAPTIONS))
    assert summary["steps"] == n_train // (8 * 2)  # each process takes its own share of every epoch
    assert (root / "models/stage1/model.safetensors").is_file()


def test_two_machines_meet_at_the_rendezvous_and_node_zero_keeps_the_results(features_project, tmp_path,
                                                                               prefect_api_url):
    """Two "machines" on this one: node 0 runs the stage flow, node 1 the worker command; 1 process each."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = copy_project(features_project, tmp_path / "nodes", nnodes=2, rdzv_endpoint=f"127.0.0.1:{port}",
                        stage1={"epochs": 1, "lr": 0.003})
    node_one = python("-m", "flows.training", "1", "--node-rank", "1", cwd=root)
    node_zero = subprocess.Popen([sys.executable, "-m", "flows.train_stage1"], cwd=root, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=os.environ | {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
                                                   "PREFECT_API_URL": prefect_api_url})
    finish(node_zero, timeout=400)
    finish(node_one, timeout=60)
    summary = json.loads((root / "metrics/train_stage1.json").read_text())
    n_train = len(schemas.read(root / "data/features/train/captions.parquet", schemas.FEATURE_CAPTIONS))
    assert summary["processes"] == 2 and summary["steps"] == n_train // (8 * 2)
    assert (root / "models/stage1/model.safetensors").is_file()


def test_torchrun_commands_of_one_and_of_several_machines():
    from flows.training import torchrun_command

    one = from_params(TrainConfig, params_with(train={"processes": 8}))
    assert torchrun_command(1, one, "params.yaml")[3:5] == ["--standalone", "--nproc_per_node=8"]
    several = from_params(TrainConfig, params_with(train={"processes": 8, "nnodes": 4, "rdzv_endpoint": "gpu1:29500"}))
    assert torchrun_command(2, several, "p.yaml", node_rank=3)[3:] == [
        "--nnodes=4", "--node_rank=3", "--master_addr=gpu1", "--master_port=29500", "--nproc_per_node=8",
        "-m", "tasks.train.stage", "2", "--params", "p.yaml"]


def test_stage_two_then_evaluation_of_zero_shot_and_reranked_side_by_side(features_project, tmp_path):
    root = copy_project(features_project, tmp_path / "eval")
    result = train_and_evaluate(root)
    stage1 = load_file(root / "models/stage1/model.safetensors")
    stage2 = load_file(root / "models/stage2/model.safetensors")
    changed = {name for name in stage1 if not torch.equal(stage1[name], stage2[name])}
    assert changed and all(name.startswith("interaction.") for name in changed)  # stage 2 trains AIM only

    keys = {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"}
    assert set(result["zero_shot"]) == keys and set(result["reranked"]) == keys
    test = root / "data/features/test"
    image_row = schemas.read(test / "captions.parquet", schemas.FEATURE_CAPTIONS)["image_row"].to_numpy()
    assert result["zero_shot"] == recalls(np.load(test / "topk_i2t.npy"), np.load(test / "topk_t2i.npy"), image_row)
    assert result["split"] == "test" and result["captions"] == 5 * result["images"]
    report = (root / "reports/retrieval.html").read_text()
    assert "data:image/png;base64," in report and "http://" not in report and "https://" not in report
    assert report.count("<section>") == 8  # report_queries per direction
    assert (root / "plots/recall.csv").read_text().startswith("metric,method,recall")


@pytest.mark.parametrize("train, message", [({"mode": "three_stage"}, "train.mode"),
                                            ({"negatives": "random"}, "train.negatives"),
                                            ({"stage1": {"epochs": 1}}, "lr"),
                                            ({"learning_rate": 1}, "unknown keys"),
                                            ({"negative_pool": 1}, "negative_pool"),
                                            ({"batch_neighbours": 8}, "batch_neighbours"),
                                            ({"nnodes": 2}, r"train\.rdzv_endpoint: train\.nnodes is 2"),
                                            ({"nnodes": 2, "rdzv_endpoint": "gpu1"}, "got 'gpu1'")])
def test_bad_train_params_are_named(train, message):
    params = yaml.safe_load(yaml.safe_dump(PARAMS))
    params["train"].update(train)
    with pytest.raises(InputDataError, match=message):
        from_params(TrainConfig, params)
