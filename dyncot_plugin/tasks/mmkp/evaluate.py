"""Score keyphrase predictions with CMKP's protocol: F1@1/3/5/M and MAP@5 on all, present, absent and unseen
keyphrases, each also over the posts whose output thinks and over the others, plus the CoT trigger rate and the
generated length; compare thinking modes of the same posts (``auto``/``always``/``never``) and two runs.

Inputs (one of):

* LLaMA-Factory's ``generated_predictions.jsonl`` (``{"prompt", "predict", "label"}`` per row, in eval-dataset
  order) with ``--dataset`` (the dataset JSON it was predicted on: ``text`` gives the post for present/absent,
  ``keyphrases`` the gold) -- or with ``--src`` (a CMKP source file, same posts in the same order);
* a CMKP prediction file (one line per post, keyphrases separated by ``;``) with ``--src``
  (``post text<sep>kp1;kp2<sep>image-url`` per line).

``--train`` (a dataset JSON or a CMKP source file) adds the unseen scores. Prints a table; writes the JSON
(``--output``, by default ``<predictions>.mmkp_eval.json`` next to the predictions file); ``--json`` prints the
JSON instead of the table.

Thinking modes: ``--predictions MODE=PATH`` two or three times (MODE: ``auto``, ``always``, ``never``; the same
posts in the same order) adds every mode's scores, per post the mode with the higher F1@M (a tie goes to
``auto``), how often ``auto`` chose as well as the forced modes (and, on the decisive posts, where ``always`` and
``never`` differ, how often its decision was right), and the oracle that takes the better mode's output per post.
With ``always`` and ``never`` files whose rows carry ``think_prob``, the frontier: the exact scores of the ``auto``
of every think-probability threshold (:mod:`~dyncot_plugin.tasks.mmkp.frontier`; ``--threshold`` marks one,
``--think-rate R`` prints the lowest threshold whose think rate is at most R). ``--baseline [NAME=]PATH`` (a
previous run's JSON) puts every score of both runs side by side. With either, a PNG of the scores and lengths is
written next to the JSON (``--plot PATH``, ``--no-plot``). All of it is documented in docs/eval.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from dyncot_plugin.cot_format import KINDS, count_tokens, parse_output, summarize_outputs
from dyncot_plugin.io.datasets import load_rows
from dyncot_plugin.io.files import atomic_write_text, paused_gc
from dyncot_plugin.io.predictions import check_pairing, read_generated_predictions
from dyncot_plugin.io.read import InputError, read_lines, read_text, require_rows
from dyncot_plugin.tasks.mmkp.compare import (
    compare_with_baseline,
    format_baseline_table,
    parse_baseline_arg,
    read_baseline,
)
from dyncot_plugin.tasks.mmkp.frontier import (
    DEFAULT_THRESHOLD,
    compute_frontier,
    format_frontier_table,
    merge_think_probs,
    read_think_probs,
    summarize_frontier,
)
from dyncot_plugin.tasks.mmkp.metrics import VARIANTS, evaluate_keyphrases
from dyncot_plugin.tasks.mmkp.modes import (
    AUTO,
    MODES,
    check_same_posts,
    compare_modes,
    format_modes_table,
    opens_with_think,
    parse_named_predictions,
    split_by_think,
)
from dyncot_plugin.tasks.mmkp.normalize import label_keyphrases, split_keyphrases_cmkp
from dyncot_plugin.tasks.mmkp.plots import write_plot
from dyncot_plugin.tasks.mmkp.rows import row_keyphrases
from dyncot_plugin.think import THINK_SETTINGS_FILE
from dyncot_plugin.think_settings import ThinkSettingsError, read_think_settings

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


class _Run(NamedTuple):
    """One prediction file, read and paired with its gold keyphrases (and post texts)."""

    path: Path
    fmt: str
    outputs: list[str]
    labels: list[Any] | None  # LLaMA-Factory labels (None for CMKP files)
    golds: list[list[str]]
    sources: list[str] | None
    ids: list[str] | None
    notes: list[str]
    truncated: int
    think_probs: list[float] | None  # the rows' think_prob (None when the file has none)


def _check_inputs(pred_path: Path, dataset, src) -> None:
    if not pred_path.is_file():
        raise EvalInputError(f"predictions file not found: {pred_path}")
    if dataset is not None and src is not None:
        raise EvalInputError("give either --dataset (a dataset JSON) or --src (a CMKP source file), not both")
    for p, what in ((dataset, "dataset"), (src, "source")):
        if p is not None and not Path(p).is_file():
            raise EvalInputError(f"{what} file not found: {p}")


def _read_run(pred_path: Path, dataset, src, label_check: bool, cache: dict) -> _Run:
    """Read one predictions file with its gold; ``cache`` keeps the dataset / source file read once for all files."""
    notes: list[str] = []
    sources: list[str] | None = None
    ids: list[str] | None = None
    labels: list[Any] | None = None
    golds: list[list[str]]
    truncated = 0
    think_probs: list[float] | None = None
    if _is_jsonl_predictions(pred_path):
        fmt = "llamafactory"
        rows = read_generated_predictions(pred_path, require_label=False)
        outputs = [r["predict"] for r in rows]
        think_probs = read_think_probs(rows, pred_path)
        labels = [r.get("label") for r in rows]
        if dataset is not None:
            data_path = Path(dataset)
            if "data" not in cache:
                data = load_rows(data_path)
                golds = [_row_keyphrases(row, data_path, i) for i, row in enumerate(data)]
                texts = [row["text"] for row in data] if all(isinstance(r.get("text"), str) for r in data) else None
                row_ids = [str(r["id"]) for r in data] if all("id" in r for r in data) else None
                cache["data"] = (data, golds, texts, row_ids)
            data, golds, sources, ids = cache["data"]
            truncated = check_pairing(
                rows, data, pred_path, data_path, check_labels=label_check, check_prompt=False,
                hint="\n(pass --no-label-check to score anyway)",
            )
            if sources is None:
                notes.append(f"{data_path} rows lack a 'text' field: present/absent scores skipped")
        elif src is not None:
            if "src" not in cache:
                cache["src"] = read_cmkp_src(Path(src))
            sources, golds = cache["src"]
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
        if "src" not in cache:
            cache["src"] = read_cmkp_src(Path(src))
        sources, golds = cache["src"]
        if len(outputs) != len(golds):
            raise EvalInputError(
                f"{pred_path} has {len(outputs)} lines but the source file {src} has {len(golds)}; "
                f"they must hold the same posts in the same order."
            )
    return _Run(pred_path, fmt, outputs, labels, golds, sources, ids, notes, truncated, think_probs)


def _load_tokenizer(tokenizer: Any) -> tuple[Any, str | None]:
    """The tokenizer object (loaded once for every file) and the unit name of a tokenizer given by path."""
    if not isinstance(tokenizer, str):
        return tokenizer, None
    from transformers import AutoTokenizer  # lazy: only when lengths are asked in model tokens

    return AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=False), f"tokenizer:{tokenizer}"


def _score_run(run: _Run, train_set, ks, variant, tokenizer, unit, files: dict) -> tuple[dict, list, list, list]:
    """The JSON result of one run, with its parsed outputs, prediction lists and per-post outcomes
    (:func:`~.metrics.post_outcomes`, for the mode comparison and the frontier)."""
    parsed = [parse_output(o) for o in run.outputs]
    preds = [split_keyphrases_cmkp(p.answer) for p in parsed]
    outcomes: list = []
    result = evaluate_keyphrases(preds, run.golds, run.sources, train_set, ks=ks, variant=variant, outcomes=outcomes)
    result["by_think"] = split_by_think(parsed, preds, run.golds, run.sources, train_set, ks, variant)
    summary = summarize_outputs(run.outputs, tokenizer=tokenizer, parsed=parsed)
    result["cot_rate"] = summary["cot_rate"]
    result["gen_len"] = summary["gen_len"]
    if unit is not None:
        result["gen_len"]["unit"] = unit
    result["outputs"] = {k: summary[k] for k in ("num_outputs", "num_think", "well_formed_rate", "kinds")}
    result["protocol"] = "cmkp" if variant == "cmkp" else f"cmkp ({variant} F1)"
    result["files"] = {"predictions": str(run.path), "format": run.fmt, **files}
    if train_set is not None:
        result["num_train_keyphrases"] = len(train_set)
    notes = list(run.notes)
    if run.truncated:
        notes.append(f"{run.truncated} labels were truncated (cutoff_len); gold keyphrases come from the dataset")
    result["notes"] = notes
    return result, parsed, preds, outcomes


class ScoredRun(NamedTuple):
    """One prediction file read, paired with its gold and scored: what every report is made of."""

    name: str | None  # the name it was given (a mode, a table's run name; None for a plain --predictions PATH)
    run: _Run
    result: dict  # the JSON result of this file alone, exactly as `dyncot-eval mmkp` computes it
    parsed: list  # parse_output of every output
    preds: list  # the prediction lists scored
    outcomes: list  # metrics.post_outcomes of every post
    lengths: list[int] | None  # every output's generated length (in gen_len's unit; None when not asked for)


class ScoredFiles(NamedTuple):
    runs: list[ScoredRun]
    train_set: set[str] | None
    tokenizer: Any
    unit: str  # gen_len's unit


def score_files(
    named: Sequence[tuple[str | None, str | Path]],
    dataset: str | Path | None = None,
    src: str | Path | None = None,
    train: str | Path | None = None,
    ks=(1, 3, 5),
    variant: str = "cmkp",
    tokenizer: Any = None,
    label_check: bool = True,
    what: str = "files compared by mode",
    lengths: bool = True,
) -> ScoredFiles:
    """Read ``[(name, path), ...]``, check that the files hold the same posts (:func:`~.modes.check_same_posts`:
    refused, naming the runs, before anything is scored), then score each file on its own as `dyncot-eval mmkp`
    does. ``what``: the files' role, for the error messages; ``lengths``: whether to keep every output's length
    (a second tokenizer pass with ``tokenizer``)."""
    for _, path in named:
        _check_inputs(Path(path), dataset, src)
    cache: dict = {}
    runs = [_read_run(Path(path), dataset, src, label_check, cache) for _, path in named]
    if len(runs) > 1:
        check_same_posts(
            [r.path for r in runs], [r.golds for r in runs], [r.labels if label_check else None for r in runs],
            names=[n for n, _ in named], what=what,
        )
    train_set = read_train_keyphrases(Path(train)) if train is not None else None
    tok, unit = _load_tokenizer(tokenizer)
    files = {
        "dataset": str(dataset) if dataset is not None else None,
        "src": str(src) if src is not None else None,
        "train": str(train) if train is not None else None,
    }
    out = []
    for (name, _), r in zip(named, runs):
        result, parsed, preds, outcomes = _score_run(r, train_set, ks, variant, tok, unit, files)
        counts = count_tokens([o or "" for o in r.outputs], tok) if lengths else None
        out.append(ScoredRun(name, r, result, parsed, preds, outcomes, counts))
    return ScoredFiles(out, train_set, tok, out[0].result["gen_len"]["unit"] if out else "whitespace_words")


def interval_layout(scored: ScoredFiles, ks, variant: str):
    """The :class:`~.bootstrap.Layout` of these runs' scores (present/absent with post texts, unseen with --train)."""
    from dyncot_plugin.tasks.mmkp.bootstrap import Layout  # numpy: only when intervals are computed

    first = scored.runs[0].run
    return Layout.make(ks, variant, present_absent=first.sources is not None, unseen=scored.train_set is not None)


