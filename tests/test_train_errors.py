"""Bad input stops the run early with a message that names the dataset, the row and what was expected."""

import pytest

from dyncot_plugin.testing.lf_runner import LlamaFactoryRunError, run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import write_plugin_dataset

pytestmark = pytest.mark.slow


def _fails(tiny_model_dir, tmp_path, mutate=None, cot_rows=None, **overrides) -> str:
    write_plugin_dataset(tmp_path / "data", "bad", n=6, cot_rows=cot_rows, mutate=mutate)
    config = tiny_sft_config(tiny_model_dir, tmp_path / "data", "bad", tmp_path / "out", **overrides)
    with pytest.raises(LlamaFactoryRunError) as info:
        run_llamafactory("train", config, tmp_path)
    output = info.value.proc.stdout + info.value.proc.stderr
    assert "trainable params" not in output  # stopped before the model was loaded
    return output


def test_missing_cot_names_dataset_and_rows(tiny_model_dir, tmp_path):
    out = _fails(tiny_model_dir, tmp_path, cot_rows=[0, 1, 2, 4], dyncot_strategy="dynamic")
    assert "Dataset `bad`: 2 sample(s) have no CoT text in column `cot`: row 3 (id bad_000003), row 5 (id bad_000005)" in out
    assert "dyncot_missing_cot: sft" in out


def test_cot_without_answer_block_names_the_row(tiny_model_dir, tmp_path):
    def drop_answer(rows):
        rows[2]["cot"] = "<think>no answer here</think> sunset; beach"

    out = _fails(tiny_model_dir, tmp_path, mutate=drop_answer, dyncot_strategy="cot")
    assert "Dataset `bad`, row 2 (id bad_000002): the CoT text in column `cot` has no <answer>…</answer> block" in out


def test_missing_image_names_the_path(tiny_model_dir, tmp_path):
    def lose_image(rows):
        rows[4]["images"] = ["pictures/nowhere.png"]

    out = _fails(tiny_model_dir, tmp_path, mutate=lose_image, dyncot_strategy="sft")
    assert "Dataset `bad`, row 4 (id bad_000004): image file not found:" in out and "pictures/nowhere.png" in out


def test_packing_is_refused_for_per_sample_strategies(tiny_model_dir, tmp_path):
    out = _fails(tiny_model_dir, tmp_path, dyncot_strategy="dynamic", packing=True)
    assert "dyncot_strategy=dynamic chooses a target per sample" in out and "packing: false" in out


def test_cot_answer_mismatch_is_refused_when_strict_and_counted_otherwise(tiny_model_dir, tmp_path):
    def wrong_answer(rows):
        rows[1]["cot"] = "<think>It is about food.</think><answer>pizza; dinner</answer>"

    out = _fails(tiny_model_dir, tmp_path, mutate=wrong_answer, dyncot_strategy="dynamic", dyncot_cot_mismatch="error")
    assert "Dataset `bad`: 1 CoT text(s) whose <answer> differs from the row's plain answer: row 1 (id bad_000001)" in out
    assert "Traceback" not in out

    write_plugin_dataset(tmp_path / "warn", "bad", n=6, mutate=wrong_answer)
    config = tiny_sft_config(tiny_model_dir, tmp_path / "warn", "bad", tmp_path / "warn_out", max_steps=1,
                             dyncot_strategy="dynamic")
    proc = run_llamafactory("train", config, tmp_path / "warn_run")
    log = proc.stdout + proc.stderr
    assert "1 CoT text(s) whose <answer> differs from the row's plain answer: row 1 (id bad_000001)" in log
    assert "dyncot_cot_mismatch=warn" in log


def test_an_empty_dataset_is_named(tiny_model_dir, tmp_path):
    out = _fails(tiny_model_dir, tmp_path, mutate=lambda rows: rows.clear(), dyncot_strategy="sft")
    assert "Dataset `bad`" in out and "has no rows" in out
