"""One validator for what can be checked before the model loads (``dyncot_plugin.validate``): the command line (on the
arguments LLaMA-Factory parsed) and LlamaBoard (on the recipe dict it is about to start) get the same verdict and the
same message from it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from dyncot_plugin.config import CHOICES, FIELD_DOCS, KNOWN_KEYS, DynCotArguments, DynCotConfigError
from dyncot_plugin.testing.lf_runner import tiny_sft_config, write_sharegpt_dataset
from dyncot_plugin.testing.plugin_data import write_plugin_dataset
from dyncot_plugin.validate import Options, check_options, check_recipe


@pytest.fixture
def data(tmp_path) -> Path:
    """A dataset folder with `toy` (a CoT column) and `plain` (none declared)."""
    write_plugin_dataset(tmp_path / "data", "toy", n=2)
    write_sharegpt_dataset(tmp_path / "data", "plain", [
        {"messages": [{"role": "user", "content": "Post: hi"}, {"role": "assistant", "content": "hello"}]}
    ], with_images=False)
    return tmp_path / "data"


def _recipe(model_dir, data, dataset="toy", **keys) -> dict:
    return tiny_sft_config(model_dir, data, dataset, data.parent / "out", **keys)


def _verdict(fn):
    try:
        fn()
    except DynCotConfigError as err:
        return str(err)
    return None


CASES = [
    ({"dyncot_strategy": "cot"}, "plain", ("Dataset `plain`: dyncot_strategy=cot needs a CoT text per sample, but the "
     "dataset has no `cot` key under `columns` in dataset_info.json. Add the CoT column (`dyncot-data gen-cot`) or set "
     "`dyncot_missing_cot: sft`.")),
    ({"dyncot_strategy": "dynamic", "dyncot_missing_cot": "sft"}, "plain", None),
    ({"dyncot_strategy": "sft"}, "plain", None),
    ({"dyncot_strategy": "dynamic"}, "toy", None),
    ({"dyncot_strategy": "dynamic", "dyncot_target_cot_ratio": 0.5}, "toy,plain", "Dataset `plain`:"),
    ({"dyncot_strategy": "dynamic", "packing": True}, "toy", "cannot honour `packing`"),
    ({"dyncot_strategy": "multitask", "use_dft_loss": True}, "toy", "cannot honour `use_dft_loss`"),
    ({"dyncot_strategy": "dynamic", "train_on_prompt": True}, "toy", "cannot honour `train_on_prompt`"),
    ({"dyncot_strategy": "sft", "template": "qwen3_vl"}, "toy", "use `template: qwen3_vl_nothink`"),
    ({"dyncot_strategy": "cot", "predict_with_generate": True, "val_size": 0.5}, "toy",
     "cannot honour `predict_with_generate`"),
]


@pytest.mark.parametrize(("keys", "dataset", "expected"), CASES, ids=lambda x: str(x)[:40])
def test_the_recipe_and_the_parsed_arguments_get_the_same_verdict(tiny_model_dir, data, keys, dataset, expected):
    """LlamaBoard checks the recipe dict; the command line checks what LLaMA-Factory's parser made of it: same
    function, same message (or both pass)."""
    from llamafactory.hparams import get_train_args

    recipe = _recipe(tiny_model_dir, data, dataset, **keys)
    from_recipe = _verdict(lambda: check_recipe(recipe))
    rest = {k: v for k, v in recipe.items() if not k.startswith("dyncot_")}
    dyncot = DynCotArguments(**{k: v for k, v in recipe.items() if k.startswith("dyncot_")})
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(rest)
    from_cli = _verdict(lambda: check_options(dyncot, Options.parsed(model_args, data_args, training_args,
                                                                        finetuning_args)))
    assert from_recipe == from_cli
    if expected is None:
        assert from_recipe is None
    else:
        assert from_recipe is not None and expected in from_recipe


def test_keys_and_values_are_checked_as_the_command_line_checks_them(tiny_model_dir, data):
    with pytest.raises(DynCotConfigError, match="Did you mean `dyncot_gamma`"):
        check_recipe(_recipe(tiny_model_dir, data, dyncot_gama=0.3))
    with pytest.raises(DynCotConfigError, match="dyncot_gamma: got -1; expected a finite number >= 0"):
        check_recipe(_recipe(tiny_model_dir, data, dyncot_gamma=-1))
    with pytest.raises(DynCotConfigError, match="dyncot_target_cot_ratio steers the selection of dyncot_strategy=dyn"):
        check_recipe(_recipe(tiny_model_dir, data, dyncot_target_cot_ratio=0.5))
    assert check_recipe(_recipe(tiny_model_dir, data)) is None  # no dyncot_* key: the plugin stays out
    assert check_recipe(_recipe(tiny_model_dir, data, dyncot_gamma="0.3")).dyncot_gamma == 0.3  # as on the CLI


def test_a_refused_model_type_is_named_from_its_config(tmp_path, data):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "mllama"}')
    with pytest.raises(DynCotConfigError, match="cannot honour `model_type: mllama`"):
        check_recipe(_recipe(tmp_path / "m", data, dyncot_strategy="dynamic"))
    check_recipe(_recipe(tmp_path / "m", data, dyncot_strategy="cot"))  # one view: runs as LLaMA-Factory does
    check_recipe(_recipe("org/not-downloaded", data, dyncot_strategy="dynamic"))  # a hub id is not fetched


def test_a_prediction_run_may_lack_cot_and_an_eval_set_is_not_checked(tiny_model_dir, data):
    check_recipe(_recipe(tiny_model_dir, data, "plain", do_train=False, do_predict=True, predict_with_generate=True,
                         eval_dataset="plain", dyncot_think="never", dyncot_strategy="cot"))


def test_every_key_has_a_documented_meaning_and_choice_keys_are_validated_from_the_table():
    assert set(FIELD_DOCS) == set(KNOWN_KEYS) and all(len(text) > 20 for text in FIELD_DOCS.values())
    for key, allowed in CHOICES.items():
        DynCotArguments(**{key: allowed[-1]})
        with pytest.raises(DynCotConfigError, match=f"{key}: got 'bogus'; allowed values are {', '.join(allowed)}"):
            DynCotArguments(**{key: "bogus"})


def test_the_validator_imports_no_training_code_nor_torch():
    """LlamaBoard and the command line import it before anything else: the core only."""
    code = ("import sys, dyncot_plugin.validate; "
            "print(sorted(m for m in sys.modules if m.startswith(('torch', 'llamafactory', 'dyncot_plugin.train', "
            "'transformers'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert ast.literal_eval(out.strip()) == []
