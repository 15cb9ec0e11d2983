"""Attach problem ids to LLaMA-Factory's ``generated_predictions.jsonl`` (it has none), safely.

``llamafactory-cli train`` with ``do_predict: true`` writes one ``{"prompt", "predict", "label"}`` row per row of
``eval_dataset``, in the dataset's order, without the row's id. :func:`attach_ids` re-reads the dataset file that
was predicted on and pairs the two files row by row, but only after checking that they really belong together:

* the row counts are equal (``max_samples`` or a different dataset changes them);
* every ``label`` (the gold answer as LLaMA-Factory decoded it) equals the dataset row's assistant message, both
  through :func:`normalize` (a label that ``cutoff_len`` truncated must still be a non-empty prefix of it; those
  rows are counted);
* every ``prompt`` contains the row's user text up to its ``Options:`` line (the whole user text when it has
  none), so files whose rows carry the same label (``The answer is (A).``) but were shuffled are caught too.

Any failure raises :class:`PredictionsError` naming the files, the row and what differed. The result is
``[{"id", "index", "predict", "label"}, ...]``; downstream code (``build-stage2``, ``dyncot-eval scienceqa``) then
joins on ``id`` only, never on position.

CLI: ``python -m dyncot_plugin.io.predictions --predictions generated_predictions.jsonl
--dataset-dir data/sqa --dataset sqa_test_rationale --out predictions_with_ids.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dyncot_plugin.io.datasets import IMAGE_TOKEN, load_rows, require_message, resolve_dataset_file
from dyncot_plugin.io.files import atomic_open, locked_files
from dyncot_plugin.io.read import InputError, read_jsonl

_MAX_LISTED = 20


class PredictionsError(InputError):
    """Predictions that cannot be paired with (or joined to) their problems; the message says where and why."""


_SPACE_BEFORE_PUNCT = re.compile(r" (?=[.,?!'])")


def normalize(text: str | None) -> str:
    """How two renderings of the same text are compared: NFC, white space collapsed, and no space before
    ``. , ? ! '`` (what a tokenizer's ``clean_up_tokenization_spaces`` may remove when decoding)."""
    return _SPACE_BEFORE_PUNCT.sub("", " ".join(unicodedata.normalize("NFC", text or "").split()))


def list_some(items: Iterable[Any], limit: int = _MAX_LISTED) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f", … ({len(items)} in all)" if len(items) > limit else "")


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------


def read_generated_predictions(path: str | Path, require_label: bool = True) -> list[dict[str, Any]]:
    """LLaMA-Factory's ``generated_predictions.jsonl``: every row has a string ``predict`` (and ``label``)."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"predictions file not found: {path}")
    rows = read_jsonl(path, "predictions file")
    if not rows:
        raise PredictionsError(f"{path}: no predictions (the file is empty).")
    for lineno, row in enumerate(rows, 1):
        for key in ("predict", "label") if require_label else ("predict",):
            if not isinstance(row.get(key), str):
                raise PredictionsError(
                    f"{path}, row {lineno}: key {key!r} is {row.get(key)!r}; expected a string "
                    f"(LLaMA-Factory's generated_predictions.jsonl has prompt/predict/label)."
                )
    return rows


def prompt_key(user_text: str) -> str:
    """The part of the user text that must appear in the decoded prompt: up to the ``Options:`` line if any."""
    text = user_text.replace(IMAGE_TOKEN, "")
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("Options:"):
            return "\n".join(lines[: i + 1])
    return text


# ----------------------------------------------------------------------------------------------------------------
# Pairing
# ----------------------------------------------------------------------------------------------------------------


def check_pairing(
    preds: list[dict[str, Any]],
    data: list[dict[str, Any]],
    predictions_path: str | Path,
    dataset_path: str | Path,
    *,
    check_labels: bool = True,
    check_prompt: bool = True,
    hint: str = "",
) -> int:
    """Check that ``preds`` (LLaMA-Factory predictions) were generated on ``data``, row by row (see the module
    docstring); returns the number of labels that ``cutoff_len`` truncated. ``hint`` ends the mismatch error."""
    if len(preds) != len(data):
        raise PredictionsError(
            f"{predictions_path} has {len(preds)} rows but the dataset it should come from, {dataset_path}, has "
            f"{len(data)}: rows are paired by position, so predict on the whole dataset (no max_samples) with this "
            f"exact file as eval_dataset."
        )
    truncated = 0
    mismatches: list[str] = []
    for i, (pred, row) in enumerate(zip(preds, data)):
        where = f"{dataset_path}, row {i}"
        name = f"row {i}" + (f" (id {str(row['id'])!r})" if "id" in row else "")
        if check_labels and isinstance(pred.get("label"), str):
            expected = normalize(require_message(row, "assistant", where))
            label = normalize(pred["label"])
            if label != expected:
                if label and expected.startswith(label):
                    truncated += 1
                else:
                    mismatches.append(f"{name}: label {label[:80]!r} but the dataset says {expected[:80]!r}")
        if check_prompt and isinstance(pred.get("prompt"), str):
            key = normalize(prompt_key(require_message(row, "user", where)))
            if key and key not in normalize(pred["prompt"]):
                mismatches.append(f"{name}: the prompt does not contain the row's input {key[:80]!r}")
        if len(mismatches) >= 5:
            break
    if mismatches:
        raise PredictionsError(
            f"{predictions_path} does not match {dataset_path} row by row (shuffled, or predicted on another "
            f"dataset, or the prompt was truncated by cutoff_len):\n  " + "\n  ".join(mismatches) + hint
        )
    return truncated


