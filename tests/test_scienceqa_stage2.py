"""Stage-2 builder (`dyncot-data build-stage2`) and id-safe pairing of LLaMA-Factory predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.scienceqa import raw

from dyncot_plugin.cli.data import main as data_main
from dyncot_plugin.io import predictions as P
from dyncot_plugin.tasks.scienceqa import convert as sqa
from dyncot_plugin.tasks.scienceqa.stage2 import build_stage2


@pytest.fixture
def data_dir(tmp_path):
    paths = raw.build_raw(tmp_path / "raw")
    out = tmp_path / "data"
    sqa.convert(paths["problems"], paths["splits"], out, image_dir=paths["image_dir"], captions_path=paths["captions"])
    return out


def _dataset(data_dir: Path, name: str) -> list[dict]:
    return json.loads((data_dir / f"{name}.json").read_text())


def lf_prediction(row: dict, predict: str, label: str | None = None) -> dict:
    """A row as LLaMA-Factory's save_predictions writes it for the qwen2_vl template (prompt decoded with specials)."""
    user = row["messages"][0]["content"].replace("<image>", "<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>")
    prompt = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"{user}<|im_end|>\n<|im_start|>assistant\n"
    )
    return {
        "prompt": prompt,
        "predict": predict,
        "label": row["messages"][1]["content"] + "\n" if label is None else label,
    }


