"""Score keyphrase predictions with CMKP's protocol: F1@1/3/5/M and MAP@5 on all, present, absent and unseen keyphrases, plus the CoT trigger rate and generated length.

Inputs (one of):

* LLaMA-Factory's ``generated_predictions.jsonl`` (``{"prompt", "predict", "label"}`` per row, in eval-dataset
  order) with ``--dataset`` (the dataset JSON it was predicted on: ``text`` gives the post for present/absent,
  ``keyphrases`` the gold) -- or with ``--src`` (a CMKP source file, same posts in the same order);
* a CMKP prediction file (one line per post, keyphrases separated by ``;``) with ``--src``
  (``post text<sep>kp1;kp2<sep>image-url`` per line).

``--train`` (a dataset JSON or a CMKP source file) adds the unseen scores. Prints a table; writes the JSON
(``--output``, by default ``<predictions>.mmkp_eval.json`` next to the predictions file); ``--json`` prints the
JSON instead of the table. The protocol is documented in docs/eval.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dyncot_plugin.cot_format import KINDS, parse_output, summarize_outputs
from dyncot_plugin.io.datasets import load_rows
from dyncot_plugin.io.files import paused_gc
from dyncot_plugin.io.predictions import check_pairing, read_generated_predictions
from dyncot_plugin.io.read import InputError, read_lines, read_text, require_rows
from dyncot_plugin.tasks.mmkp.metrics import VARIANTS, evaluate_keyphrases
from dyncot_plugin.tasks.mmkp.normalize import label_keyphrases, split_keyphrases_cmkp
from dyncot_plugin.tasks.mmkp.rows import row_keyphrases

SEP = "<sep>"


class EvalInputError(InputError):
    """Input files that cannot be evaluated together; the message names the files and what is wrong."""


# ------------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------------


def _is_jsonl_predictions(path: Path) -> bool:
    if path.suffix in (".jsonl", ".json"):
        return True
    for line in read_lines(path, "predictions file"):
        if line.strip():
            return line.lstrip().startswith("{")
    return False


def _row_keyphrases(row: dict[str, Any], path: Path, i: int) -> list[str]:
    kps = row_keyphrases(row)
    if kps is None:
        raise EvalInputError(f"{path}, row {i}: no 'keyphrases' list and no assistant message to read them from.")
    return kps


def read_cmkp_src(path: Path) -> tuple[list[str], list[list[str]]]:
    """Post texts and gold keyphrases of a CMKP source file, split exactly as CMKP does."""
    sources, golds = [], []
    for lineno, line in enumerate(read_lines(path, "source file"), 1):
        parts = line.strip().split(SEP)
        if len(parts) < 2:
            raise EvalInputError(f"{path}, line {lineno}: expected 'post text<sep>kp1;kp2<sep>image-url'.")
        sources.append(parts[0])
        golds.append(split_keyphrases_cmkp(parts[1]))
    return require_rows(sources, path, "posts"), golds


def read_train_keyphrases(path: Path) -> set[str]:
    """The training keyphrase strings of a dataset JSON (``keyphrases`` or the assistant answer) or CMKP file."""
    if not path.is_file():
        raise EvalInputError(f"training file not found: {path}")
    head = read_text(path, "training file").lstrip()[:1]
    if path.suffix in (".json", ".jsonl") or head in ("[", "{"):
        rows = load_rows(path)
        return {kp for i, row in enumerate(rows) for kp in _row_keyphrases(row, path, i) if kp}
    _, golds = read_cmkp_src(path)
    return {kp for kps in golds for kp in kps if kp}


# ------------------------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------------------------


def evaluate_files(*args, **kwargs) -> dict:
    """Read the files, parse the outputs and score them; returns the JSON-able result (see docs/eval.md).

    Arguments as :func:`_evaluate_files`. The cyclic garbage collector is paused meanwhile: the run allocates
    hundreds of thousands of small objects and no cycles, and collections would cost a third of the time.
    """
    with paused_gc():
        return _evaluate_files(*args, **kwargs)


def _evaluate_files(
    predictions: str | Path,
    dataset: str | Path | None = None,
    src: str | Path | None = None,
    train: str | Path | None = None,
    ks=(1, 3, 5),
    variant: str = "cmkp",
    tokenizer: Any = None,
    label_check: bool = True,
) -> dict:
    pred_path = Path(predictions)
    if not pred_path.is_file():
        raise EvalInputError(f"predictions file not found: {pred_path}")
    if dataset is not None and src is not None:
        raise EvalInputError("give either --dataset (a dataset JSON) or --src (a CMKP source file), not both")
    for p, what in ((dataset, "dataset"), (src, "source")):
        if p is not None and not Path(p).is_file():
            raise EvalInputError(f"{what} file not found: {p}")

    notes: list[str] = []
    sources: list[str] | None = None
    golds: list[list[str]]
    truncated = 0
    if _is_jsonl_predictions(pred_path):
        fmt = "llamafactory"
        rows = read_generated_predictions(pred_path, require_label=False)
        outputs = [r["predict"] for r in rows]
        if dataset is not None:
            data_path = Path(dataset)
            data = load_rows(data_path)
            truncated = check_pairing(
                rows, data, pred_path, data_path, check_labels=label_check, check_prompt=False,
                hint="\n(pass --no-label-check to score anyway)",
            )
            golds = [_row_keyphrases(row, data_path, i) for i, row in enumerate(data)]
            if all(isinstance(row.get("text"), str) for row in data):
                sources = [row["text"] for row in data]
            else:
                notes.append(f"{data_path} rows lack a 'text' field: present/absent scores skipped")
        elif src is not None:
            sources, golds = read_cmkp_src(Path(src))
            if len(golds) != len(rows):
                raise EvalInputError(
                    f"{pred_path} has {len(rows)} rows but the source file {src} has {len(golds)} lines; "
                    f"they must hold the same posts in the same order."
                )
        else:
            if not all(isinstance(r.get("label"), str) for r in rows):
                raise EvalInputError(f"{pred_path}: rows lack 'label'; give --dataset or --src for the gold keyphrases")
            golds = [label_keyphrases(r["label"]) for r in rows]
            notes.append("no --dataset/--src: gold keyphrases read from the labels; present/absent scores skipped")
    else:
        fmt = "cmkp"
        if src is None:
            raise EvalInputError(
                f"{pred_path} is a CMKP-format prediction file (one ';'-separated line per post): give --src, "
                f"the CMKP source file (post<sep>keyphrases<sep>image-url) of the same posts"
            )
        outputs = require_rows(read_lines(pred_path, "predictions file"), pred_path, "predictions")
        sources, golds = read_cmkp_src(Path(src))
        if len(outputs) != len(golds):
            raise EvalInputError(
                f"{pred_path} has {len(outputs)} lines but the source file {src} has {len(golds)}; "
                f"they must hold the same posts in the same order."
            )

    parsed = [parse_output(o) for o in outputs]
    preds = [split_keyphrases_cmkp(p.answer) for p in parsed]
    train_set = read_train_keyphrases(Path(train)) if train is not None else None

    result = evaluate_keyphrases(preds, golds, sources, train_set, ks=ks, variant=variant)
    summary = summarize_outputs(outputs, tokenizer=tokenizer, parsed=parsed)
    result["cot_rate"] = summary["cot_rate"]
    result["gen_len"] = summary["gen_len"]
    result["outputs"] = {k: summary[k] for k in ("num_outputs", "num_think", "well_formed_rate", "kinds")}
    result["protocol"] = "cmkp" if variant == "cmkp" else f"cmkp ({variant} F1)"
    result["files"] = {
        "predictions": str(pred_path),
        "format": fmt,
        "dataset": str(dataset) if dataset is not None else None,
        "src": str(src) if src is not None else None,
        "train": str(train) if train is not None else None,
    }
    if train_set is not None:
        result["num_train_keyphrases"] = len(train_set)
    if truncated:
        notes.append(f"{truncated} labels were truncated (cutoff_len); gold keyphrases come from the dataset")
    result["notes"] = notes
    return result


# ------------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:6.2f}"


def format_table(result: dict) -> str:
    ks = [k[3:] for k in result if k.startswith("f1@")]
    cols = [f"F1@{k}" for k in ks] + ["MAP@5" if "map@5" in result else f"MAP@{ks[-1]}"]
    map_key = "map@5" if "map@5" in result else f"map@{ks[-1]}"
    f1_note = "mean of per-post F1" if result.get("variant") == "per_post" else "harmonic mean of macro P and R"
    lines = [
        f"MMKP evaluation, CMKP protocol ({f1_note}); scores in %; {result['num_posts']} posts",
        f"{'':10}{'posts':>7}{'gold':>7}{'pred':>7} " + "".join(f"{c:>7}" for c in cols),
    ]
    for name, d in (("all", result), ("present", result.get("present")), ("absent", result.get("absent")),
                    ("unseen", result.get("unseen"))):
        if d is None:
            continue
        vals = "".join(f" {_pct(d[f'f1@{k}'])}" for k in ks) + f" {_pct(d[map_key])}"
        lines.append(f"{name:10}{d['num_posts']:>7}{d['num_targets']:>7}{d['num_predictions']:>7} {vals}")
    if result.get("present") is None:
        lines.append("(present/absent: no post texts)")
    if result.get("unseen") is None:
        lines.append("(unseen: give --train)")
    lines.append(
        f"predictions removed: {result['num_duplicates']} duplicates (after stemming), {result['num_invalid']} invalid"
    )
    out = result.get("outputs")
    if out:
        kinds = ", ".join(f"{k} {out['kinds'][k]}" for k in KINDS if out["kinds"].get(k))
        lines.append(
            f"outputs: {out['num_outputs']}; CoT triggered {out['num_think']} ({100 * result['cot_rate']:.2f}%); "
            f"well-formed {100 * out['well_formed_rate']:.2f}%; {kinds}"
        )
    gl = result.get("gen_len")
    if gl:
        def f(x):
            return "-" if x is None else f"{x:.2f}"

        lines.append(
            f"mean generated length ({gl['unit']}): all {f(gl['all'])}, with thinking {f(gl['with_think'])}, "
            f"without thinking {f(gl['without_think'])}"
        )
    base = result.get("gen_len_vs_baseline")
    if base:
        lines.append(
            f"vs baseline {base['baseline_file']}: {base['baseline']:.2f} -> {base['ours']:.2f} "
            f"({100 * base['reduction']:.2f}% shorter)"
        )
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------------


def _parse_ks(text: str) -> tuple:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.upper() == "M":
            out.append("M")
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"--ks: {part!r} is not a positive integer or M")
    return tuple(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--predictions", required=True, help="generated_predictions.jsonl, or a CMKP prediction file")
    parser.add_argument("--dataset", help="the dataset JSON the predictions were generated on (text, keyphrases)")
    parser.add_argument("--src", help="CMKP source file of the same posts: post<sep>kp1;kp2<sep>image-url per line")
    parser.add_argument("--train", help="training file (dataset JSON or CMKP source file) for the unseen scores")
    parser.add_argument("--variant", choices=VARIANTS, default="cmkp",
                        help="cmkp: F1 = harmonic mean of macro P and R (default); per_post: mean per-post F1")
    parser.add_argument("--ks", type=_parse_ks, default=(1, 3, 5), help="cut-offs, comma separated (default 1,3,5; M is always added)")
    parser.add_argument("--tokenizer", help="tokenizer path/name: count generated length in its tokens (default: words)")
    parser.add_argument("--output", help="where to write the JSON (default: <predictions>.mmkp_eval.json alongside)")
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    parser.add_argument("--baseline", help="a previous dyncot-eval JSON (e.g. Fine-tune-CoT): report the length cut")
    parser.add_argument("--no-label-check", action="store_true",
                        help="do not check that each label equals the dataset row's answer")


def _default_output(pred_path: Path) -> Path:
    return pred_path.with_name(pred_path.stem + ".mmkp_eval.json")


def run(args: argparse.Namespace) -> int:
    result = evaluate_files(
        args.predictions,
        dataset=args.dataset,
        src=args.src,
        train=args.train,
        ks=args.ks,
        variant=args.variant,
        tokenizer=args.tokenizer,
        label_check=not args.no_label_check,
    )
    if args.baseline:
        try:
            base = json.loads(Path(args.baseline).read_text(encoding="utf-8"))
            b_len = base["gen_len"]["all"]
            b_unit = base["gen_len"]["unit"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EvalInputError(f"--baseline {args.baseline}: not a dyncot-eval JSON with gen_len ({exc})") from exc
        ours = result["gen_len"]["all"]
        if b_unit != result["gen_len"]["unit"]:
            raise EvalInputError(
                f"--baseline {args.baseline} counts length in {b_unit}, this run in {result['gen_len']['unit']}"
            )
        if b_len and ours is not None:
            result["gen_len_vs_baseline"] = {
                "baseline_file": str(args.baseline),
                "baseline": b_len,
                "ours": ours,
                "reduction": 1.0 - ours / b_len,
            }

    text = json.dumps(result, indent=2, ensure_ascii=False)
    out_path = Path(args.output) if args.output else _default_output(Path(args.predictions))
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text + "\n", encoding="utf-8")
        written = str(out_path)
    except OSError as exc:
        if args.output:
            print(f"dyncot-eval mmkp: error: cannot write {out_path}: {exc}", file=sys.stderr)
            return 2
        written = None
        print(f"dyncot-eval mmkp: warning: cannot write {out_path} ({exc}); use --output", file=sys.stderr)
    if args.json:
        print(text)
    else:
        print(format_table(result))
        if written:
            print(f"JSON: {written}")
    return 0
