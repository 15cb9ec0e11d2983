"""examples/qwen2vl_*.yaml and tiny_*: every key is LLaMA-Factory's or the plugin's, strategies differ by one line."""

import json
from pathlib import Path

import pytest
import yaml

from dyncot_plugin.config import parse_dyncot_args, split_args

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "examples").glob("qwen2vl_*.yaml")) + sorted((ROOT / "examples").glob("tiny_*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_in_llamafactory(recipe):
    from llamafactory.hparams.parser import _parse_train_args

    config = yaml.safe_load(recipe.read_text())
    rest, dyncot = split_args(config)
    parse_dyncot_args(dyncot)
    info = json.loads((ROOT / "data_info" / "dataset_info.json").read_text())
    for key in ("dataset", "eval_dataset"):
        for name in str(config.get(key) or "").split(","):
            assert not name or name in info, f"{recipe.name}: dataset {name} not in data_info/dataset_info.json"
    if "deepspeed" in config:
        assert (ROOT / config["deepspeed"]).is_file()
    _parse_train_args({**rest, "bf16": False, "deepspeed": None})  # raises on an unknown key


def test_paper_recipe_and_its_baselines_differ_only_in_the_strategy():
    load = lambda name: yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())  # noqa: E731
    dyncot = load("qwen2vl_dyncot")
    assert dyncot["model_name_or_path"] == "Qwen/Qwen2-VL-2B-Instruct" and dyncot["finetuning_type"] == "full"
    assert dyncot["deepspeed"] == "examples/deepspeed/ds_z3.json" and dyncot["learning_rate"] == 5.0e-5
    assert dyncot["num_train_epochs"] == 5.0 and dyncot["dyncot_gamma"] == 0.4
    for baseline in ("sft", "cot", "multitask"):
        other = load(f"qwen2vl_{baseline}")
        differing = {k for k in set(dyncot) | set(other) if dyncot.get(k) != other.get(k)}
        assert differing == {"dyncot_strategy", "dyncot_gamma", "output_dir"} - ({"dyncot_gamma"} if "dyncot_gamma" in other else set())
        assert other["dyncot_strategy"] == baseline
