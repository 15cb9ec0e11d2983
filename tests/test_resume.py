"""``resume_from_checkpoint`` continues a Dynamic CoT run exactly where it stopped."""

import pytest

from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import read_log, write_plugin_dataset

pytestmark = pytest.mark.slow


def test_resumed_run_matches_the_uninterrupted_one(tiny_model_dir, tmp_path):
    write_plugin_dataset(tmp_path / "data", "toy", n=8, cot_rows=[0, 2, 3, 5, 6])
    common = dict(
        max_steps=4, save_strategy="steps", save_steps=2, save_only_model=False,
        dyncot_strategy="dynamic", dyncot_gamma=1.0e6, dyncot_missing_cot="sft",
    )
    full = tiny_sft_config(tiny_model_dir, tmp_path / "data", "toy", tmp_path / "full" / "out", **common)
    run_llamafactory("train", full, tmp_path / "full")
    checkpoint = tmp_path / "full" / "out" / "checkpoint-2"
    assert checkpoint.is_dir()

    resumed = tiny_sft_config(
        tiny_model_dir, tmp_path / "data", "toy", tmp_path / "resumed" / "out",
        resume_from_checkpoint=str(checkpoint), **common,
    )
    run_llamafactory("train", resumed, tmp_path / "resumed")
    uninterrupted = {e["current_steps"]: e for e in read_log(tmp_path / "full" / "out")}
    after_resume = {e["current_steps"]: e for e in read_log(tmp_path / "resumed" / "out")}
    assert sorted(after_resume) == [3, 4]
    for step in (3, 4):
        assert after_resume[step]["loss"] == pytest.approx(uninterrupted[step]["loss"], rel=1e-6)
        assert after_resume[step]["cot_ratio"] == uninterrupted[step]["cot_ratio"]
