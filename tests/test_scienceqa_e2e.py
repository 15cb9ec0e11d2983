"""MM-CoT two-stage run on the tiny Qwen2-VL through vanilla LLaMA-Factory, end to end.

convert -> stage-1 SFT (QCM->LE) -> stage-1 predict -> build-stage2 (test: predicted, train: gold) -> stage-2 SFT
(QCMR->A) -> stage-2 predict -> dyncot-eval scienceqa. The tiny model writes garbage, so the check is about the
plumbing: ids joined right and the per-category table counted right against the hand counts of the fixture.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from fixtures.scienceqa import raw

from dyncot_plugin.cli.data import main as data_main
from dyncot_plugin.cli.eval import main as eval_main
from dyncot_plugin.tasks.scienceqa.convert import clean_rationale
from dyncot_plugin.tasks.scienceqa.evaluate import CATEGORY_NAMES
from dyncot_plugin.testing.lf_runner import run_llamafactory, tiny_sft_config

# Kept small: the whole test (4 llamafactory-cli runs) takes about a minute on 2 CPU cores.
COMMON = {"cutoff_len": 512, "max_steps": 1, "per_device_train_batch_size": 2}


def _train(model_dir, data_dir, dataset, out_dir, workdir):
    cfg = tiny_sft_config(model_dir, data_dir, dataset, out_dir, **COMMON)
    run_llamafactory("train", cfg, workdir=workdir, config_name=f"{Path(out_dir).name}.yaml")


def _predict(model_dir, data_dir, dataset, out_dir, workdir, max_new_tokens):
    # LLaMA-Factory drops the model from its collator when predict_with_generate is on, and Qwen2-VL then cannot
    # build its M-RoPE positions for training batches: predict in a run of its own (do_train: false).
    cfg = tiny_sft_config(
        model_dir, data_dir, None, out_dir, cutoff_len=512, do_train=False, do_predict=True,
        predict_with_generate=True, eval_dataset=dataset, max_new_tokens=max_new_tokens,
        per_device_eval_batch_size=8,
    )  # fmt: skip
    run_llamafactory("train", cfg, workdir=workdir, config_name=f"{Path(out_dir).name}.yaml")
    return Path(out_dir) / "generated_predictions.jsonl"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.slow
def test_two_stage_mmcot_run_end_to_end(tiny_model_dir, tmp_path, capsys):
    for mod in ("jieba", "nltk", "rouge_chinese"):  # LLaMA-Factory's predict_with_generate needs its metrics extra
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"predict_with_generate needs `{mod}` (LLaMA-Factory metrics extra); not installed")
    paths = raw.build_raw(tmp_path / "raw")
    data = tmp_path / "data"
    assert data_main(["convert-scienceqa", "--problems", str(paths["problems"]), "--splits-file", str(paths["splits"]),
                      "--image-dir", str(paths["image_dir"]), "--captions", str(paths["captions"]),
                      "--out", str(data), "--split", "train", "--split", "test"]) == 0  # fmt: skip

    # Stage 1: rationale generation (QCM -> LE)
    _train(tiny_model_dir, data, "sqa_train_rationale", tmp_path / "stage1", tmp_path)
    s1_preds = _predict(tmp_path / "stage1", data, "sqa_test_rationale", tmp_path / "stage1_pred", tmp_path, 8)
    s1_rows = _jsonl(s1_preds)
    assert len(s1_rows) == 8 and "id" not in s1_rows[0]

    # Stage-2 inputs: test with the predicted rationales (joined by id), train with the gold ones (default)
    assert data_main(["build-stage2", "--dataset-dir", str(data), "--split", "test",
                      "--predictions", str(s1_preds), "--save-predictions", str(tmp_path / "s1_ids.jsonl")]) == 0  # fmt: skip
    assert data_main(["build-stage2", "--dataset-dir", str(data), "--split", "train"]) == 0
    s1_with_ids = {r["id"]: r["predict"] for r in _jsonl(tmp_path / "s1_ids.jsonl")}
    assert list(s1_with_ids) == raw.TEST_IDS
    stage2_test = {r["id"]: r for r in json.loads((data / "sqa_test_stage2.json").read_text())}
    for pid, predicted in s1_with_ids.items():
        assert stage2_test[pid]["messages"][0]["content"].endswith("\nSolution: " + clean_rationale(predicted))
    gold_train = json.loads((data / "sqa_train_stage2.json").read_text())
    assert gold_train[0]["messages"][0]["content"].endswith(
        "\nSolution: Mammals have fur and feed milk to their young. A dog has fur. A dog is a mammal."
    )

    # Stage 2: answer inference (QCM + rationale -> A)
    _train(tiny_model_dir, data, "sqa_train_stage2", tmp_path / "stage2", tmp_path)
    s2_preds = _predict(tmp_path / "stage2", data, "sqa_test_stage2", tmp_path / "stage2_pred", tmp_path, 6)
    assert len(_jsonl(s2_preds)) == 8

    # Evaluation
    metrics_path, details_path = tmp_path / "metrics.json", tmp_path / "details.jsonl"
    capsys.readouterr()
    assert eval_main(["scienceqa", "--problems", str(paths["problems"]), "--predictions", str(s2_preds),
                      "--dataset-dir", str(data), "--dataset", "sqa_test_stage2",
                      "--rationale-predictions", str(s1_preds), "--rationale-dataset", "sqa_test_rationale",
                      "--splits-file", str(paths["splits"]), "--split", "test",
                      "--output", str(metrics_path), "--details", str(details_path)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    metrics = json.loads(metrics_path.read_text())
    details = {d["id"]: d for d in _jsonl(details_path)}
    assert list(details) == raw.TEST_IDS
    table = metrics["answers"]["accuracy"]
    assert list(table) == list(CATEGORY_NAMES)
    for name in CATEGORY_NAMES:
        members = raw.TEST_CATEGORY_MEMBERS[name]
        assert table[name]["total"] == raw.TEST_CATEGORY_TOTALS[name], name
        assert table[name]["correct"] == sum(details[pid]["correct"] for pid in members), name
        assert table[name]["acc"] == pytest.approx(100.0 * table[name]["correct"] / table[name]["total"])
        assert f"\n{name:<9}{table[name]['correct']:>9}{table[name]['total']:>7}" in printed
    gold = {"301": "A", "302": "B", "303": "B", "304": "A", "305": "B", "306": "B", "307": "B", "308": "D"}
    assert {pid: d["gold"] for pid, d in details.items()} == gold
    unparseable = [pid for pid, d in details.items() if d["status"] in ("unparseable", "ambiguous")]
    assert metrics["answers"]["unparseable"] == {"count": len(unparseable), "ids": unparseable}
    assert all(not details[pid]["correct"] for pid in unparseable)  # never a random guess
    rationale = metrics["rationale"]
    assert rationale["n"] == 8 and 0.0 <= rationale["rougeL"] <= 100.0 and 0.0 <= rationale["bleu4"] <= 100.0
