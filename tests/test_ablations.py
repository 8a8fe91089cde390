"""Ablation presets: every override names a real parameter with a valid value, and the comparison table."""
from __future__ import annotations

import copy

import pytest

from model import PromptConfig
from tasks.ablations import EXPERIMENT_NAME, METRICS, PRESETS, table
from tasks.config import from_params
from tasks.featurize import FeaturizeConfig
from tasks.train.config import TrainConfig
from tests.conftest import PARAMS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_overrides_existing_params_with_valid_values(name):
    params = copy.deepcopy(PARAMS)
    for key, value in PRESETS[name][1].items():
        *path, leaf = key.split(".")
        section = params
        for part in path:
            section = section[part]
        assert leaf in section, f"{name}: {key} is not in params.yaml"
        section[leaf] = value
    for config in (PromptConfig, TrainConfig, FeaturizeConfig):
        from_params(config, params)


def test_experiment_names_carry_preset_and_time():
    match = EXPERIMENT_NAME.fullmatch("ablation-no_action_knowledge-20261123-171500")
    assert match and match["preset"] == "no_action_knowledge" and match["stamp"] == "20261123-171500"
    assert EXPERIMENT_NAME.fullmatch("ablation-full") is None


def test_table_lists_zero_shot_then_presets_in_order_and_what_is_missing():
    def result(base: float) -> dict:
        return {"zero_shot": {m: 10.0 for m in METRICS}, "reranked": {m: base for m in METRICS}}
    lines = table({"one_stage": result(30.0), "full": result(40.0)}).splitlines()
    assert lines[2].startswith("zero-shot CLIP")
    assert lines[3].startswith("full") and lines[3].rstrip().endswith("40.0")
    assert lines[4].startswith("one_stage")
    assert lines[-1].startswith("(not run yet:") and "no_state" in lines[-1]
