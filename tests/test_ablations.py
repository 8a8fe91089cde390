"""Presets: every override names a real parameter with a valid value, the flags DVC takes, and the table."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from model import PromptConfig
from tasks import ablations
from tasks.ablations import BASES, EXPERIMENT_NAME, METRICS, applied, overrides_of, presets
from tasks.base_clip import ClipConfig
from tasks.config import InputDataError, from_params, load_params
from tasks.featurize import FeaturizeConfig
from tasks.ingest.config import IngestConfig
from tasks.knowledge.config import LLMConfig
from tasks.train.config import TrainConfig
from tests.conftest import REPO_ROOT

KNOWN = presets(REPO_ROOT)
PARAMS_FILE = load_params(REPO_ROOT / "params.yaml")


@pytest.mark.parametrize("name", sorted(KNOWN))
@pytest.mark.parametrize("base", [None, *BASES])
def test_every_preset_sets_existing_params_to_valid_values(name, base, tmp_path):
    params = applied(PARAMS_FILE, overrides_of([base, name] if base else [name], KNOWN))
    if params["data"]["annotations"]:  # the data set's files are where the user puts them: stand-ins here
        (tmp_path / Path(params["data"]["annotations"]).name).write_text("{}")
        params["data"].update(annotations=str(tmp_path / Path(params["data"]["annotations"]).name),
                              image_root=str(tmp_path))
    for config in (IngestConfig, LLMConfig, ClipConfig, FeaturizeConfig, PromptConfig, TrainConfig):
        from_params(config, params)


def test_the_paper_tables_rows_are_presets_as_the_paper_defines_them():
    prompt_rows = {  # Table 2: triplet, hand-crafted triplet, state, visual prompts
        "table2-triplet": (True, "encoder", False, 0), "table2-handcrafted-triplet": (True, "template", False, 0),
        "table2-state": (False, None, True, 0), "table2-triplet-state": (True, "encoder", True, 0)}
    for name, (triplets, source, states, visual) in prompt_rows.items():
        prompt = applied(PARAMS_FILE, KNOWN[name].overrides)["prompt"]
        assert (prompt["use_triplets"], prompt["use_states"], prompt["n_visual_prompts"]) == (triplets, states, visual)
        assert source is None or prompt["triplet_source"] == source
    full = applied(PARAMS_FILE, KNOWN["full"].overrides)
    assert full["prompt"]["use_triplets"] and full["prompt"]["use_states"] and full["prompt"]["n_visual_prompts"] > 0
    assert applied(PARAMS_FILE, KNOWN["table3-no-action-knowledge"].overrides)["prompt"]["n_visual_prompts"] > 0
    assert KNOWN["table5-one-stage"].overrides == {"train.mode": "one_stage"}
    assert KNOWN["table5-combined"].overrides == {"train.mode": "combined"}


def test_the_paper_runs_train_with_the_official_recipe_even_after_the_demo():
    demo = applied(PARAMS_FILE, KNOWN["demo-cpu"].overrides)  # the workspace after `make demo`
    for run in ("flickr30k-vit-b-16", "coco-vit-b-16"):
        params = applied(PARAMS_FILE, KNOWN[run].overrides)
        train = params["train"]
        assert (train["optimizer"], train["stage1"]["lr"], train["stage1"]["epochs"], train["batch_size"],
                train["augment"], train["negatives"]) == ("sgd", 0.001, 3, 128, True, "consistent")
        assert (params["clip"]["model"], params["clip"]["pretrained"], params["featurize"]["top_k"]) == \
            ("ViT-B-16", "openai", 20)
        assert applied(demo, KNOWN[run].overrides)["train"] == train  # sets every key demo-cpu sets
    assert demo["train"]["batch_size"] < 128 and demo["train"]["optimizer"] == "adamw"


def test_flags_are_what_dvc_exp_run_takes_and_a_shell_keeps_whole():
    overrides = overrides_of(["flickr30k-vit-b-16"], KNOWN)
    words = shlex.split(ablations.flags(overrides))
    assert words[::2] == ["-S"] * len(overrides)
    assert dict(word.split("=", 1) for word in words[1::2])["llm.server.command"] == \
        overrides["llm.server.command"]
    listed = subprocess.run([sys.executable, "-m", "tasks.ablations", "flags", "table2-state", "--on", "demo-cpu"],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    assert "-S prompt.use_states=true" in listed and "-S train.batch_size=8" in listed


def test_a_preset_naming_an_unknown_parameter_is_refused_with_its_file(tmp_path):
    (tmp_path / "configs/experiments").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    (tmp_path / "configs/experiments/typo.yaml").write_text(yaml.safe_dump(
        {"description": "a typo", "set": {"prompt.use_tripplets": False}}))
    with pytest.raises(InputDataError, match=r"typo.yaml: set.prompt.use_tripplets: not a parameter of params.yaml"):
        presets(tmp_path)
    with pytest.raises(InputDataError, match="unknown presets"):
        overrides_of(["no-such-preset"], KNOWN)


def test_experiment_names_carry_preset_base_and_time():
    for base in (None, "demo-cpu"):
        match = EXPERIMENT_NAME.fullmatch(ablations.experiment_name("table3-no-action-knowledge", base))
        assert match and match["preset"] == "table3-no-action-knowledge" and match["base"] == base
    assert EXPERIMENT_NAME.fullmatch("ablation-full") is None


def test_summary_lists_zero_shot_then_presets_in_order_and_what_is_missing(tmp_path):
    def result(base: float, twin: float | None) -> dict:
        return {"experiment": f"ablation-x-{base}", "zero_shot": {m: 10.0 for m in METRICS},
                "reranked": {m: base for m in METRICS},
                "twin_view": None if twin is None else {"zero_shot": {"i2t_r1": 25.0, "t2i_r1": 26.0},
                                                        "reranked": {"i2t_r1": twin, "t2i_r1": twin + 2}},
                "knowledge_effect": {"pairs": 10, "mean_abs_change": base / 400, "score_std": 0.1}}
    order = ["full", "table2-state", "table5-one-stage"]
    summary = ablations.summary({"table5-one-stage": result(30.0, None), "full": result(40.0, 50.0)}, order, KNOWN,
                                "demo-cpu")
    assert list(summary["rows"]) == ["zero-shot", "full", "table5-one-stage"]
    assert summary["rows"]["zero-shot"]["twin_t2i_r1"] == 26.0 and summary["rows"]["zero-shot"]["rsum"] == 10.0
    assert summary["rows"]["full"]["twin_t2i_r1"] == 52.0 and summary["rows"]["full"]["knowledge_effect"] == 1.0
    assert summary["rows"]["table5-one-stage"]["twin_i2t_r1"] is None
    assert summary["rows"]["full"]["experiment"] == "ablation-x-40.0"
    assert summary["not_run"] == ["table2-state"]
    assert summary["commands"] == ["python -m tasks.ablations run --all --on demo-cpu",
                                   "python -m tasks.ablations table --json --on demo-cpu"]
    lines = ablations.table(summary).splitlines()
    assert lines[2].split()[0] == "zero-shot" and lines[2].split()[-3:] == ["25.0", "26.0", "-"]
    assert lines[3].split()[0] == "full" and lines[3].split()[-4:] == ["40.0", "50.0", "52.0", "1.000"]
    assert lines[-1] == "(not run yet: table2-state; `python -m tasks.ablations run table2-state --on demo-cpu`)"
    markdown = ablations.markdown_table(summary).splitlines()
    assert markdown[0].startswith("| preset | i2t_r1 |") and markdown[1] == "|---|" + "---:|" * 10
    assert markdown[3] == "| full | " + " | ".join(["40.0"] * 7 + ["50.0", "52.0", "1.000"]) + " |"
    assert markdown[-1] == lines[-1]
    ablations.write_summary(summary, tmp_path)
    assert json.loads((tmp_path / "metrics/ablations.json").read_text()) == summary
    plot = pd.read_csv(tmp_path / "plots/ablations.csv")
    assert plot["preset"].tolist() == ["zero-shot", "full", "table5-one-stage"]
    assert plot["twin_r1"].tolist()[:2] == [25.5, 51.0] and plot["rsum"].tolist() == [10.0, 40.0, 30.0]


def test_all_runs_the_paper_rows_first_and_run_needs_names_or_all():
    order = ablations.ablations(KNOWN)
    assert order[0] == "full" and not set(order) & set(BASES)
    tables = [i for i, name in enumerate(order) if name.startswith("table")]
    assert tables == list(range(1, len(tables) + 1))
    assert {"tomml-text-guided", "truth-knowledge"} <= set(order)
    refused = subprocess.run([sys.executable, "-m", "tasks.ablations", "run"], cwd=REPO_ROOT, capture_output=True,
                             text=True)
    assert refused.returncode != 0 and "--all" in refused.stderr


def test_run_names_the_presets_a_commit_during_the_run_left_behind_and_needs_git(tmp_path, monkeypatch, capsys):
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    git("init", "-q")
    git("commit", "-q", "--allow-empty", "-m", "before the run")
    started: list[str] = []

    def reproduce(stage, overrides, project_dir, experiment_name, isolated):  # the commit lands mid-run
        started.append(experiment_name)
        if len(started) == 1 and commit_during_run:
            git("commit", "-q", "--allow-empty", "-m", "committed while the first preset ran")

    monkeypatch.setattr(ablations.pipeline, "reproduce", reproduce)
    names = ["full", "table5-one-stage", "table3-concat"]
    commit_during_run = True
    ablations.run(names, KNOWN, "demo-cpu", tmp_path)
    warned = capsys.readouterr().out
    assert "HEAD moved" in warned and "python -m tasks.ablations run full --on demo-cpu\n" in warned
    commit_during_run = False
    ablations.run(names, KNOWN, "demo-cpu", tmp_path)
    assert len(started) == 6 and "HEAD moved" not in capsys.readouterr().out
    outside = tmp_path / "no-repository"
    outside.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # git must not find tmp_path's repository
    with pytest.raises(InputDataError, match="no-repository: DVC experiments need a git repository"):
        ablations.run(names, KNOWN, "demo-cpu", outside)
