"""Evaluation per thinking mode: scores split by whether an output thinks, and two or three prediction files of the
same posts (``auto``, ``always``, ``never``) compared post by post.

A Dynamic-CoT model decides per post whether to think (``auto``); it can also be forced to (``always``: every reply
starts with ``<think>``) or kept from it (``never``). The modes are named on the command line
(``--predictions auto=PATH``); ``auto`` is the one whose decision is judged.

* :func:`split_by_think`: the CMKP scores of the posts whose output thinks and of the others
  (:attr:`~dyncot_plugin.cot_format.ParsedOutput.has_think`).
* :func:`compare_modes`: per post the mode with the higher F1@M (a tie goes to ``auto``, then to the mode named
  first), how often ``auto`` scored at least as well as every other mode, pairwise wins, and the corpus-level
  scores of the *oracle* that takes, per post, the winner's output. The oracle picks by per-post F1@M, so its
  corpus F1 (harmonic mean of macro P and R) is close to, not necessarily exactly, the best any per-post choice
  could reach.
* Decisive posts (with an ``always`` and a ``never`` file): those whose F1@M differs between the two, where the
  think decision matters; ``auto``'s decision on them is right when its output thinks exactly where ``always`` is
  the better of the two. The tie-inclusive count above counts the posts on which every mode scores the same too.

Pure functions of already-read lists; reading and the CLI are in :mod:`dyncot_plugin.tasks.mmkp.evaluate`.
"""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

from dyncot_plugin.cot_format import THINK_OPEN, ParsedOutput
from dyncot_plugin.io.predictions import normalize
from dyncot_plugin.io.read import InputError
from dyncot_plugin.tasks.mmkp.metrics import evaluate_keyphrases, post_scores

__all__ = [
    "AUTO",
    "MODES",
    "check_same_posts",
    "compare_modes",
    "format_modes_table",
    "gen_len_of",
    "opens_with_think",
    "parse_named_predictions",
    "per_post_f1",
    "per_post_f1_from_outcomes",
    "split_by_think",
]

AUTO = "auto"
MODES = ("auto", "always", "never")
_NAME = re.compile(r"^[A-Za-z][\w.-]*$")


class ModeError(InputError):
    """A bad ``--predictions`` list or prediction files that do not hold the same posts."""


def parse_named_predictions(values: Sequence[str]) -> list[tuple[str | None, str]]:
    """``--predictions`` values as ``(mode, path)``: ``MODE=PATH`` (MODE one of :data:`MODES`) or, alone, a plain
    path (mode None). A value that is an existing file is a path even when it contains ``=``."""
    out: list[tuple[str | None, str]] = []
    for value in values:
        name, sep, path = value.partition("=")
        if sep and _NAME.match(name) and not Path(value).is_file():
            if name not in MODES:
                raise ModeError(
                    f"--predictions {value}: unknown mode {name!r}; name each file with one of "
                    f"{', '.join(MODES)} (MODE=PATH)"
                )
            if not path:
                raise ModeError(f"--predictions {value}: no path after '='")
            out.append((name, path))
        else:
            out.append((None, value))
    if len(out) > 1:
        unnamed = [p for n, p in out if n is None]
        if unnamed:
            raise ModeError(
                f"--predictions {unnamed[0]}: with several prediction files name each one by its mode, e.g. "
                f"--predictions auto=PATH --predictions never=PATH (modes: {', '.join(MODES)})"
            )
        names = [n for n, _ in out]
        for n in names:
            if names.count(n) > 1:
                raise ModeError(f"--predictions: mode {n!r} is given {names.count(n)} times")
    return out


def check_same_posts(
    paths: Sequence[str | Path],
    golds: Sequence[Sequence[Sequence[str]]],
    labels: Sequence[Sequence[str] | None],
    names: Sequence[str | None] | None = None,
    what: str = "files compared by mode",
) -> None:
    """Files compared post by post must hold the same posts in the same order: the same number of rows, the same
    gold keyphrases row by row, and (where both files have labels) the same labels. ``names`` (optional): each
    file's run name, given in the message with its path; ``what``: the files' role in the message."""
    named = [f"{n} ({p})" if n else str(p) for n, p in zip(names or [None] * len(paths), paths)]
    first, g0, l0 = named[0], golds[0], labels[0]
    for path, g, lab in zip(named[1:], golds[1:], labels[1:]):
        if len(g) != len(g0):
            raise ModeError(
                f"{first} has {len(g0)} posts but {path} has {len(g)}; {what} must hold the same posts in the same "
                f"order"
            )
        for i, (a, b) in enumerate(zip(g0, g)):
            if list(a) != list(b):
                raise ModeError(
                    f"{first} and {path} differ at row {i}: gold {list(a)!r} vs {list(b)!r}; {what} must hold the "
                    f"same posts in the same order"
                )
        if l0 is not None and lab is not None:
            for i, (a, b) in enumerate(zip(l0, lab)):
                if isinstance(a, str) and isinstance(b, str) and normalize(a) != normalize(b):
                    raise ModeError(
                        f"{first} and {path} differ at row {i}: label {a[:80]!r} vs {b[:80]!r}; {what} must hold "
                        f"the same posts in the same order (pass --no-label-check to compare anyway)"
                    )


