"""The paper's table from N prediction runs on the same posts, every difference with a paired bootstrap interval.

    dyncot-eval table sft=saves/sft/generated_predictions.jsonl cot=saves/cot/generated_predictions.jsonl \
        dynamic=saves/dynamic/generated_predictions.jsonl --dataset test.json --train train.json [--baseline sft]

Rows are runs (``NAME=PREDICTIONS``; thinking-mode files of one model are runs like any other); columns F1@1/3/5/M
and MAP@5 on all, present and absent keyphrases (with post texts: --dataset or --src) and unseen ones (--train),
the CoT rate, the mean generated length and its relative change against the baseline run (``--baseline NAME``,
default the first). Every value is the run's ``dyncot-eval mmkp`` score on its own; every difference against the
baseline comes with its paired bootstrap interval and p-value (``--resamples`` resamples of the posts, ``--seed``;
:mod:`~dyncot_plugin.tasks.mmkp.bootstrap`). The runs must hold the same posts in the same order with the same
gold (and labels): otherwise the command stops, naming both runs and the row, before anything is scored or written.

Prints the Markdown table and writes ``PREFIX.md`` (value, and the difference with its interval), ``PREFIX.csv``
and ``PREFIX.tex`` (booktabs) and ``PREFIX.json`` (everything: p-values, each run's whole evaluation, the
resampling); ``--output PREFIX``, by default ``mmkp_table`` next to the baseline's predictions. docs/eval.md,
"The table of N runs", says how to read it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dyncot_plugin.io.files import StagedWrites, paused_gc
from dyncot_plugin.io.read import InputError
from dyncot_plugin.tasks.mmkp.evaluate import (
    add_bootstrap_arguments,
    add_scoring_arguments,
    interval_layout,
    run_matrices,
    score_files,
)

__all__ = ["TableError", "build_table", "format_csv", "format_latex", "format_markdown", "parse_runs"]

_NAME = re.compile(r"^[A-Za-z0-9][\w.+-]*$")
SUBSETS = ("all", "present", "absent", "unseen")
DEFAULT_STEM = "mmkp_table"


class TableError(InputError):
    """A bad run list: no name, a name given twice, an unknown baseline."""


def parse_runs(values: Sequence[str]) -> list[tuple[str, str]]:
    """``NAME=PREDICTIONS`` values as ``(name, path)``; names are distinct (letters, digits, ``_ . + -``)."""
    out: list[tuple[str, str]] = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not _NAME.match(name) or not path:
            raise TableError(
                f"{value!r}: give each run as NAME=PREDICTIONS (e.g. sft=saves/sft/generated_predictions.jsonl; "
                f"NAME: letters, digits, _ . + -)"
            )
        if name in dict(out):
            raise TableError(f"run name {name!r} is given twice; each run needs its own name")
        out.append((name, path))
    if not out:
        raise TableError("no run given: dyncot-eval table NAME=PREDICTIONS [NAME=PREDICTIONS ...]")
    return out


def build_table(
    runs: Sequence[tuple[str, str | Path]],
    dataset: str | Path | None = None,
    src: str | Path | None = None,
    train: str | Path | None = None,
    baseline: str | None = None,
    ks=(1, 3, 5),
    variant: str = "cmkp",
    tokenizer: Any = None,
    label_check: bool = True,
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """The table's JSON (see docs/eval.md): every run's scores (its ``dyncot-eval mmkp`` result on its own, kept
    whole under ``eval``) and its differences against ``baseline`` (default the first run) with their intervals."""
    from dyncot_plugin.tasks.mmkp.bootstrap import DEFAULT_LEVEL, compare_runs, values_of

    names = [n for n, _ in runs]
    base = names[0] if baseline is None else baseline
    if base not in names:
        raise TableError(f"--baseline {base}: no run of that name (runs: {', '.join(names)})")
    with paused_gc():
        sf = score_files(runs, dataset, src, train, ks, variant, tokenizer, label_check,
                         what="runs in one table", lengths=True)
        layout = interval_layout(sf, ks, variant)
        results = {s.name: s.result for s in sf.runs}
        matrices = run_matrices(sf, layout) if resamples > 0 and len(runs) > 1 else None
        against = compare_runs(results, matrices, base, layout, resamples, seed)
    rows = []
    for s in sf.runs:
        values = values_of(s.result, layout)
        scores = {sub: ({k: values[(sub, k)] for k in layout.score_keys} if sub in layout.subsets else None)
                  for sub in SUBSETS}
        for sub in layout.subsets:
            if sub != "all":
                scores[sub]["num_posts"] = s.result[sub]["num_posts"]
        scores["all"]["num_posts"] = s.result["num_posts"]
        rows.append({
            "name": s.name,
            "predictions": str(s.run.path),
            "baseline": s.name == base,
            "scores": scores,
            "cot_rate": s.result["cot_rate"],
            "gen_len": s.result["gen_len"]["all"],
            "vs_baseline": against.get(s.name),
            "eval": {**s.result, "mode": None},
        })
    notes = sorted({f"{s.name}: {n}" for s in sf.runs for n in s.result["notes"]})
    return {
        "table": "dyncot-eval table",
        "baseline": base,
        "num_posts": sf.runs[0].result["num_posts"],
        "variant": variant,
        "protocol": sf.runs[0].result["protocol"],
        "columns": layout.score_keys,
        "subsets": list(layout.subsets),
        "unit": sf.unit,
        "bootstrap": {
            "resamples": resamples,
            "seed": seed,
            "level": DEFAULT_LEVEL,
            "paired": True,
            "resampled": "posts, with replacement, n of n; the runs' outputs fixed",
            "interval": "percentile",
            "p_value": "two-sided, inverting the percentile interval: min(1, 2 min(1 + #{d<=0}, 1 + #{d>=0}) / (B+1))",
        },
        "runs": rows,
        "files": {"dataset": str(dataset) if dataset is not None else None,
                  "src": str(src) if src is not None else None,
                  "train": str(train) if train is not None else None},
        "notes": notes,
    }


# ------------------------------------------------------------------------------------------------------------------
# Formats
# ------------------------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _signed(x: float | None, scale: float = 100.0, suffix: str = "") -> str:
    return "-" if x is None else f"{scale * x:+.2f}{suffix}"


def _diff(d: dict | None, key: str = "delta", suffix: str = "") -> str:
    """``+3.07 [+1.20, +4.90]``: a difference (points, or % for a relative change) and its interval."""
    if d is None or d.get(key) is None:
        return ""
    if d.get("low") is None:
        return _signed(d[key], suffix=suffix)
    return f"{_signed(d[key], suffix=suffix)} [{_signed(d['low'], suffix=suffix)}, {_signed(d['high'], suffix=suffix)}]"


def _len(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _unit(unit: str) -> str:
    return "words" if unit == "whitespace_words" else unit


def _sections(table: dict) -> list[tuple[str, list[str], list[list[tuple[str, str]]]]]:
    """``(title, column heads, rows of (value, difference) cells)`` of every section: one per subset, then the
    CoT rate and the length; the first cell of a row is the run's name."""
    keys = table["columns"]
    out = []
    for sub in table["subsets"]:
        n = table["runs"][0]["scores"][sub]["num_posts"]
        rows = []
        for r in table["runs"]:
            vs = (r["vs_baseline"] or {}).get(sub) or {}
            rows.append([(r["name"] + (" (baseline)" if r["baseline"] else ""), "")]
                        + [(_pct(r["scores"][sub][k]), _diff(vs.get(k))) for k in keys])
        out.append((f"{sub} ({n} posts)", [k.upper() for k in keys], rows))
    rows = []
    for r in table["runs"]:
        vs = r["vs_baseline"] or {}
        rows.append([(r["name"] + (" (baseline)" if r["baseline"] else ""), ""),
                     (_pct(r["cot_rate"]), _diff(vs.get("cot_rate"))),
                     (_len(r["gen_len"]), _diff(vs.get("gen_len"), "relative_change", "%"))])
    out.append(("CoT rate and length", ["CoT rate", f"mean length ({_unit(table['unit'])})"], rows))
    return out


