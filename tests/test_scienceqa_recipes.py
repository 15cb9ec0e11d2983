"""examples/scienceqa_*.yaml: every key is known to LLaMA-Factory or the plugin, MM-CoT training stays vanilla
LLaMA-Factory, predictions carry only `dyncot_think`, and every dataset they name is one that `convert-scienceqa` +
`build-stage2` write (tests/test_recipes.py checks every recipe in examples/ the same way)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fixtures.scienceqa import raw

from dyncot_plugin.config import parse_dyncot_args, split_args
from dyncot_plugin.tasks.scienceqa import convert as sqa
from dyncot_plugin.tasks.scienceqa.stage2 import build_stage2

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "examples").glob("scienceqa_*.yaml"))


def test_the_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"scienceqa_stage1.yaml", "scienceqa_stage2.yaml", "scienceqa_dyncot.yaml"} <= names
    assert {"scienceqa_stage1_predict.yaml", "scienceqa_stage2_predict.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses(recipe):
    from llamafactory.hparams.parser import _parse_train_args

    config = yaml.safe_load(recipe.read_text())
    assert config["template"] == "qwen2_vl" and config["stage"] == "sft"
    rest, dyncot = split_args(config)
    if recipe.name == "scienceqa_dyncot.yaml":
        args = parse_dyncot_args(dyncot)
        assert args.dyncot_strategy == "dynamic" and args.dyncot_gamma == 0.4
    elif config.get("do_predict"):
        # predictions go through the plugin for its generation (the model's own M-RoPE positions); nothing else
        assert dyncot == {"dyncot_think": "auto"}
        assert parse_dyncot_args(dyncot).dyncot_strategy == "sft"
    else:
        assert dyncot == {}  # the MM-CoT training recipes are vanilla LLaMA-Factory
    rest = {**rest, "bf16": False}  # CPU machines: bf16 would be refused, the rest is what we check
    _parse_train_args(rest)  # HfArgumentParser: raises on an unknown key


def test_recipe_datasets_are_the_ones_the_tools_write(tmp_path):
    paths = raw.build_raw(tmp_path / "raw")
    data = tmp_path / "data"
    sqa.convert(paths["problems"], paths["splits"], data, image_dir=paths["image_dir"], captions_path=paths["captions"])
    build_stage2(data, "train")
    ids = [{"id": pid, "predict": "r"} for pid in raw.TEST_IDS]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ids))
    build_stage2(data, "test", predictions=tmp_path / "p.jsonl")
    info = json.loads((data / "dataset_info.json").read_text())
    for recipe in RECIPES:
        config = yaml.safe_load(recipe.read_text())
        assert config["dataset_dir"] == "data/scienceqa"
        for key in ("dataset", "eval_dataset"):
            if key in config:
                assert config[key] in info, (recipe.name, config[key])
