"""Score ScienceQA predictions: answer accuracy per category (NAT SOC LAN TXT IMG NO G1-6 G7-12) and rationale ROUGE-L/BLEU.

Answer: the letter of ``The answer is (X)`` (MM-CoT's pattern), read inside the last ``<answer>…</answer>`` block when
the output has one. No match, or matches naming different letters, is *unparseable*: counted wrong and listed,
never replaced by a random option (MM-CoT's ``main.py`` guesses one at random). A letter that is not an option of the
problem is counted wrong and listed too.

Categories follow ScienceQA's evaluator (lupantech/ScienceQA ``tools/evaluate_acc.py``): NAT/SOC/LAN by ``subject``
(natural/social/language science), TXT = the problem has a hint, IMG = it has an image, NO = neither, G1-6 =
grade1..grade6, G7-12 = grade7..grade12; Avg over all scored problems. Any subset of problems works: a category
with no problem has accuracy ``null``.

Rationale (optional): ROUGE-L F1 (``rouge-score``, ``rougeL``, Porter stemmer) and BLEU-1/BLEU-4 computed as MM-CoT's
``evaluations.py`` does (nltk ``sentence_bleu``, no smoothing, tokens split on white space and ``.``), each averaged
over the problems whose gold rationale (lecture + solution) is not empty and reported x100.
"""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path
from typing import Any

from dyncot_plugin.io.files import atomic_write_json
from dyncot_plugin.io.predictions import (
    PredictionsError,
    dataset_path_from_args,
    index_by_id,
    list_some,
    load_predictions,
    write_jsonl,
)
from dyncot_plugin.tasks.scienceqa.convert import (
    OPTIONS,
    answer_letter,
    clean_rationale,
    load_problems,
    load_splits,
    rationale_text,
)

ANSWER_RE = re.compile(r"The answer is \(([A-Z])\)")
ANSWER_BLOCK_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)
THINK_RE = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)

GRADES_1_6 = tuple(f"grade{g}" for g in range(1, 7))
GRADES_7_12 = tuple(f"grade{g}" for g in range(7, 13))
# (name, predicate on a problem) in ScienceQA's table order.
CATEGORIES = (
    ("NAT", lambda p: p["subject"] == "natural science"),
    ("SOC", lambda p: p["subject"] == "social science"),
    ("LAN", lambda p: p["subject"] == "language science"),
    ("TXT", lambda p: bool(p.get("hint"))),
    ("IMG", lambda p: bool(p.get("image"))),
    ("NO", lambda p: not p.get("hint") and not p.get("image")),
    ("G1-6", lambda p: p["grade"] in GRADES_1_6),
    ("G7-12", lambda p: p["grade"] in GRADES_7_12),
)
CATEGORY_NAMES = tuple(name for name, _ in CATEGORIES) + ("Avg",)


def extract_answer(text: str) -> tuple[str | None, str]:
    """``(letter, status)``; status is ``ok``, ``unparseable`` (no ``The answer is (X)``) or ``ambiguous``."""
    blocks = ANSWER_BLOCK_RE.findall(text or "")
    scope = blocks[-1] if blocks else (text or "")
    letters = ANSWER_RE.findall(scope)
    if not letters:
        return None, "unparseable"
    if len(set(letters)) > 1:
        return None, "ambiguous"
    return letters[0], "ok"


def extract_think(text: str) -> str:
    """The rationale of a ``<think>…</think><answer>…</answer>`` output; empty when it has none."""
    found = THINK_RE.findall(text or "")
    return found[0].strip() if found else ""


def score_answers(problems: dict[str, dict[str, Any]], predictions: dict[str, str]) -> dict[str, Any]:
    """Accuracy per category for ``{pid: output text}``; see the module docstring."""
    unknown = [pid for pid in predictions if pid not in problems]
    if unknown:
        raise PredictionsError(f"{len(unknown)} predicted id(s) are not in problems.json: {list_some(unknown)}.")
    table = {name: {"correct": 0, "total": 0} for name in CATEGORY_NAMES}
    unparseable: list[str] = []
    invalid_option: list[str] = []
    details = []
    for pid, text in predictions.items():
        problem = problems[pid]
        gold = answer_letter(problem["answer"])
        letter, status = extract_answer(text)
        if status != "ok":
            unparseable.append(pid)
        elif letter not in OPTIONS[: len(problem["choices"])]:
            invalid_option.append(pid)
            status = "invalid_option"
        correct = status == "ok" and letter == gold
        for name, member in CATEGORIES:
            if member(problem):
                table[name]["total"] += 1
                table[name]["correct"] += correct
        table["Avg"]["total"] += 1
        table["Avg"]["correct"] += correct
        details.append({"id": pid, "pred": letter, "gold": gold, "status": status, "correct": correct})
    for cell in table.values():
        cell["acc"] = 100.0 * cell["correct"] / cell["total"] if cell["total"] else None
    return {
        "n": len(predictions),
        "accuracy": table,
        "unparseable": {"count": len(unparseable), "ids": unparseable},
        "invalid_option": {"count": len(invalid_option), "ids": invalid_option},
        "details": details,
    }