def _subset(xs: Sequence[Any] | None, keep: Sequence[bool]) -> list[Any] | None:
    return None if xs is None else [x for x, k in zip(xs, keep) if k]


def split_by_think(
    parsed: Sequence[ParsedOutput],
    preds: Sequence[Sequence[str]],
    golds: Sequence[Sequence[str]],
    sources: Sequence[str] | None,
    train_set: set[str] | None,
    ks: Sequence,
    variant: str,
) -> dict:
    """``{"thinking": scores, "not_thinking": scores}``: :func:`evaluate_keyphrases` over the posts whose output
    thinks and over the others (each with its present / absent / unseen subsets; ``num_posts`` 0 when empty)."""
    out = {}
    for name, want in (("thinking", True), ("not_thinking", False)):
        keep = [p.has_think is want for p in parsed]
        out[name] = evaluate_keyphrases(
            _subset(preds, keep), _subset(golds, keep), _subset(sources, keep), train_set, ks=ks, variant=variant
        )
    return out


def per_post_f1(preds: Sequence[Sequence[str]], golds: Sequence[Sequence[str]]) -> list[float]:
    """F1@M of each post alone (CMKP's rules; for one post the harmonic mean of P and R is its F1 in both variants)."""
    cache: dict[tuple, float] = {}
    out = []
    for p, g in zip(preds, golds):
        key = (tuple(p), tuple(g))
        f1 = cache.get(key)
        if f1 is None:
            f1 = cache[key] = evaluate_keyphrases([p], [g], ks=("M",))["f1@M"]
        out.append(f1)
    return out


def opens_with_think(text: str | None) -> bool:
    """Whether a reply records the decision to think: it starts with the think tag (forced by ``always`` and by
    ``auto`` at or above its threshold, chosen by ``greedy``; kept in the written prediction). A ``never`` reply
    never contains the tag, though a broken one may contain ``</think>``, which :attr:`ParsedOutput.has_think`
    counts."""
    return (text or "").lstrip().startswith(THINK_OPEN)


def per_post_f1_from_outcomes(outcomes: Sequence[tuple]) -> list[float]:
    """:func:`per_post_f1` from the posts' outcomes (:func:`~.metrics.post_outcomes`) instead of a scoring pass:
    the same F1@M values, from the same per-post formula."""
    cache: dict[tuple, float] = {}
    out = []
    for oc in outcomes:
        f1 = cache.get(oc[0])
        if f1 is None:
            f1 = cache[oc[0]] = float(post_scores(oc[0], ("M",))[2])
        out.append(f1)
    return out