def run_matrices(scored: ScoredFiles, layout) -> dict:
    """Each run's per-post sufficient statistics (:func:`~.bootstrap.post_matrix`), by name."""
    from dyncot_plugin.tasks.mmkp.bootstrap import post_matrix

    return {
        s.name: post_matrix(s.outcomes, [p.has_think for p in s.parsed], s.lengths, layout) for s in scored.runs
    }


def _evaluate_files(
    predictions: str | Path | Sequence[tuple[str | None, str | Path]],
    dataset: str | Path | None = None,
    src: str | Path | None = None,
    train: str | Path | None = None,
    ks=(1, 3, 5),
    variant: str = "cmkp",
    tokenizer: Any = None,
    label_check: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
    think_rate: float | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """``predictions``: one file, or ``[(mode, path), ...]`` (modes from :data:`~.modes.MODES`) of the same posts.

    With several files the top level is the result of the ``auto`` file (else the first), ``modes`` holds every
    file's result and ``comparison`` the per-post comparison (:func:`~.modes.compare_modes`), with
    ``comparison.intervals``: auto (else the first file) minus each other mode, every score with its paired
    bootstrap interval and p-value over ``resamples`` resamples of the posts drawn with ``seed``
    (:mod:`~dyncot_plugin.tasks.mmkp.bootstrap`; ``resamples`` 0: the differences only). With an ``always``
    and a ``never`` file whose rows carry ``think_prob``, ``frontier`` holds the scores of the ``auto`` of every
    threshold and ``frontier_summary`` the point of ``threshold``, the best one and that of ``think_rate`` (the
    lowest threshold whose think rate is at most it; an error without a frontier); see
    :mod:`~dyncot_plugin.tasks.mmkp.frontier`.
    """
    named = [(None, predictions)] if isinstance(predictions, (str, Path)) else list(predictions)
    if not named:
        raise EvalInputError("no predictions file given")
    names = [m for m, _ in named]
    if len(named) > 1 and (None in names or len(set(names)) != len(names) or not set(names) <= set(MODES)):
        raise EvalInputError(f"several prediction files need distinct mode names from {', '.join(MODES)}")
    sf = score_files(named, dataset, src, train, ks, variant, tokenizer, label_check, lengths=len(named) > 1)
    runs = [s.run for s in sf.runs]
    scored = [(s.result, s.parsed, s.preds, s.outcomes) for s in sf.runs]
    train_set = sf.train_set
    has_frontier = {"always", "never"} <= set(names)
    if think_rate is not None and not has_frontier:
        raise EvalInputError(
            "--think-rate reads the frontier, which needs --predictions always=PATH and --predictions never=PATH "
            "(prediction files of the same posts whose rows carry think_prob)"
        )
    if len(runs) == 1:
        result = scored[0][0]
        result["mode"] = names[0]
        return result

    results = {m: s[0] for m, s in zip(names, scored)}
    primary = AUTO if AUTO in results else names[0]
    result = dict(results[primary])
    result["mode"] = primary
    result["files"] = {**result["files"], "modes": {m: str(p) for m, p in named}}
    result["notes"] = list(result["notes"]) + [f"{m}: {n}" for m in names if m != primary for n in results[m]["notes"]]
    result["modes"] = results
    lengths = {s.name: s.lengths for s in sf.runs}
    result["comparison"] = compare_modes(
        names,
        preds={m: s[2] for m, s in zip(names, scored)},
        parsed={m: s[1] for m, s in zip(names, scored)},
        lengths=lengths,
        outcomes={m: s[3] for m, s in zip(names, scored)},
        texts={m: r.outputs for m, r in zip(names, runs)},
        golds=runs[0].golds,
        sources=runs[0].sources,
        train_set=train_set,
        ks=ks,
        variant=variant,
        unit=result["gen_len"]["unit"],
        ids=runs[0].ids,
    )
    result["comparison"]["intervals"] = mode_intervals(sf, primary, ks, variant, resamples, seed)
    for m, r in zip(names, runs):
        think = _think_settings(r.path).get("think")
        if think is not None and think != m and not (m == AUTO and think == "greedy"):
            result["notes"].append(f"{r.path} is given as {m}, but its {THINK_SETTINGS_FILE} says dyncot_think {think}")
    if has_frontier:
        by_mode = dict(zip(names, zip(runs, scored)))
        _add_frontier(result, by_mode, lengths, train_set, ks, variant, threshold, think_rate)
    return result


def mode_intervals(sf: ScoredFiles, reference: str, ks, variant: str, resamples: int, seed: int) -> dict:
    """``comparison.intervals``: ``reference`` (auto) minus every other mode, each difference with its paired
    bootstrap interval (:func:`~.bootstrap.compare_runs`)."""
    from dyncot_plugin.tasks.mmkp.bootstrap import DEFAULT_LEVEL, compare_runs

    layout = interval_layout(sf, ks, variant)
    results = {s.name: s.result for s in sf.runs}
    matrices = run_matrices(sf, layout) if resamples > 0 else None
    against = compare_runs(results, matrices, reference, layout, resamples, seed, reference_minus_run=True)
    return {
        "reference": reference,
        "against": against,
        "resamples": resamples,
        "seed": seed,
        "level": DEFAULT_LEVEL,
        "method": "paired bootstrap over posts; percentile interval; two-sided p-value that inverts it",
        "unit": sf.unit,
    }


def _think_settings(pred_path: Path) -> dict:
    """The ``dyncot_think.json`` a prediction run writes beside its predictions (``think``: the rule, ``threshold``),
    or {} when there is none or it cannot be read (only labels depend on it)."""
    try:
        return read_think_settings(Path(pred_path).parent) or {}
    except ThinkSettingsError:
        return {}


def _add_frontier(result: dict, by_mode: dict, lengths: dict, train_set, ks, variant, threshold, think_rate) -> None:
    """``frontier`` and ``frontier_summary`` from the always and never files (see :mod:`.frontier`)."""
    order = [m for m in ("always", "never", AUTO) if m in by_mode]
    merged = merge_think_probs([(m, by_mode[m][0].path, by_mode[m][0].think_probs) for m in order])
    if merged is None:
        if think_rate is not None:
            raise EvalInputError(
                f"--think-rate: {by_mode['always'][0].path} and {by_mode['never'][0].path} have no think_prob on "
                f"their rows (prediction runs write it since the two-way think decision); no frontier"
            )
        result["notes"].append("no think_prob in the prediction files: no frontier (predict again to get it)")
        return
    think_probs, source = merged
    run0 = by_mode["always"][0]
    points, decisive = compute_frontier(
        {m: by_mode[m][1][3] for m in ("always", "never")},
        think_probs,
        lengths={m: lengths[m] for m in ("always", "never")},
        thinks={m: [p.has_think for p in by_mode[m][1][1]] for m in ("always", "never")},
        ks=ks,
        variant=variant,
        present_absent=run0.sources is not None,
        unseen=train_set is not None,
    )
    auto = None
    if AUTO in by_mode:
        a = result["modes"][AUTO]
        keys = [k for k in points[0] if k.startswith(("f1@", "map@"))]
        settings = _think_settings(by_mode[AUTO][0].path)  # how that run decided: greedy, or auto at a threshold
        outputs = by_mode[AUTO][0].outputs
        auto = {"think_rate": sum(map(opens_with_think, outputs)) / len(outputs), "cot_rate": a["cot_rate"],
                **{k: a[k] for k in keys}, "mean_tokens": a["gen_len"]["all"],
                "think": settings.get("think"), "threshold": settings.get("threshold")}
    result["frontier"] = points
    result["frontier_summary"] = summarize_frontier(
        points, decisive, result["gen_len"]["unit"], think_probs, source, threshold, think_rate, auto
    )


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
    mode = f" of {result['mode']}" if result.get("mode") else ""
    lines = [
        f"MMKP evaluation{mode}, CMKP protocol ({f1_note}); scores in %; {result['num_posts']} posts",
        f"{'':16}{'posts':>7}{'gold':>7}{'pred':>7} " + "".join(f"{c:>7}" for c in cols),
    ]
    by = result.get("by_think") or {}
    split_note = None
    if by and not all(by[sub]["num_posts"] for sub in ("thinking", "not_thinking")):
        # every output on one side: the split would repeat the rows above
        split_note = "(thinking / not thinking: every output " + (
            "thinks)" if by["thinking"]["num_posts"] else "answers without thinking)")
        by = {}
    for name in ("all", "present", "absent", "unseen"):
        d = result if name == "all" else result.get(name)
        if d is None:
            continue
        rows = [(name, d)]
        # the same scores over the posts whose output thinks, and over the others
        for sub, label in (("thinking", "  thinking"), ("not_thinking", "  not thinking")):
            if by.get(sub) is not None:
                rows.append((label, by[sub] if name == "all" else by[sub].get(name)))
        for label, x in rows:
            if x is None:
                continue
            if x["num_posts"]:
                vals = "".join(f" {_pct(x[f'f1@{k}'])}" for k in ks) + f" {_pct(x[map_key])}"
            else:
                vals = "".join(f" {'-':>6}" for _ in cols)
            lines.append(f"{label:16}{x['num_posts']:>7}{x['num_targets']:>7}{x['num_predictions']:>7} {vals}")
    if split_note:
        lines.append(split_note)
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
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    if result.get("comparison"):
        lines += ["", format_modes_table(result)]
    if result.get("frontier"):
        lines += ["", format_frontier_table(result)]
    if result.get("vs_baseline"):
        lines += ["", format_baseline_table(result)]
    plot = (result.get("files") or {}).get("plot")
    if plot:
        lines.append(f"PNG: {plot}")
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


def _threshold(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = float("nan")
    if not (math.isfinite(x) and x >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0")
    return x


def _rate(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = float("nan")
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate between 0 and 1")
    return x


def add_scoring_arguments(parser: argparse.ArgumentParser, unseen: str = "scores") -> None:
    """The options that say how prediction files are scored (`dyncot-eval mmkp` and `dyncot-eval table` alike):
    the posts' source, the training file for the unseen ``unseen``, the F1 variant, the cut-offs, the length unit."""
    parser.add_argument("--dataset", help="the dataset JSON the predictions were generated on (text, keyphrases)")
    parser.add_argument("--src", help="CMKP source file of the same posts: post<sep>kp1;kp2<sep>image-url per line")
    parser.add_argument("--train", help=f"training file (dataset JSON or CMKP source file) for the unseen {unseen}")
    parser.add_argument("--variant", choices=VARIANTS, default="cmkp",
                        help="cmkp: F1 = harmonic mean of macro P and R (default); per_post: mean per-post F1")
    parser.add_argument("--ks", type=_parse_ks, default=(1, 3, 5),
                        help="cut-offs, comma separated (default 1,3,5; M is always added)")
    parser.add_argument("--tokenizer",
                        help="tokenizer path/name: count generated length in its tokens (default: words)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--predictions", required=True, action="append", metavar="[MODE=]PATH",
        help="generated_predictions.jsonl, or a CMKP prediction file; repeat as MODE=PATH (MODE: auto, always, "
             "never) to compare two or three thinking modes of the same posts",
    )
    add_scoring_arguments(parser)
    parser.add_argument("--output", help="where to write the JSON (default: <predictions>.mmkp_eval.json alongside; "
                                         "with several files, next to the auto file or else the first)")
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    parser.add_argument("--baseline", metavar="[NAME=]PATH",
                        help="a previous dyncot-eval JSON (e.g. fine-tune-cot=ft.json): every score side by side")
    parser.add_argument("--plot", metavar="PATH",
                        help="write the PNG here (default: next to the JSON, <json stem>.png, when modes are "
                             "compared or --baseline is given)")
    parser.add_argument("--no-plot", action="store_true", help="no PNG")
    parser.add_argument("--threshold", type=_threshold, default=DEFAULT_THRESHOLD,
                        help="the frontier point to mark (in the table, the JSON and the PNG): the auto of this "
                             f"dyncot_think_threshold (default {DEFAULT_THRESHOLD}, the key's default)")
    parser.add_argument("--think-rate", type=_rate, metavar="R",
                        help="print the lowest threshold whose think rate is at most R (0..1) and its scores "
                             "(needs always= and never= files with think_prob)")
    parser.add_argument("--no-label-check", action="store_true",
                        help="do not check that each label equals the dataset row's answer (nor that the files "
                             "compared by mode have the same labels)")
    add_bootstrap_arguments(parser, "with several modes: ")


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def add_bootstrap_arguments(parser: argparse.ArgumentParser, context: str = "") -> None:
    """``--resamples`` and ``--seed`` of the paired bootstrap (the same defaults in every command)."""
    from dyncot_plugin.tasks.mmkp.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED  # numpy, only for the CLI

    parser.add_argument("--resamples", type=_count, default=DEFAULT_RESAMPLES, metavar="B",
                        help=f"{context}resamples of the posts for the paired bootstrap intervals (default "
                             f"{DEFAULT_RESAMPLES}; 0: differences without intervals)")
    parser.add_argument("--seed", type=_count, default=DEFAULT_SEED,
                        help=f"seed of the resampling (default {DEFAULT_SEED}): the same seed, posts and B give the "
                             f"same resamples")


def dumps_result(result: dict) -> str:
    """The JSON text of a result: indented, except the frontier's points, one compact point per line (a frontier
    has a point per distinct think_prob, tens of thousands on a full test set; one key per line would make the
    file several times larger and slower to write)."""
    points = result.get("frontier")
    if not points:
        return json.dumps(result, indent=2, ensure_ascii=False)
    marker = json.dumps("\u0000frontier points\u0000")
    text = json.dumps({**result, "frontier": json.loads(marker)}, indent=2, ensure_ascii=False)
    if text.count(marker) != 1:  # the marker also occurs in some output text: no compact rows then
        return json.dumps(result, indent=2, ensure_ascii=False)
    rows = ",\n    ".join(json.dumps(p, ensure_ascii=False) for p in points)
    return text.replace(marker, "[\n    " + rows + "\n  ]")


def _default_output(pred_path: Path) -> Path:
    return pred_path.with_name(pred_path.stem + ".mmkp_eval.json")


def _add_baseline(result: dict, value: str) -> None:
    name, path = parse_baseline_arg(value)
    base = read_baseline(path)
    result["vs_baseline"] = compare_with_baseline(result, base, path, name)
    # the block earlier versions wrote, kept as it was (reduction = 1 - ours / baseline over all outputs)
    b_len, ours = base["gen_len"]["all"], result["gen_len"]["all"]
    if b_len and ours is not None:
        result["gen_len_vs_baseline"] = {"baseline_file": str(path), "baseline": b_len, "ours": ours,
                                         "reduction": 1.0 - ours / b_len}


def run(args: argparse.Namespace) -> int:
    named = parse_named_predictions(args.predictions)
    result = evaluate_files(
        named,
        dataset=args.dataset,
        src=args.src,
        train=args.train,
        ks=args.ks,
        variant=args.variant,
        tokenizer=args.tokenizer,
        label_check=not args.no_label_check,
        threshold=args.threshold,
        think_rate=args.think_rate,
        resamples=args.resamples,
        seed=args.seed,
    )
    if args.baseline:
        _add_baseline(result, args.baseline)

    primary = dict(named).get(AUTO, named[0][1])
    out_path = Path(args.output) if args.output else _default_output(Path(primary))
    plot_path = None
    if args.plot:
        plot_path = Path(args.plot)
    elif not args.no_plot and (result.get("comparison") or result.get("vs_baseline")):
        plot_path = out_path.with_suffix(".png")
    result["files"]["plot"] = None
    if plot_path is not None:
        try:
            written_plot, note = write_plot(result, plot_path)
        except OSError as exc:
            if args.plot:
                print(f"dyncot-eval mmkp: error: cannot write {plot_path}: {exc}", file=sys.stderr)
                return 2
            written_plot, note = None, f"cannot write {plot_path} ({exc}); use --plot"
        result["files"]["plot"] = str(written_plot) if written_plot else None
        if note:
            result["notes"].append(note)

    text = dumps_result(result)
    try:
        atomic_write_text(out_path, text + "\n")  # all or nothing: a later --baseline must not read half a file
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