def _caption(table: dict) -> str:
    f1 = "mean of per-post F1" if table["variant"] == "per_post" else "harmonic mean of macro P and R"
    b = table["bootstrap"]
    if b["resamples"] and len(table["runs"]) > 1:
        boot = (f"with its paired bootstrap {100 * b['level']:g}% interval ({b['resamples']} resamples of the "
                f"{table['num_posts']} posts, seed {b['seed']})")
    else:
        boot = "(no resamples: no intervals)"
    return (f"{len(table['runs'])} runs on the same {table['num_posts']} posts; CMKP protocol (F1 = {f1}); scores "
            f"and CoT rate in %. Each difference against the baseline {table['baseline']} (in points; length: "
            f"relative change) {boot}.")


def format_markdown(table: dict) -> str:
    """The Markdown tables (one per subset, then CoT rate and length): value, and the difference against the
    baseline with its interval. Columns are padded so that the text reads as a table too."""
    lines = [f"# MMKP: {', '.join(r['name'] for r in table['runs'])}", "", _caption(table)]
    for title, heads, rows in _sections(table):
        if title.endswith(" (0 posts)"):  # the evaluator's zeros of an empty subset say nothing: no table
            lines += ["", f"**{title}**: no post has a gold keyphrase of this kind"]
            continue
        cells = [[a if not b else f"{a} ({b})" for a, b in row] for row in rows]
        head = ["run"] + heads
        widths = [max(len(c) for c in col) for col in zip(head, *cells)]
        lines += ["", f"**{title}**", ""]
        lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
        lines.append("|" + "|".join(("-" * (w + 1) + ":") if j else "-" * (w + 2)
                                    for j, w in enumerate(widths)) + "|")
        for row in cells:
            lines.append("| " + " | ".join(c.ljust(w) if j == 0 else c.rjust(w)
                                           for j, (c, w) in enumerate(zip(row, widths))) + " |")
    for note in table["notes"]:
        lines += ["", f"note: {note}"]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(c, c) for c in text)


