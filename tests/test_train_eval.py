"""Keyphrase metrics during training (``dyncot_eval_samples``): same generations as LLaMA-Factory's predict."""

import json
import os
import sys
from pathlib import Path

import pytest

from dyncot_plugin.cot_format import parse_output
from dyncot_plugin.tasks.mmkp.metrics import evaluate_keyphrases
from dyncot_plugin.tasks.mmkp.normalize import split_keyphrases
from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config
from dyncot_plugin.testing.plugin_data import write_plugin_dataset

pytestmark = pytest.mark.slow
DS_Z3 = Path(__file__).resolve().parents[1] / "examples" / "deepspeed" / "ds_z3.json"
EVAL = dict(
    eval_dataset="toy", eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=1,
    dyncot_eval_samples=3, dyncot_eval_max_new_tokens=12,
)


def _eval_entries(out: Path) -> list[dict]:
    lines = (out / "trainer_log.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if "eval_loss" in e]


@pytest.mark.low_end  # also on the low-end stack (.ci/run)
def test_eval_metrics_match_llamafactory_predict_on_the_same_weights(tiny_model_dir, tmp_path):
    write_plugin_dataset(tmp_path / "data", "toy", n=8)
    out = tmp_path / "train" / "out"
    config = tiny_sft_config(
        tiny_model_dir, tmp_path / "data", "toy", out, max_steps=4, dyncot_strategy="dynamic", dyncot_gamma=1.0e6,
        **EVAL,
    )
    run_llamafactory("train", config, tmp_path / "train")
    entries = _eval_entries(out)
    assert [e["current_steps"] for e in entries] == [2, 4]
    assert all({"eval_f1@1", "eval_f1@M", "eval_cot_rate", "eval_gen_len"} <= set(e) for e in entries)
    state = json.loads((out / "trainer_state.json").read_text())  # what report_to receives
    assert sum("eval_f1@1" in e for e in state["log_history"]) == 2
    ours = [json.loads(line) for line in (out / "dyncot_eval" / "step4.jsonl").read_text().splitlines()]
    assert [r["index"] for r in ours] == [0, 1, 2]

    # The project's predict on the final weights (= the weights of the step-4 evaluation), greedy, unpadded:
    # LLaMA-Factory's predict, routed through the plugin so that generate gets the model's M-RoPE positions.
    predict = tiny_sft_config(
        out, tmp_path / "data", None, tmp_path / "predict" / "out", do_train=False, do_predict=True,
        predict_with_generate=True, eval_dataset="toy", max_samples=3, per_device_eval_batch_size=1,
        max_new_tokens=12, do_sample=False, dyncot_think="auto",  # the plugin's predict path: the model's positions
    )
    run_llamafactory("train", predict, tmp_path / "predict")
    lf = [json.loads(line) for line in (tmp_path / "predict" / "out" / "generated_predictions.jsonl").read_text().splitlines()]
    assert [r["predict"] for r in ours] == [r["predict"] for r in lf]
    assert [r["label"] for r in ours] == [r["label"] for r in lf]
    # the same decision rule: the same think_prob per post, and its mean is logged
    assert [r["think_prob"] for r in ours] == pytest.approx([r["think_prob"] for r in lf], abs=1e-5)
    assert entries[-1]["eval_think_prob"] == pytest.approx(sum(r["think_prob"] for r in lf) / 3, abs=1e-5)

    parsed = [parse_output(r["predict"]) for r in lf]
    scores = evaluate_keyphrases([split_keyphrases(p.answer) for p in parsed], [split_keyphrases(r["label"]) for r in lf])
    final = entries[-1]
    assert final["eval_f1@1"] == pytest.approx(100 * scores["f1@1"], abs=1e-4)
    assert final["eval_f1@M"] == pytest.approx(100 * scores["f1@M"], abs=1e-4)
    assert final["eval_cot_rate"] == pytest.approx(100 * sum(p.has_think for p in parsed) / 3, abs=1e-4)
    assert final["eval_gen_len"] == pytest.approx(sum(r["gen_tokens"] for r in ours) / 3)


def test_eval_costs_nothing_when_off(tiny_model_dir, tmp_path):
    write_plugin_dataset(tmp_path / "data", "toy", n=8)
    out = tmp_path / "out"
    config = tiny_sft_config(
        tiny_model_dir, tmp_path / "data", "toy", out, max_steps=2, dyncot_strategy="dynamic",
        **{**EVAL, "dyncot_eval_samples": 0},
    )
    run_llamafactory("train", config, tmp_path)
    entries = _eval_entries(out)
    assert entries and not any("eval_f1@1" in e for e in entries)
    assert not (out / "dyncot_eval").exists()


@pytest.mark.distributed
def test_eval_under_zero3_with_two_ranks(tiny_model_dir, tmp_path):
    pytest.importorskip("deepspeed")
    write_plugin_dataset(tmp_path / "data", "toy", n=8)
    out = tmp_path / "out"
    config = tiny_sft_config(
        tiny_model_dir, tmp_path / "data", "toy", out, max_steps=2, deepspeed=str(DS_Z3),
        dyncot_strategy="dynamic", dyncot_gamma=1.0e6, **EVAL,
    )
    env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run_llamafactory("train", config, tmp_path, env=env, timeout=900)
    entries = _eval_entries(out)
    assert [e["current_steps"] for e in entries] == [2] and "eval_f1@1" in entries[0]
    rows = [json.loads(line) for line in (out / "dyncot_eval" / "step2.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]  # rank 0 generated rows 0 and 2, rank 1 row 1: all gathered
    assert entries[0]["eval_gen_len"] == pytest.approx(sum(r["gen_tokens"] for r in rows) / 3)
    # every rank measured think_prob (the prefill hook runs the same forwards on every rank)
    assert all(0.0 <= r["think_prob"] <= 1.0 for r in rows)
    assert entries[0]["eval_think_prob"] == pytest.approx(sum(r["think_prob"] for r in rows) / 3, abs=1e-5)


def test_a_scienceqa_dataset_logs_accuracy_not_keyphrase_f1(tiny_model_dir, tmp_path):
    """dyncot_eval_task: auto reads the task from the gold labels: ScienceQA answers are scored by letter."""
    from dyncot_plugin.testing.lf_runner import make_image, write_sharegpt_dataset

    rows = []
    for i in range(4):
        letter = "AB"[i % 2]
        rows.append({
            "id": f"sqa_{i}",
            "messages": [{"role": "user", "content": f"<image>Question: which one, case {i}?\nOptions: (A) left (B) right"},
                         {"role": "assistant", "content": f"The answer is ({letter})."}],
            "images": [make_image(tmp_path / "data" / f"img_{i}.png", seed=i)],
            "cot": f"<think>Case {i} points {'left' if letter == 'A' else 'right'}.</think>"
                   f"<answer>The answer is ({letter}).</answer>",
        })
    write_sharegpt_dataset(tmp_path / "data", "sqa", rows)
    info = json.loads((tmp_path / "data" / "dataset_info.json").read_text())
    info["sqa"]["columns"]["cot"] = "cot"
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps(info))
    out = tmp_path / "out"
    config = tiny_sft_config(
        tiny_model_dir, tmp_path / "data", "sqa", out, max_steps=2, dyncot_strategy="dynamic", dyncot_gamma=1.0e6,
        **{**EVAL, "eval_dataset": "sqa", "dyncot_eval_samples": 4},
    )
    run_llamafactory("train", config, tmp_path)
    (entry,) = _eval_entries(out)
    assert {"eval_accuracy", "eval_cot_rate", "eval_gen_len"} <= set(entry)
    assert "eval_f1@1" not in entry and "eval_f1@M" not in entry
    generations = [json.loads(x) for x in (out / "dyncot_eval" / "step2.jsonl").read_text().splitlines()]
    from dyncot_plugin.tasks.scienceqa.evaluate import extract_answer

    correct = sum(extract_answer(g["predict"])[0] == extract_answer(g["label"])[0] for g in generations)
    assert entry["eval_accuracy"] == pytest.approx(100 * correct / 4)