# ----------------------------------------------------------------------------------------------------------------
# Rationale quality
# ----------------------------------------------------------------------------------------------------------------


def bleu_tokens(text: str) -> list[str]:
    """MM-CoT's BLEU tokenizer: split on white space and full stops, drop empty pieces."""
    return [t for t in re.split(r"\s|\.", text) if t]


def sentence_bleu_mmcot(reference: str, hypothesis: str, n: int) -> float:
    """nltk ``sentence_bleu`` with uniform weights up to ``n`` and no smoothing (as MM-CoT's ``bleu_score``)."""
    from nltk.translate.bleu_score import sentence_bleu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns when a higher-order n-gram has no overlap (score -> ~0)
        return float(sentence_bleu([bleu_tokens(reference)], bleu_tokens(hypothesis), tuple([1.0 / n] * n)))


def score_rationales(references: dict[str, str], hypotheses: dict[str, str]) -> dict[str, Any]:
    """ROUGE-L F1 and BLEU-1/4 (x100) averaged over ids with a non-empty reference; empty hypotheses score 0."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge, bleu1, bleu4 = [], [], []
    skipped = 0
    for pid, hyp in hypotheses.items():
        ref = references.get(pid, "").strip()
        if not ref:
            skipped += 1
            continue
        hyp = hyp.strip()
        rouge.append(scorer.score(ref, hyp)["rougeL"].fmeasure if hyp else 0.0)
        bleu1.append(sentence_bleu_mmcot(ref, hyp, 1) if hyp else 0.0)
        bleu4.append(sentence_bleu_mmcot(ref, hyp, 4) if hyp else 0.0)

    def mean(xs: list[float]) -> float | None:
        return 100.0 * sum(xs) / len(xs) if xs else None

    return {
        "n": len(rouge),
        "skipped_empty_reference": skipped,
        "rougeL": mean(rouge),
        "bleu1": mean(bleu1),
        "bleu4": mean(bleu4),
    }


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"ScienceQA answer accuracy on {result['answers']['n']} problem(s)",
        f"{'category':<9}{'correct':>9}{'total':>7}{'acc':>8}",
    ]
    for name in CATEGORY_NAMES:
        cell = result["answers"]["accuracy"][name]
        acc = "n/a" if cell["acc"] is None else f"{cell['acc']:.2f}"
        lines.append(f"{name:<9}{cell['correct']:>9}{cell['total']:>7}{acc:>8}")
    unp = result["answers"]["unparseable"]
    lines.append(
        f"unparseable answers (counted wrong): {unp['count']}"
        + (f"  ids: {list_some(unp['ids'], 10)}" if unp["count"] else "")
    )
    inv = result["answers"]["invalid_option"]
    if inv["count"]:
        lines.append(
            f"answers naming a letter that is not an option (counted wrong): {inv['count']}  ids: {list_some(inv['ids'], 10)}"
        )
    rat = result.get("rationale")
    if rat:
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
        lines.append(
            f"rationale ({rat['source']}, n={rat['n']}): ROUGE-L {fmt(rat['rougeL'])}  BLEU-1 {fmt(rat['bleu1'])}  "
            f"BLEU-4 {fmt(rat['bleu4'])}"
        )
    return "\n".join(lines)


def evaluate(
    problems_path: str | Path,
    predictions_path: str | Path,
    dataset_path: str | Path | None = None,
    rationale_predictions_path: str | Path | None = None,
    rationale_dataset_path: str | Path | None = None,
    think_rationale: bool = False,
    splits_path: str | Path | None = None,
    split: str | None = None,
    check_prompt: bool = True,
) -> dict[str, Any]:
    """Load, join by id, score. Returns ``{"answers": ..., "rationale": ... or None}``."""
    problems = load_problems(problems_path)
    rows = load_predictions(predictions_path, dataset_path, check_prompt=check_prompt)
    by_id = index_by_id(rows, predictions_path)
    if split is not None:
        if splits_path is None:
            raise PredictionsError("--split needs --splits-file (pid_splits.json).")
        splits = load_splits(splits_path)
        if split not in splits:
            raise PredictionsError(f"{splits_path}: no split {split!r}; it has {', '.join(sorted(splits))}.")
        from dyncot_plugin.io.predictions import check_same_ids

        check_same_ids(
            list(by_id), splits[split], f"predictions ({predictions_path})", f"split {split!r} of {splits_path}"
        )
    # The label (when present) must agree with problems.json: catches a wrong problems file or id mapping.
    disagree = []
    for pid, row in by_id.items():
        label = row.get("label")
        if isinstance(label, str) and pid in problems:
            letter, status = extract_answer(label)
            if status == "ok" and letter != answer_letter(problems[pid]["answer"]):
                disagree.append(pid)
    if disagree:
        raise PredictionsError(
            f"{predictions_path}: the label of {len(disagree)} row(s) names another answer than {problems_path}: "
            f"{list_some(disagree)}. Wrong problems file, or ids attached to the wrong rows?"
        )
    answers = score_answers(problems, {pid: r["predict"] for pid, r in by_id.items()})

    rationale = None
    if rationale_predictions_path is not None or think_rationale:
        if rationale_predictions_path is not None:
            rat_rows = load_predictions(rationale_predictions_path, rationale_dataset_path, check_prompt=check_prompt)
            hyps = {
                pid: clean_rationale(r["predict"])
                for pid, r in index_by_id(rat_rows, rationale_predictions_path).items()
            }
            source = "stage-1 predictions"
        else:
            hyps = {pid: clean_rationale(extract_think(r["predict"])) for pid, r in by_id.items()}
            source = "<think> of the answer predictions"
        unknown = [pid for pid in hyps if pid not in problems]
        if unknown:
            raise PredictionsError(f"{len(unknown)} rationale id(s) are not in problems.json: {list_some(unknown)}.")
        refs = {pid: rationale_text(problems[pid]) for pid in hyps}
        rationale = {"source": source, **score_rationales(refs, hyps)}
    return {"answers": answers, "rationale": rationale}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--problems", required=True, help="ScienceQA problems.json (gold answers and categories).")
    parser.add_argument(
        "--predictions",
        required=True,
        help="Answer predictions: generated_predictions.jsonl (with --dataset-dir/--dataset or --dataset-file) or JSONL with 'id'.",
    )
    parser.add_argument("--dataset-dir", default=None, help="dataset_dir with dataset_info.json.")
    parser.add_argument(
        "--dataset", default=None, help="Dataset the answer predictions were made on (e.g. sqa_test_stage2)."
    )
    parser.add_argument("--dataset-file", default=None, help="Or the dataset file itself.")
    parser.add_argument("--rationale-predictions", default=None, help="Stage-1 predictions, for ROUGE-L/BLEU.")
    parser.add_argument(
        "--rationale-dataset", default=None, help="Dataset the stage-1 predictions were made on (in --dataset-dir)."
    )
    parser.add_argument("--rationale-dataset-file", default=None, help="Or that dataset file itself.")
    parser.add_argument(
        "--think-rationale", action="store_true", help="Score the <think> part of the answer predictions as rationale."
    )
    parser.add_argument(
        "--splits-file",
        default=None,
        help="pid_splits.json, with --split: require the predictions to cover it exactly.",
    )
    parser.add_argument("--split", default=None, help="Split the predictions must cover exactly (default: any subset).")
    parser.add_argument("--output", default=None, help="Write the metrics as JSON here.")
    parser.add_argument(
        "--details", default=None, help="Write one JSON line per problem (id, pred, gold, status, correct)."
    )
    parser.add_argument(
        "--no-prompt-check", action="store_true", help="Pair predictions with the dataset by label only."
    )


def run(args: argparse.Namespace) -> int:
    dataset_path = dataset_path_from_args(args.dataset_file, args.dataset_dir, args.dataset)
    rat_dataset = dataset_path_from_args(args.rationale_dataset_file, args.dataset_dir, args.rationale_dataset)
    result = evaluate(
        args.problems,
        args.predictions,
        dataset_path=dataset_path,
        rationale_predictions_path=args.rationale_predictions,
        rationale_dataset_path=rat_dataset,
        think_rationale=args.think_rationale,
        splits_path=args.splits_file,
        split=args.split,
        check_prompt=not args.no_prompt_check,
    )
    details = result["answers"].pop("details")
    print(format_table(result))
    if args.output:
        atomic_write_json(args.output, result, indent=2)
    if args.details:
        write_jsonl(args.details, details)
    return 0