def format_latex(table: dict) -> str:
    """One booktabs ``tabular`` per section, in a ``table`` float with the caption; each difference and its
    interval in a smaller font beside the value."""
    out = ["% dyncot-eval table; needs \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering", "\\small"]
    for title, heads, rows in _sections(table):
        if title.endswith(" (0 posts)"):
            out.append(f"% {title}: no post has a gold keyphrase of this kind")
            continue
        out.append("\\begin{tabular}{l" + "r" * len(heads) + "}")
        out.append("\\toprule")
        out.append(f"\\multicolumn{{{len(heads) + 1}}}{{l}}{{\\textbf{{{_tex(title)}}}}} \\\\")
        out.append("\\midrule")
        out.append(" & ".join(["Run"] + [_tex(h) for h in heads]) + " \\\\")
        out.append("\\midrule")
        for row in rows:
            cells = [_tex(row[0][0])]
            for value, diff in row[1:]:
                cells.append(_tex(value) + (f" {{\\scriptsize ${_tex(diff).replace('[', '{[}').replace(']', '{]}')}$}}"
                                            if diff else ""))
            out.append(" & ".join(cells) + " \\\\")
        out.append("\\bottomrule")
        out.append("\\end{tabular}")
        out.append("\\medskip")
    out.append(f"\\caption{{{_tex(_caption(table))}}}")
    out.append("\\end{table}")
    return "\n".join(out) + "\n"


