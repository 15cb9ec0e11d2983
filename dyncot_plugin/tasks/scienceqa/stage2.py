"""Build MM-CoT stage-2 datasets (QCM + Solution: rationale -> answer) from gold or stage-1 predicted rationales.

Reads ``<prefix>_<split>_answer`` (inputs, images and answer targets) from a dataset_dir made by
``dyncot-data convert-scienceqa`` and writes ``<prefix>_<split>_stage2`` (or ``--name``), whose user text is the
QCM input followed by ``Solution: <rationale>`` (MM-CoT's ``QCMG`` input) and whose target is
``The answer is (X).``.

Rationales come from one of two sources (``--rationale``):

* ``predicted``: stage-1 predictions. LLaMA-Factory's ``generated_predictions.jsonl`` has no ids, so the builder
  attaches them by re-reading the dataset that was predicted on (``--predictions-dataset``, by default
  ``<prefix>_<split>_rationale``), checking counts, labels and prompts row by row
  (:mod:`dyncot_plugin.io.predictions`); a file that already has an ``id`` column is used as is. The
  predictions are then joined to the problems **by id**: an id of the split without prediction, an id predicted
  that is not in the split, or an id predicted twice is an error that lists them.
* ``gold``: the gold lecture + solution (from ``<prefix>_<split>_rationale``), joined by id the same way.

Default: ``predicted`` when ``--predictions`` is given, ``gold`` otherwise. Stage-2 *training* uses gold
rationales by default, like MM-CoT (its training set is built without generated rationales; only val/test read
``--eval_le``/``--test_le``): gold rationales are available for every training problem, cost no stage-1 pass
over the training set, and teach the answer model to read a correct rationale. Evaluation splits must use
predicted rationales (gold ones there are an oracle upper bound; the command says so when it builds one).
See docs/scienceqa.md for the trade-off (predicted training rationales match the test-time distribution).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dyncot_plugin.io.datasets import (
    check_dataset_name,
    load_rows,
    require_message,
    resolve_dataset_file,
    update_dataset_info,
)
from dyncot_plugin.io.files import atomic_write_json, locked_files
from dyncot_plugin.io.predictions import PredictionsError, check_same_ids, index_by_id, load_predictions, write_jsonl
from dyncot_plugin.tasks.scienceqa.convert import DEFAULT_PREFIX, stage2_user_text

TRAIN_SPLITS = ("train", "trainval", "minitrain")


def _rows_by_id(path: Path) -> tuple[list[str], dict[str, dict[str, Any]]]:
    rows = load_rows(path)
    order: list[str] = []
    by_id: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "id" not in row:
            raise PredictionsError(f"{path}, row {i}: no 'id' key.")
        pid = str(row["id"])
        if pid in by_id:
            raise PredictionsError(f"{path}, row {i}: id {pid!r} appears twice.")
        order.append(pid)
        by_id[pid] = row
    return order, by_id


def build_stage2(
    dataset_dir: str | Path,
    split: str,
    prefix: str = DEFAULT_PREFIX,
    rationale: str | None = None,
    predictions: str | Path | None = None,
    predictions_dataset: str | None = None,
    name: str | None = None,
    check_prompt: bool = True,
    save_predictions: str | Path | None = None,
) -> dict[str, Any]:
    """Write the stage-2 dataset; return ``{"name", "file", "rows", "rationale"}``."""
    dataset_dir = Path(dataset_dir)
    rationale = rationale or ("predicted" if predictions is not None else "gold")
    if rationale not in ("gold", "predicted"):
        raise PredictionsError(f"rationale: got {rationale!r}; expected 'gold' or 'predicted'.")
    if rationale == "gold" and predictions is not None:
        raise PredictionsError("--rationale gold uses the gold lecture + solution; drop --predictions.")
    if rationale == "predicted" and predictions is None:
        raise PredictionsError("--rationale predicted needs --predictions (stage-1 generated_predictions.jsonl).")

    answer_name = f"{prefix}_{split}_answer"
    answer_path = resolve_dataset_file(dataset_dir, answer_name)
    order, answer_rows = _rows_by_id(answer_path)

    rationale_name = predictions_dataset or f"{prefix}_{split}_rationale"
    if rationale == "gold":
        rat_path = resolve_dataset_file(dataset_dir, rationale_name)
        rat_order, rat_rows = _rows_by_id(rat_path)
        source = {pid: require_message(r, "assistant", f"{rat_path}, id {pid!r}") for pid, r in rat_rows.items()}
        check_same_ids(rat_order, order, f"gold rationales ({rat_path})", f"dataset {answer_name} ({answer_path})")
    else:
        rat_path = resolve_dataset_file(dataset_dir, rationale_name)
        pred_rows = load_predictions(predictions, rat_path, check_prompt=check_prompt)
        by_id = index_by_id(pred_rows, predictions)
        check_same_ids(
            [r["id"] for r in pred_rows],
            order,
            f"stage-1 predictions ({predictions})",
            f"dataset {answer_name} ({answer_path})",
        )
        source = {pid: r["predict"] for pid, r in by_id.items()}
        if save_predictions is not None:
            write_jsonl(save_predictions, pred_rows)

    out_rows = []
    for pid in order:
        row = answer_rows[pid]
        where = f"{answer_path}, id {pid!r}"
        out_rows.append(
            {
                "id": pid,
                "messages": [
                    {"role": "user", "content": stage2_user_text(require_message(row, "user", where), source[pid])},
                    {"role": "assistant", "content": require_message(row, "assistant", where)},
                ],
                "images": list(row.get("images") or []),
            }
        )
    name = check_dataset_name(name or f"{prefix}_{split}_stage2", "--name" if name else "dataset name (--prefix, --split)")
    file_name = f"{name}.json"
    with locked_files(dataset_dir / file_name):
        atomic_write_json(dataset_dir / file_name, out_rows)
        update_dataset_info(
            dataset_dir, name, file_name, has_images=any(r["images"] for r in out_rows), cot_column=None
        )
    return {"name": name, "file": str(dataset_dir / file_name), "rows": len(out_rows), "rationale": rationale}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-dir", required=True, help="dataset_dir written by `dyncot-data convert-scienceqa`.")
    parser.add_argument("--split", required=True, help="Split to build (train, val, test, ...).")
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help="Dataset name prefix used at conversion (default: sqa)."
    )
    parser.add_argument(
        "--rationale",
        choices=("gold", "predicted"),
        default=None,
        help="Rationale source; default: predicted when --predictions is given, else gold (see docs/scienceqa.md).",
    )
    parser.add_argument(
        "--predictions",
        default=None,
        help="Stage-1 predictions: LLaMA-Factory generated_predictions.jsonl, or a JSON-lines file with an 'id' column.",
    )
    parser.add_argument(
        "--predictions-dataset",
        default=None,
        help="Dataset the stage-1 predictions were made on (default: <prefix>_<split>_rationale).",
    )
    parser.add_argument("--name", default=None, help="Output dataset name (default: <prefix>_<split>_stage2).")
    parser.add_argument(
        "--save-predictions", default=None, help="Also write the stage-1 predictions with ids here (JSONL)."
    )
    parser.add_argument("--no-prompt-check", action="store_true", help="Pair predictions by label only (see docs).")


def run(args: argparse.Namespace) -> int:
    result = build_stage2(
        args.dataset_dir,
        args.split,
        prefix=args.prefix,
        rationale=args.rationale,
        predictions=args.predictions,
        predictions_dataset=args.predictions_dataset,
        name=args.name,
        check_prompt=not args.no_prompt_check,
        save_predictions=args.save_predictions,
    )
    print(f"{result['name']}: {result['rows']} rows ({result['rationale']} rationales) -> {result['file']}")
    if result["rationale"] == "gold" and args.split not in TRAIN_SPLITS:
        print(
            f"warning: split {args.split!r} uses gold rationales: this is an oracle setting, not MM-CoT's evaluation "
            f"(give --predictions from stage 1 for that).",
            file=sys.stderr,
        )
    return 0