def attach_ids(
    predictions_path: str | Path, dataset_path: str | Path, check_prompt: bool = True
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Pair ``generated_predictions.jsonl`` with the dataset it was predicted on; see the module docstring.

    Returns ``(rows, stats)`` where ``rows`` are ``{"id", "index", "predict", "label"}`` in file order and
    ``stats`` counts ``rows`` and ``truncated_labels``.
    """
    preds = read_generated_predictions(predictions_path)
    data = load_rows(dataset_path)
    for i, row in enumerate(data):
        if "id" not in row:
            raise PredictionsError(
                f"{dataset_path}, row {i}: no 'id' key; datasets used with this tool need one id per row."
            )
    truncated = check_pairing(preds, data, predictions_path, dataset_path, check_prompt=check_prompt)
    out = [
        {"id": str(row["id"]), "index": i, "predict": pred["predict"], "label": pred["label"]}
        for i, (pred, row) in enumerate(zip(preds, data))
    ]
    return out, {"rows": len(out), "truncated_labels": truncated}


def load_predictions(
    predictions_path: str | Path, dataset_path: str | Path | None = None, check_prompt: bool = True
) -> list[dict[str, Any]]:
    """Predictions with ids: the file's own ``id`` column when every row has one, else :func:`attach_ids`."""
    rows = read_generated_predictions(predictions_path, require_label=False)
    if all("id" in r for r in rows):
        for n, r in enumerate(rows, 1):
            if not isinstance(r.get("predict"), str):
                raise PredictionsError(
                    f"{predictions_path}, row {n}: key 'predict' is {r.get('predict')!r}; expected a string."
                )
            r["id"] = str(r["id"])
        return rows
    if dataset_path is None:
        raise PredictionsError(
            f"{predictions_path} has no 'id' column (LLaMA-Factory's generated_predictions.jsonl never has one): "
            f"also give the dataset that was predicted on, so that ids can be attached and checked."
        )
    return attach_ids(predictions_path, dataset_path, check_prompt=check_prompt)[0]


def index_by_id(rows: list[dict[str, Any]], source: str | Path) -> dict[str, dict[str, Any]]:
    """``{id: row}``; a duplicated id is an error."""
    by_id: dict[str, dict[str, Any]] = {}
    dups: list[str] = []
    for r in rows:
        pid = str(r["id"])
        if pid in by_id:
            dups.append(pid)
        by_id[pid] = r
    if dups:
        raise PredictionsError(f"{source}: problem id(s) predicted more than once: {list_some(dups)}.")
    return by_id


def check_same_ids(found: Iterable[str], expected: Iterable[str], found_what: str, expected_what: str) -> None:
    """Raise listing the ids that ``found`` lacks (missing) and has in excess (extra) with respect to ``expected``."""
    found_set, expected_set = set(found), set(expected)
    missing = [i for i in expected if i not in found_set]
    extra = sorted(found_set - expected_set)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} id(s) of {expected_what} have no prediction: {list_some(missing)}")
        if extra:
            parts.append(f"{len(extra)} id(s) in {found_what} are not in {expected_what}: {list_some(extra)}")
        raise PredictionsError(
            f"{found_what} and {expected_what} do not cover the same problems. " + "; ".join(parts) + "."
        )


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write JSON lines atomically (``io.files.atomic_open``: temporary file, then ``os.replace``), under the file's
    write lock (:func:`~dyncot_plugin.io.files.locked_files`)."""
    with locked_files(path), atomic_open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def dataset_path_from_args(dataset_file: str | None, dataset_dir: str | None, dataset: str | None) -> Path | None:
    """``--dataset-file F`` or ``--dataset-dir D --dataset NAME`` (resolved through dataset_info.json)."""
    if dataset_file:
        return Path(dataset_file)
    if dataset:
        if not dataset_dir:
            raise PredictionsError("--dataset needs --dataset-dir (the folder with dataset_info.json).")
        return resolve_dataset_file(dataset_dir, dataset)
    return None


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--predictions", required=True, help="LLaMA-Factory generated_predictions.jsonl.")
    parser.add_argument("--dataset-file", default=None, help="The dataset file that was predicted on (JSON list).")
    parser.add_argument("--dataset-dir", default=None, help="dataset_dir with dataset_info.json (with --dataset).")
    parser.add_argument("--dataset", default=None, help="Name of the eval_dataset that was predicted on.")
    parser.add_argument(
        "-o", "--output", "--out", dest="output", required=True,
        help="Output JSON lines with id, index, predict, label. (--out: old spelling)",
    )
    parser.add_argument("--no-prompt-check", action="store_true", help="Only check labels, not prompts.")


def run(args: argparse.Namespace) -> int:
    dataset_path = dataset_path_from_args(args.dataset_file, args.dataset_dir, args.dataset)
    if dataset_path is None:
        raise PredictionsError("give --dataset-file or --dataset-dir with --dataset.")
    rows, stats = attach_ids(args.predictions, dataset_path, check_prompt=not args.no_prompt_check)
    write_jsonl(args.output, rows)
    print(f"{stats['rows']} predictions with ids -> {args.output}")
    if stats["truncated_labels"]:
        print(f"note: {stats['truncated_labels']} label(s) were truncated by cutoff_len (matched as prefixes).")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dyncot_plugin.io.predictions", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