def gen_len_of(lengths: Sequence[int], thinks: Sequence[bool], unit: str) -> dict:
    """``{"all", "with_think", "without_think", "unit"}`` mean lengths, as ``summarize_outputs`` reports them."""

    def mean(xs: list[int]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    return {
        "all": mean(list(lengths)),
        "with_think": mean([n for n, t in zip(lengths, thinks) if t]),
        "without_think": mean([n for n, t in zip(lengths, thinks) if not t]),
        "unit": unit,
    }


def compare_modes(
    names: Sequence[str],
    preds: dict[str, Sequence[Sequence[str]]],
    parsed: dict[str, Sequence[ParsedOutput]],
    lengths: dict[str, Sequence[int]],
    golds: Sequence[Sequence[str]],
    sources: Sequence[str] | None,
    train_set: set[str] | None,
    ks: Sequence,
    variant: str,
    unit: str,
    ids: Sequence[str] | None = None,
    outcomes: dict[str, Sequence[tuple]] | None = None,
    texts: dict[str, Sequence[str]] | None = None,
) -> dict:
    """Compare two or three modes of the same posts (see the module docstring); returns the JSON ``comparison``.
    ``outcomes[mode]`` (optional): the posts' outcomes from the scoring pass, which give the per-post F1@M without
    scoring each post again. ``texts[mode]`` (optional): the raw replies; ``auto``'s decision on the decisive
    posts is then read from them (:func:`opens_with_think`), else from ``has_think``."""
    n = len(golds)
    if outcomes is not None:
        f1 = {m: per_post_f1_from_outcomes(outcomes[m]) for m in names}
    else:
        f1 = {m: per_post_f1(preds[m], golds) for m in names}
    # tie-break order: auto first (a tie means auto chose as well as any), then the order given
    order = sorted(names, key=lambda m: (m != AUTO, names.index(m)))
    winner: list[str] = []
    ties = all_tied = 0
    for i in range(n):
        scores = [f1[m][i] for m in order]
        best = max(scores)
        winner.append(order[scores.index(best)])
        n_best = scores.count(best)
        ties += n_best > 1
        all_tied += n_best == len(order)

    pairwise = {}
    for a, b in combinations(names, 2):
        a_win = sum(x > y for x, y in zip(f1[a], f1[b]))
        b_win = sum(y > x for x, y in zip(f1[a], f1[b]))
        pairwise[f"{a}_vs_{b}"] = {f"{a}_better": a_win, f"{b}_better": b_win, "tie": n - a_win - b_win}

    oracle_preds = [preds[w][i] for i, w in enumerate(winner)]
    oracle = evaluate_keyphrases(oracle_preds, golds, sources, train_set, ks=ks, variant=variant)
    oracle_thinks = [parsed[w][i].has_think for i, w in enumerate(winner)]
    oracle["cot_rate"] = sum(oracle_thinks) / n if n else 0.0
    oracle["gen_len"] = gen_len_of([lengths[w][i] for i, w in enumerate(winner)], oracle_thinks, unit)
    oracle["picks"] = {m: winner.count(m) for m in names}

    out: dict[str, Any] = {
        "modes": list(names),
        "num_posts": n,
        "criterion": "per-post F1@M; a tie goes to auto, then to the mode given first",
        "wins": {m: winner.count(m) for m in names},
        "ties": ties,
        "all_tied": all_tied,
        "pairwise": pairwise,
        "auto": None,
        "oracle": oracle,
        "gen_len": {m: gen_len_of(lengths[m], [p.has_think for p in parsed[m]], unit) for m in names},
        "per_post": {"winner": winner, "f1@M": f1},
    }
    if ids is not None:
        out["per_post"]["ids"] = list(ids)
    better = None  # per post +1 always better, -1 never better, 0 tie
    if "always" in names and "never" in names:
        better = [(a > b) - (a < b) for a, b in zip(f1["always"], f1["never"])]
        n_always = better.count(1)
        out["decisive"] = {"posts": n_always + better.count(-1), "always_better": n_always,
                           "never_better": better.count(-1)}
    if AUTO in names:
        others = [m for m in names if m != AUTO]
        good = [all(f1[AUTO][i] >= f1[m][i] for m in others) for i in range(n)]
        thought = [p.has_think for p in parsed[AUTO]]
        n_thought = sum(thought)
        good_thought = sum(g and t for g, t in zip(good, thought))
        out["auto"] = {
            "chose_better": sum(good),
            "chose_better_rate": sum(good) / n if n else 0.0,
            "against": others,
            "thought": {"posts": n_thought, "chose_better": good_thought},
            "did_not_think": {"posts": n - n_thought, "chose_better": sum(good) - good_thought},
            "decisive": None,
        }
        if better is not None:
            n_dec = out["decisive"]["posts"]
            decided = [opens_with_think(t) for t in texts[AUTO]] if texts is not None else thought
            right = sum(1 for b, t in zip(better, decided) if b and (b > 0) == t)
            out["auto"]["decisive"] = {"posts": n_dec, "correct": right, "accuracy": right / n_dec if n_dec else None}
    return out


def _pct(x: float | None) -> str:
    return f"{'-':>7}" if x is None else f"{100 * x:7.2f}"


def _len(x: float | None) -> str:
    return f"{'-':>9}" if x is None else f"{x:9.2f}"


def format_modes_table(result: dict) -> str:
    """The per-mode table of a result with ``modes`` and ``comparison`` (scores in %)."""
    comp = result["comparison"]
    modes = result["modes"]
    names = comp["modes"]
    ks = [k[3:] for k in modes[names[0]] if k.startswith("f1@")]
    map_key = "map@5" if "map@5" in modes[names[0]] else f"map@{ks[-1]}"
    unit = comp["gen_len"][names[0]]["unit"]
    cols = [f"F1@{k}" for k in ks] + [map_key.upper()]
    lines = [
        f"modes on the same {comp['num_posts']} posts; scores in %; length in {unit}",
        f"{'':8}{'CoT':>7}" + "".join(f"{c:>7}" for c in cols)
        + f"{'len all':>9}{'think':>9}{'no think':>9}{'best':>7}",
    ]
    rows = [(m, modes[m], comp["gen_len"][m], comp["wins"][m]) for m in names]
    rows.append(("oracle", comp["oracle"], comp["oracle"]["gen_len"], None))
    for name, d, gl, best in rows:
        vals = "".join(_pct(d[f"f1@{k}"]) for k in ks) + _pct(d[map_key])
        lines.append(
            f"{name:8}{_pct(d['cot_rate'])}{vals}{_len(gl['all'])}{_len(gl['with_think'])}{_len(gl['without_think'])}"
            f"{'' if best is None else best:>7}".rstrip()
        )
    lines.append("best: posts on which the mode has the highest F1@M (a tie goes to auto, then to the first given)")
    lines.append(f"ties (two or more modes share the best F1@M): {comp['ties']}; all modes equal: {comp['all_tied']}")
    for key, d in comp["pairwise"].items():
        a, b = key.split("_vs_")
        lines.append(f"per-post F1@M {a} vs {b}: {a} better {d[f'{a}_better']}, {b} better {d[f'{b}_better']}, "
                     f"tie {d['tie']}")
    auto = comp.get("auto")
    if auto:
        n = comp["num_posts"]
        th, nt = auto["thought"], auto["did_not_think"]
        lines.append(
            f"auto chose the better mode on {auto['chose_better']}/{n} posts ({100 * auto['chose_better_rate']:.2f}%;"
            f" its F1@M at least that of {', '.join(auto['against'])})"
        )
        lines.append(
            f"  when it thought {th['chose_better']}/{th['posts']}, when it did not think "
            f"{nt['chose_better']}/{nt['posts']}"
        )
        dec = auto.get("decisive")
        if dec is not None:
            acc = "-" if dec["accuracy"] is None else f"{100 * dec['accuracy']:.2f}%"
            lines.append(
                f"  on the {dec['posts']} decisive posts (F1@M of always and never differ) it took the better one on "
                f"{dec['correct']}/{dec['posts']} ({acc})"
            )
    else:
        lines.append("(no file named auto: the decision is not judged; see the pairwise counts and the oracle)")
    picks = ", ".join(f"{m} {c}" for m, c in comp["oracle"]["picks"].items())
    lines.append(f"oracle = per post the best mode's output ({picks})")
    if comp.get("intervals"):
        lines += format_intervals(comp["intervals"], [f"f1@{k}" for k in ks] + [map_key], comp["num_posts"])
    return "\n".join(lines)


def _signed(x: float | None, scale: float = 100.0, suffix: str = "") -> str:
    return "-" if x is None else f"{scale * x:+.2f}{suffix}"


def _cell(d: dict, scale: float = 100.0, suffix: str = "", sep: str = ",") -> str:
    """``+3.07 [+1.20,+4.90]`` (a difference and its interval), or the difference alone without resamples."""
    head = _signed(d.get("delta", d.get("relative_change")), scale, suffix)
    if d.get("low") is None:
        return head
    return f"{head} [{_signed(d['low'], scale, suffix)}{sep}{_signed(d['high'], scale, suffix)}]"


def _p(d: dict) -> str:
    return "-" if d.get("p_value") is None else f"{d['p_value']:.3f}"


def format_intervals(intervals: dict, keys: Sequence[str], num_posts: int) -> list[str]:
    """The lines of ``comparison.intervals``: per other mode a block, one row per score (its difference in points
    with its interval, for each subset) and a row of p-values under it; then the CoT rate (points) and the mean
    length (relative change)."""
    ref = intervals["reference"]
    boot = (f"{100 * intervals['level']:g}% paired bootstrap interval, {intervals['resamples']} resamples of the "
            f"{num_posts} posts, seed {intervals['seed']}; p two-sided" if intervals["resamples"]
            else "no resamples: no intervals")
    lines = []
    for m, blk in intervals["against"].items():
        subsets = [sub for sub in ("all", "present", "absent", "unseen") if blk.get(sub) is not None]
        cells = {k: [_cell(blk[sub][k]) for sub in subsets] for k in keys}
        width = max([len(c) for row in cells.values() for c in row] + [8]) + 2
        lines += ["", f"{ref} - {m} in points ({boot})",
                  f"{'':8}" + "".join(f"{sub:<{width}}" for sub in subsets).rstrip()]
        for k in keys:
            lines.append(f"{k.upper():8}" + "".join(f"{c:<{width}}" for c in cells[k]).rstrip())
            if intervals["resamples"]:
                lines.append(f"{'  p':8}" + "".join(f"{_p(blk[sub][k]):<{width}}" for sub in subsets).rstrip())
        cot, gl = blk["cot_rate"], blk["gen_len"]
        lines.append(f"CoT rate {_cell(cot, sep=', ')} (p {_p(cot)}); mean length {_cell(gl, suffix='%', sep=', ')} "
                     f"relative (p {_p(gl)})")
    return lines
