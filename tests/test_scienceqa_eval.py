"""ScienceQA metrics (`dyncot-eval scienceqa`): answer extraction, per-category accuracy, rationale ROUGE-L/BLEU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.scienceqa import raw

from dyncot_plugin.cli.eval import main as eval_main
from dyncot_plugin.io.predictions import PredictionsError
from dyncot_plugin.tasks.scienceqa import evaluate as E

PROBLEMS = raw.HERE / "problems.json"
SPLITS = raw.HERE / "pid_splits.json"

# Hand-written outputs for the 8 test problems (gold: 301 A, 302 B, 303 B, 304 A, 305 B, 306 B, 307 B, 308 D).
HAND = {
    "301": "The answer is (A).",  # correct
    "302": "The answer is (A).",  # wrong
    "303": "<think>Maybe the answer is (C)? The answer is (C).</think><answer>The answer is (B).</answer>",  # correct
    "304": "I think it is Paris.",  # unparseable -> wrong
    "305": "The answer is (B). The answer is (B).",  # same letter twice: correct
    "306": "The answer is (B).",  # correct (5-option problem)
    "307": "The answer is (E).",  # E is not an option of a 2-choice problem -> wrong, listed
    "308": "The answer is (A). The answer is (D).",  # two different letters: unparseable -> wrong
}
HAND_CORRECT = {"301", "303", "305", "306"}
# By hand from the table in tests/fixtures/scienceqa/raw.py.
HAND_TABLE = {
    "NAT": (1, 4), "SOC": (1, 2), "LAN": (2, 2), "TXT": (3, 4), "IMG": (1, 3), "NO": (1, 3),
    "G1-6": (3, 4), "G7-12": (1, 4), "Avg": (4, 8),
}  # fmt: skip


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is (C).", ("C", "ok")),
        ("Solution: blah. The answer is (B)", ("B", "ok")),
        ("<think>The answer is (A)</think><answer>The answer is (D).</answer>", ("D", "ok")),
        ("<think>x</think><answer>The answer is (D).", ("D", "ok")),  # unterminated answer block
        ("The answer is B.", (None, "unparseable")),
        ("the answer is (B).", (None, "unparseable")),  # MM-CoT's pattern is case-sensitive
        ("", (None, "unparseable")),
        ("The answer is (A). The answer is (B).", (None, "ambiguous")),
    ],
)
def test_extract_answer(text, expected):
    assert E.extract_answer(text) == expected


def test_per_category_accuracy_by_hand():
    problems = json.loads(PROBLEMS.read_text())
    result = E.score_answers(problems, HAND)
    table = result["accuracy"]
    assert {k: (v["correct"], v["total"]) for k, v in table.items()} == HAND_TABLE
    # the same numbers from the category membership (ScienceQA's definitions) listed with the fixture
    for name, members in raw.TEST_CATEGORY_MEMBERS.items():
        assert table[name]["total"] == raw.TEST_CATEGORY_TOTALS[name] == len(members)
        assert table[name]["correct"] == len(members & HAND_CORRECT)
    assert table["NAT"]["acc"] == 25.0 and table["LAN"]["acc"] == 100.0 and table["Avg"]["acc"] == 50.0
    assert table["IMG"]["acc"] == pytest.approx(100 / 3)
    assert result["unparseable"] == {"count": 2, "ids": ["304", "308"]}
    assert result["invalid_option"] == {"count": 1, "ids": ["307"]}
    statuses = {d["id"]: d["status"] for d in result["details"]}
    assert statuses["304"] == "unparseable" and statuses["308"] == "ambiguous" and statuses["307"] == "invalid_option"


def test_any_subset_size_and_empty_categories():
    problems = json.loads(PROBLEMS.read_text())
    result = E.score_answers(problems, {"305": "The answer is (B)."})
    table = result["accuracy"]
    assert table["LAN"] == {"correct": 1, "total": 1, "acc": 100.0}
    assert table["NAT"] == {"correct": 0, "total": 0, "acc": None}
    assert E.score_answers(problems, {})["accuracy"]["Avg"] == {"correct": 0, "total": 0, "acc": None}
    with pytest.raises(PredictionsError, match=r"not in problems.json: '42'"):
        E.score_answers(problems, {"42": "The answer is (A)."})


def test_rationale_metrics_match_mmcot_bleu_and_rouge_score():
    from nltk.translate.bleu_score import sentence_bleu
    from rouge_score import rouge_scorer

    refs = {"1": "A penguin can swim. Birds lay eggs.", "2": "Magnets attract iron.", "3": ""}
    hyps = {"1": "A penguin can swim.", "2": "", "3": "anything"}
    out = E.score_rationales(refs, hyps)
    assert out["n"] == 2 and out["skipped_empty_reference"] == 1  # empty reference skipped (as MM-CoT)
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(refs["1"], hyps["1"])["rougeL"].fmeasure
    assert out["rougeL"] == pytest.approx(100 * (rouge + 0.0) / 2)  # the empty hypothesis scores 0
    # MM-CoT tokenises on white space and '.', sentence_bleu without smoothing
    ref_tok, hyp_tok = ["A", "penguin", "can", "swim", "Birds", "lay", "eggs"], ["A", "penguin", "can", "swim"]
    assert E.bleu_tokens(refs["1"]) == ref_tok
    assert out["bleu1"] == pytest.approx(100 * sentence_bleu([ref_tok], hyp_tok, (1.0,)) / 2)
    assert out["bleu4"] == pytest.approx(100 * sentence_bleu([ref_tok], hyp_tok, (0.25,) * 4) / 2)
    same = E.score_rationales({"1": refs["1"]}, {"1": refs["1"]})
    assert same["rougeL"] == pytest.approx(100.0) and same["bleu4"] == pytest.approx(100.0)


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluate_cli_with_id_files(tmp_path, capsys):
    preds = _write(tmp_path / "p.jsonl", [{"id": pid, "predict": text} for pid, text in HAND.items()])
    rats = _write(tmp_path / "r.jsonl", [{"id": "301", "predict": "Solution: A penguin can swim."}])
    out = tmp_path / "metrics.json"
    argv = ["scienceqa", "--problems", str(PROBLEMS), "--predictions", str(preds), "--rationale-predictions", str(rats),
            "--splits-file", str(SPLITS), "--split", "test", "--output", str(out), "--details", str(tmp_path / "d.jsonl")]  # fmt: skip
    assert eval_main(argv) == 0
    printed = capsys.readouterr().out
    assert "unparseable answers (counted wrong): 2" in printed
    assert "IMG              1      3   33.33" in printed
    metrics = json.loads(out.read_text())
    assert {k: (v["correct"], v["total"]) for k, v in metrics["answers"]["accuracy"].items()} == HAND_TABLE
    assert metrics["rationale"]["n"] == 1 and metrics["rationale"]["source"] == "stage-1 predictions"
    details = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert {d["id"] for d in details if d["correct"]} == HAND_CORRECT

    # --split requires exact coverage: a missing id is an error that lists it
    _write(preds, [{"id": pid, "predict": t} for pid, t in HAND.items() if pid != "302"])
    assert eval_main(argv) == 2
    assert "'302'" in capsys.readouterr().err


def test_label_disagreeing_with_problems_is_an_error(tmp_path):
    preds = _write(tmp_path / "p.jsonl", [{"id": "301", "predict": "x", "label": "The answer is (C)."}])
    with pytest.raises(PredictionsError, match=r"label of 1 row\(s\) names another answer .*'301'"):
        E.evaluate(PROBLEMS, preds)


def test_think_rationale(tmp_path):
    preds = _write(
        tmp_path / "p.jsonl",
        [{"id": "307", "predict": "<think>The sun is a star.</think><answer>The answer is (B).</answer>"}],
    )
    result = E.evaluate(PROBLEMS, preds, think_rationale=True)
    assert result["answers"]["accuracy"]["Avg"]["correct"] == 1
    assert result["rationale"]["rougeL"] == pytest.approx(100.0)


def test_raw_lf_predictions_need_the_dataset(tmp_path):
    preds = _write(
        tmp_path / "p.jsonl", [{"prompt": "p", "predict": "The answer is (A).", "label": "The answer is (A)."}]
    )
    with pytest.raises(PredictionsError, match="has no 'id' column"):
        E.evaluate(PROBLEMS, preds)
