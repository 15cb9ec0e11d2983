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


def test_resumed_target_share_run_continues_the_same_gamma_sequence(tiny_model_dir, tmp_path):
    write_plugin_dataset(tmp_path / "data", "toy", n=16)
    common = dict(
        max_steps=6, per_device_train_batch_size=4, save_strategy="steps", save_steps=3, save_only_model=False,
        dyncot_strategy="dynamic", dyncot_target_cot_ratio=0.5,
    )
    full = tiny_sft_config(tiny_model_dir, tmp_path / "data", "toy", tmp_path / "full" / "out", **common)
    run_llamafactory("train", full, tmp_path / "full")
    checkpoint = tmp_path / "full" / "out" / "checkpoint-3"
    assert (checkpoint / "dyncot_gamma_state.json").is_file()
    resumed = tiny_sft_config(
        tiny_model_dir, tmp_path / "data", "toy", tmp_path / "resumed" / "out",
        resume_from_checkpoint=str(checkpoint), **common,
    )
    proc = run_llamafactory("train", resumed, tmp_path / "resumed")
    assert "gamma state restored from" in proc.stdout + proc.stderr
    uninterrupted = {e["current_steps"]: e for e in read_log(tmp_path / "full" / "out")}
    after_resume = {e["current_steps"]: e for e in read_log(tmp_path / "resumed" / "out")}
    assert sorted(after_resume) == [4, 5, 6]
    for step in (4, 5, 6):
        assert after_resume[step]["gamma"] == pytest.approx(uninterrupted[step]["gamma"], rel=1e-9)
        assert after_resume[step]["loss"] == pytest.approx(uninterrupted[step]["loss"], rel=1e-6)
        assert after_resume[step]["cot_ratio"] == uninterrupted[step]["cot_ratio"]
    # another target: the log names the change and the controller restarts (step 4 selects with its own quantile)
    changed = tiny_sft_config(
        tiny_model_dir, tmp_path / "data", "toy", tmp_path / "changed" / "out",
        resume_from_checkpoint=str(checkpoint), **{**common, "dyncot_target_cot_ratio": 0.25, "max_steps": 4},
    )
    proc = run_llamafactory("train", changed, tmp_path / "changed")
    assert "saved with another target 0.5 -> 0.25; the target-share controller restarts" in proc.stdout + proc.stderr
    assert "gamma state restored" not in proc.stdout + proc.stderr
    assert [e["cot_share"] for e in read_log(tmp_path / "changed" / "out") if "cot_share" in e] == [0.25]  # 1 of 4 rows


def _wait_for(predicate, proc, timeout=600.0):
    import time

    start = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training ended before the kill (exit {proc.returncode})")
        if time.monotonic() - start > timeout:
            raise AssertionError("timed out waiting for the training to reach the kill point")
        time.sleep(0.05)


def test_kill_9_and_resume_keeps_every_logged_step_exactly_once(tiny_model_dir, tmp_path):
    """kill -9 after a checkpoint and a later logged step, wherever that lands (mid-step, mid-save), then rerun the
    same recipe: LLaMA-Factory resumes from the last checkpoint and trainer_log.jsonl has steps 1..N once each."""
    import json
    import os
    import signal
    import subprocess

    import yaml

    from dyncot_plugin.testing.lf_runner import llamafactory_cli, offline_env

    write_plugin_dataset(tmp_path / "data", "toy", n=8)
    out = tmp_path / "out"
    config = tiny_sft_config(
        tiny_model_dir, tmp_path / "data", "toy", out, max_steps=12, save_strategy="steps", save_steps=2,
        save_only_model=False, overwrite_output_dir=False, dyncot_strategy="dynamic", dyncot_target_cot_ratio=0.5,
        dyncot_log_selection=True,
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config), encoding="utf-8")
    argv = [llamafactory_cli(), "train", str(recipe)]

    def logged_steps() -> list[int]:
        path = out / "trainer_log.jsonl"
        steps = []
        for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line torn by the kill
            if "loss" in entry:  # a training step (the run's last line is LLaMA-Factory's summary, no loss)
                steps.append(entry["current_steps"])
        return steps

    first = subprocess.Popen(argv, cwd=tmp_path, env=offline_env(), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (out / "checkpoint-2").is_dir() and max(logged_steps(), default=0) >= 3, first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    killed_at = max(logged_steps())
    assert 3 <= killed_at < 12

    second = subprocess.run(argv, cwd=tmp_path, env=offline_env(), capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert logged_steps() == list(range(1, 13))
    steps = [json.loads(x)["step"] for x in (out / "dyncot_selection" / "rank0.jsonl").read_text().splitlines()]
    assert steps == list(range(12))  # one selection record per step, none repeated
    state = json.loads((out / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, 13))
