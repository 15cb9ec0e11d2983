"""Every file in examples/: recipes parse in LLaMA-Factory and the plugin, name datasets and DeepSpeed configs that
exist, GPU training recipes resume, prediction recipes go through the plugin, siblings differ only where they say."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from dyncot_plugin.config import parse_dyncot_args, split_args

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FILES = sorted(p for p in EXAMPLES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
RECIPES = [p for p in FILES if p.suffix == ".yaml"]
DEEPSPEED = [p for p in FILES if p.parent.name == "deepspeed" and p.suffix == ".json"]
SCRIPTS = [p for p in FILES if p.suffix == ".sh"]
# Owned by the CPU demo (tiny random models, outputs/); every other training recipe is a GPU recipe.
CPU_DEMO = {"tiny_dyncot_cpu.yaml", "tiny_predict_cpu.yaml", "tiny_synth_dyncot_cpu.yaml",
            "tiny_synth_predict_cpu.yaml"}


def load(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def is_predict(config: dict) -> bool:
    return bool(config.get("do_predict")) and bool(config.get("predict_with_generate"))


def test_every_file_in_examples_is_checked_here():
    unknown = [p.relative_to(ROOT) for p in FILES if p not in RECIPES + DEEPSPEED + SCRIPTS]
    assert not unknown, f"add a check for {unknown} to tests/test_recipes.py"
    names = {p.name for p in RECIPES}
    new = {f"{m}_{k}.yaml" for m in ("qwen2_5vl_7b", "qwen3vl_8b") for k in ("dyncot", "dyncot_lora", "predict")}
    assert new <= names
    assert DEEPSPEED and SCRIPTS


@pytest.fixture(scope="module")
def scienceqa_info(tmp_path_factory) -> dict:
    """dataset_info.json as `dyncot-data convert-scienceqa` + `build-stage2` (train and test) write it."""
    from dyncot_plugin.tasks.scienceqa import convert as sqa
    from dyncot_plugin.tasks.scienceqa.stage2 import build_stage2

    spec = importlib.util.spec_from_file_location("sqa_raw", ROOT / "tests" / "fixtures" / "scienceqa" / "raw.py")
    raw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(raw)
    tmp = tmp_path_factory.mktemp("sqa")
    paths = raw.build_raw(tmp / "raw")
    data = tmp / "data"
    sqa.convert(paths["problems"], paths["splits"], data, image_dir=paths["image_dir"], captions_path=paths["captions"])
    build_stage2(data, "train")
    (tmp / "p.jsonl").write_text("".join(json.dumps({"id": pid, "predict": "r"}) + "\n" for pid in raw.TEST_IDS))
    build_stage2(data, "test", predictions=tmp / "p.jsonl")
    return json.loads((data / "dataset_info.json").read_text())


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_and_names_what_exists(recipe, scienceqa_info):
    from llamafactory.data.template import TEMPLATES, ReasoningTemplate
    from llamafactory.extras.constants import DEFAULT_TEMPLATE
    from llamafactory.hparams.parser import _parse_train_args

    config = yaml.safe_load(recipe.read_text())
    rest, dyncot = split_args(config)
    args = parse_dyncot_args(dyncot)  # raises on an unknown or invalid dyncot_* key
    # commented-out plugin keys are offered to users as one-line switches: they must parse too
    for key, value in re.findall(r"^# (dyncot_\w+): (\S+)", recipe.read_text(), re.M):
        parse_dyncot_args({**dyncot, key: yaml.safe_load(value)})
    if config["dataset_dir"] == "data_info":
        info = json.loads((ROOT / "data_info" / "dataset_info.json").read_text())
    elif config["dataset_dir"] == "outputs/demo/data":  # written by demo_cpu.sh: dyncot-data synth-demo-data
        from dyncot_plugin.tasks.mmkp.synthetic_demo import EVAL_NAME, TRAIN_NAME

        info = {TRAIN_NAME: {}, EVAL_NAME: {}}
    else:
        assert config["dataset_dir"] == "data/scienceqa", recipe.name
        info = scienceqa_info
    for key in ("dataset", "eval_dataset"):
        for name in str(config.get(key) or "").split(","):
            assert not name or name.strip() in info, f"{recipe.name}: dataset {name} not in {config['dataset_dir']}"
    if "deepspeed" in config:
        assert (ROOT / config["deepspeed"]).is_file()
    # the template is LLaMA-Factory's own for the hub model, and not a reasoning one where the plugin runs
    template = TEMPLATES[config["template"]]
    hub_name = str(config["model_name_or_path"]).split("/")[-1]
    if str(config["model_name_or_path"]).count("/") == 1 and hub_name in DEFAULT_TEMPLATE:
        assert config["template"] == DEFAULT_TEMPLATE[hub_name], recipe.name
    if dyncot:
        assert not isinstance(template, ReasoningTemplate), recipe.name
    if is_predict(config) and recipe.name not in CPU_DEMO:  # the demo's recipes belong to examples/demo_cpu.sh
        assert args.dyncot_think == "auto" and dyncot.get("dyncot_think") == "auto", recipe.name
    _parse_train_args({**rest, "bf16": False, "deepspeed": None})  # HfArgumentParser: raises on an unknown key


@pytest.mark.parametrize("recipe", [p for p in RECIPES if p.name not in CPU_DEMO], ids=lambda p: p.name)
def test_gpu_recipes_resume_and_predictions_use_the_plugin(recipe):
    config = yaml.safe_load(recipe.read_text())
    if config.get("do_train"):
        # LLaMA-Factory resumes from the last checkpoint-N of output_dir only without overwrite_output_dir, and
        # exactly (optimizer, scheduler, RNG) only when the checkpoint has more than the model
        assert config["overwrite_output_dir"] is False and config["save_only_model"] is False, recipe.name
        assert config.get("resume_from_checkpoint") is None, recipe.name
    else:
        assert is_predict(config) and config["dyncot_think"] == "auto", recipe.name


@pytest.mark.parametrize("path", DEEPSPEED, ids=lambda p: p.name)
def test_deepspeed_config_is_zero3_with_auto_batch_sizes_and_gathered_saves(path):
    config = json.loads(path.read_text())
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # a loadable model
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert config[key] == "auto"  # taken from the recipe by the HF integration
    assert any(load(p.name).get("deepspeed") == f"examples/deepspeed/{path.name}" for p in RECIPES)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_valid_bash_and_name_recipes_that_exist(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    for name in re.findall(r"examples/([\w.-]+\.yaml)", script.read_text()):
        assert (EXAMPLES / name).is_file(), f"{script.name} names examples/{name}"


def differing(a: dict, b: dict) -> set[str]:
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


def test_paper_recipe_and_its_baselines_differ_only_in_the_strategy():
    dyncot = load("qwen2vl_dyncot.yaml")
    assert dyncot["model_name_or_path"] == "Qwen/Qwen2-VL-2B-Instruct" and dyncot["finetuning_type"] == "full"
    assert dyncot["deepspeed"] == "examples/deepspeed/ds_z3.json" and dyncot["learning_rate"] == 5.0e-5
    assert dyncot["num_train_epochs"] == 5.0 and dyncot["dyncot_gamma"] == 0.4
    for baseline in ("sft", "cot", "multitask"):
        other = load(f"qwen2vl_{baseline}.yaml")
        assert differing(dyncot, other) == {"dyncot_strategy", "dyncot_gamma", "output_dir"}
        assert other["dyncot_strategy"] == baseline


def test_headline_7b_recipes_and_their_qwen3_vl_siblings():
    full = load("qwen2_5vl_7b_dyncot.yaml")
    assert full["model_name_or_path"] == "Qwen/Qwen2.5-VL-7B-Instruct" and full["template"] == "qwen2_vl"
    assert full["dyncot_strategy"] == "dynamic" and full["dyncot_gamma"] == 0.4
    assert full["finetuning_type"] == "full" and full["deepspeed"] == "examples/deepspeed/ds_z3.json"
    two_b = load("qwen2vl_dyncot.yaml")
    # same method as the 2B recipe; the model, its memory-bound batch split and its learning rate differ
    assert differing(full, two_b) == {
        "model_name_or_path", "output_dir", "per_device_train_batch_size", "gradient_accumulation_steps",
        "learning_rate",
    }
    per_gpu = lambda c: c["per_device_train_batch_size"] * c["gradient_accumulation_steps"]  # noqa: E731
    assert per_gpu(full) == per_gpu(two_b) == 16
    lora = load("qwen2_5vl_7b_dyncot_lora.yaml")
    assert lora["finetuning_type"] == "lora" and "deepspeed" not in lora
    assert differing(full, lora) == {"finetuning_type", "lora_rank", "lora_target", "deepspeed", "learning_rate",
                                     "output_dir"}
    for name in ("dyncot", "dyncot_lora", "predict"):
        qwen25, qwen3 = load(f"qwen2_5vl_7b_{name}.yaml"), load(f"qwen3vl_8b_{name}.yaml")
        assert qwen3["template"] == "qwen3_vl_nothink"  # `qwen3_vl` is a reasoning template: refused
        assert differing(qwen25, qwen3) == {"model_name_or_path", "template", "output_dir"}, name
    predict = load("qwen2_5vl_7b_predict.yaml")
    assert predict["model_name_or_path"] == full["output_dir"] and predict["template"] == full["template"]