def _csv_fields(table: dict) -> list[str]:
    fields = ["run", "predictions", "baseline"]
    for sub in table["subsets"]:
        for k in table["columns"]:
            fields += [f"{sub} {k}"] + [f"{sub} {k} {x}" for x in ("delta", "low", "high", "p_value")]
    fields += ["cot_rate"] + [f"cot_rate {x}" for x in ("delta", "low", "high", "p_value")]
    fields += ["gen_len"] + [f"gen_len {x}" for x in ("relative_change", "low", "high", "p_value")]
    return fields


def format_csv(table: dict) -> str:
    """One row per run; values as in the JSON (fractions; length in its unit), full precision; the differences
    against the baseline with ``low``, ``high``, ``p_value`` (empty for the baseline)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_csv_fields(table), lineterminator="\n")
    writer.writeheader()

    def put(row: dict, name: str, value: Any, d: dict | None, key: str) -> None:
        row[name] = "" if value is None else repr(value)
        for x in (key, "low", "high", "p_value"):
            v = None if d is None else d.get(x)
            row[f"{name} {x}"] = "" if v is None else repr(v)

    for r in table["runs"]:
        vs = r["vs_baseline"]
        row = {"run": r["name"], "predictions": r["predictions"], "baseline": str(r["baseline"]).lower()}
        for sub in table["subsets"]:
            for k in table["columns"]:
                put(row, f"{sub} {k}", r["scores"][sub][k], vs[sub][k] if vs else None, "delta")
        put(row, "cot_rate", r["cot_rate"], vs["cot_rate"] if vs else None, "delta")
        put(row, "gen_len", r["gen_len"], vs["gen_len"] if vs else None, "relative_change")
        writer.writerow(row)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="NAME=PREDICTIONS",
                        help="a run: its name and its generated_predictions.jsonl (or CMKP prediction file); "
                             "all runs on the same posts in the same order")
    add_scoring_arguments(parser, unseen="columns")
    parser.add_argument("--baseline", metavar="NAME", help="the run every other is compared with (default: the first)")
    parser.add_argument("--output", metavar="PREFIX",
                        help=f"write PREFIX.md, PREFIX.csv, PREFIX.tex and PREFIX.json (default: {DEFAULT_STEM} "
                             f"next to the baseline's predictions)")
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the Markdown")
    parser.add_argument("--no-label-check", action="store_true",
                        help="do not check the labels (against the dataset's answers, and between the runs)")
    add_bootstrap_arguments(parser)


def run(args: argparse.Namespace) -> int:
    runs = parse_runs(args.runs)
    table = build_table(
        runs, dataset=args.dataset, src=args.src, train=args.train, baseline=args.baseline, ks=args.ks,
        variant=args.variant, tokenizer=args.tokenizer, label_check=not args.no_label_check,
        resamples=args.resamples, seed=args.seed,
    )
    if args.output:
        prefix = Path(args.output)
    else:
        base_path = Path(dict(runs)[table["baseline"]])
        prefix = base_path.parent / DEFAULT_STEM
    paths = {fmt: prefix.with_name(prefix.name + suffix)
             for fmt, suffix in (("markdown", ".md"), ("csv", ".csv"), ("latex", ".tex"), ("json", ".json"))}
    table["files"]["outputs"] = {k: str(v) for k, v in paths.items()}
    markdown = format_markdown(table)
    text = json.dumps(table, indent=2, ensure_ascii=False)
    try:
        with StagedWrites() as staged:  # the four files together or none
            staged.write_text(paths["markdown"], markdown)
            staged.write_text(paths["csv"], format_csv(table))
            staged.write_text(paths["latex"], format_latex(table))
            staged.write_text(paths["json"], text + "\n")
    except OSError as exc:
        print(f"dyncot-eval table: error: cannot write {prefix}.*: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(text)
    else:
        print(markdown, end="")
        print(f"\nwritten: {', '.join(str(p) for p in paths.values())}")
    return 0