def write_lf_predictions(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def stage1_preds(data_dir, tmp_path):
    """generated_predictions.jsonl of a stage-1 model on sqa_test_rationale: 'Solution: rationale of <pid>'."""
    rows = _dataset(data_dir, "sqa_test_rationale")
    preds = [lf_prediction(r, f"Solution: rationale of {r['id']}\n") for r in rows]
    return write_lf_predictions(tmp_path / "stage1" / "generated_predictions.jsonl", preds)


# ------------------------------------------------------------------------------------------------- attach_ids


def test_attach_ids_pairs_rows_after_checking_them(data_dir, stage1_preds):
    rows, stats = P.attach_ids(stage1_preds, data_dir / "sqa_test_rationale.json")
    assert [r["id"] for r in rows] == raw.TEST_IDS
    assert rows[2] == {
        "id": "303",
        "index": 2,
        "predict": "Solution: rationale of 303\n",
        "label": "Goods and services are bought and sold. Shoes are things you can touch, so they are a good.\n",
    }
    assert stats == {"rows": 8, "truncated_labels": 0}


def test_attach_ids_rejects_wrong_counts(data_dir, stage1_preds, tmp_path):
    lines = stage1_preds.read_text().splitlines()
    short = write_lf_predictions(tmp_path / "short.jsonl", [json.loads(x) for x in lines[:5]])
    with pytest.raises(P.PredictionsError, match=r"short.jsonl has 5 rows but .*sqa_test_rationale.json, has 8"):
        P.attach_ids(short, data_dir / "sqa_test_rationale.json")


def test_attach_ids_detects_shuffled_rows_by_label(data_dir, stage1_preds, tmp_path):
    rows = [json.loads(x) for x in stage1_preds.read_text().splitlines()]
    rows[0], rows[1] = rows[1], rows[0]
    bad = write_lf_predictions(tmp_path / "shuffled.jsonl", rows)
    with pytest.raises(P.PredictionsError, match=r"row 0 \(id '301'\): label 'Magnets attract iron"):
        P.attach_ids(bad, data_dir / "sqa_test_rationale.json")


def test_attach_ids_detects_shuffled_rows_with_identical_labels_by_prompt(data_dir, tmp_path):
    # 301 and 304 both answer (A): swapping them keeps every label right; the prompt check catches it.
    rows = _dataset(data_dir, "sqa_test_answer")
    preds = [lf_prediction(r, "The answer is (A).") for r in rows]
    preds[0], preds[3] = preds[3], preds[0]
    assert preds[0]["label"] == preds[3]["label"]
    bad = write_lf_predictions(tmp_path / "swapped.jsonl", preds)
    with pytest.raises(P.PredictionsError, match=r"row 0 \(id '301'\): the prompt does not contain"):
        P.attach_ids(bad, data_dir / "sqa_test_answer.json")
    rows_out, _ = P.attach_ids(bad, data_dir / "sqa_test_answer.json", check_prompt=False)  # label-only: passes
    assert len(rows_out) == 8


def test_attach_ids_accepts_labels_truncated_by_cutoff_len(data_dir, tmp_path):
    rows = _dataset(data_dir, "sqa_test_rationale")
    preds = [lf_prediction(r, "x") for r in rows]
    preds[1]["label"] = "Magnets attract"
    path = write_lf_predictions(tmp_path / "trunc.jsonl", preds)
    _, stats = P.attach_ids(path, data_dir / "sqa_test_rationale.json")
    assert stats["truncated_labels"] == 1


# ------------------------------------------------------------------------------------------------ build-stage2


def test_stage2_from_lf_predictions_joins_by_id(data_dir, stage1_preds, tmp_path):
    result = build_stage2(data_dir, "test", predictions=stage1_preds, save_predictions=tmp_path / "with_ids.jsonl")
    assert result["rationale"] == "predicted" and result["rows"] == 8
    rows = {r["id"]: r for r in _dataset(data_dir, "sqa_test_stage2")}
    answer = {r["id"]: r for r in _dataset(data_dir, "sqa_test_answer")}
    for pid in raw.TEST_IDS:
        # leading "Solution:" of the prediction is not doubled
        assert rows[pid]["messages"][0]["content"] == (
            answer[pid]["messages"][0]["content"] + f"\nSolution: rationale of {pid}"
        )
        assert rows[pid]["messages"][1] == answer[pid]["messages"][1]
        assert rows[pid]["images"] == answer[pid]["images"]
    info = json.loads((data_dir / "dataset_info.json").read_text())
    assert info["sqa_test_stage2"]["columns"] == {"messages": "messages", "images": "images"}
    saved = [json.loads(x) for x in (tmp_path / "with_ids.jsonl").read_text().splitlines()]
    assert [r["id"] for r in saved] == raw.TEST_IDS


def test_stage2_from_id_file_in_any_order(data_dir, tmp_path):
    preds = [{"id": pid, "predict": f"because {pid}"} for pid in reversed(raw.TEST_IDS)]
    path = write_lf_predictions(tmp_path / "ids.jsonl", preds)
    build_stage2(data_dir, "test", predictions=path, name="s2")
    rows = _dataset(data_dir, "s2")
    assert [r["id"] for r in rows] == raw.TEST_IDS  # the dataset's order, whatever the file's
    assert all(r["messages"][0]["content"].endswith(f"\nSolution: because {r['id']}") for r in rows)


def test_stage2_missing_extra_and_duplicate_ids_are_errors(data_dir, tmp_path):
    ids = [pid for pid in raw.TEST_IDS if pid not in ("303", "307")] + ["999", "101"]
    path = write_lf_predictions(tmp_path / "ids.jsonl", [{"id": pid, "predict": "r"} for pid in ids])
    with pytest.raises(P.PredictionsError) as err:
        build_stage2(data_dir, "test", predictions=path)
    msg = str(err.value)
    assert "2 id(s) of dataset sqa_test_answer" in msg and "'303', '307'" in msg
    assert "2 id(s) in stage-1 predictions" in msg and "'101', '999'" in msg
    assert not (data_dir / "sqa_test_stage2.json").exists()

    dup = write_lf_predictions(tmp_path / "dup.jsonl", [{"id": pid, "predict": "r"} for pid in raw.TEST_IDS + ["301"]])
    with pytest.raises(P.PredictionsError, match=r"predicted more than once: '301'"):
        build_stage2(data_dir, "test", predictions=dup)


def test_stage2_gold_is_the_default_without_predictions(data_dir):
    result = build_stage2(data_dir, "train")
    assert result["rationale"] == "gold"
    rows = _dataset(data_dir, "sqa_train_stage2")
    gold = _dataset(data_dir, "sqa_train_stage2_gold")
    assert rows == gold  # same rows as the converter's gold stage-2 set
    with pytest.raises(P.PredictionsError, match="drop --predictions"):
        build_stage2(data_dir, "train", rationale="gold", predictions="x.jsonl")
    with pytest.raises(P.PredictionsError, match="needs --predictions"):
        build_stage2(data_dir, "train", rationale="predicted")


def test_stage2_lf_predictions_of_another_split_are_rejected(data_dir, stage1_preds):
    # 8 test predictions against the 6-row train rationale dataset
    with pytest.raises(P.PredictionsError, match=r"has 8 rows but .*sqa_train_rationale.json, has 6"):
        build_stage2(data_dir, "train", predictions=stage1_preds)


def test_stage2_cli(data_dir, stage1_preds, capsys):
    assert data_main(["build-stage2", "--dataset-dir", str(data_dir), "--split", "test",
                      "--predictions", str(stage1_preds)]) == 0  # fmt: skip
    assert "sqa_test_stage2: 8 rows (predicted rationales)" in capsys.readouterr().out
    assert data_main(["build-stage2", "--dataset-dir", str(data_dir), "--split", "val"]) == 0
    captured = capsys.readouterr()
    assert "(gold rationales)" in captured.out and "oracle" in captured.err
    assert data_main(["build-stage2", "--dataset-dir", str(data_dir), "--split", "nope"]) == 2
    assert "no dataset 'sqa_nope_answer'" in capsys.readouterr().err
