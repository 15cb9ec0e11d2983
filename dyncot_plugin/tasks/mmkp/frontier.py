"""The quality / think-rate frontier: the exact scores of the ``auto`` that every think-probability threshold gives,
from one ``always`` and one ``never`` prediction file of the same posts.

With the two-way decision, ``auto`` at threshold ``t`` generates a post exactly as ``always`` does when the model's
probability of opening its reply with the think tag (``think_prob``, written on every prediction row) is at least
``t``, and exactly as ``never`` does otherwise. So the ``always`` and ``never`` outputs of the same posts determine
the ``auto`` of every threshold: per post, its ``always`` output when ``think_prob >= t``, else its ``never`` one.
Only the distinct ``think_prob`` values change the choice, so the frontier has one point per distinct value plus the
think-rate-0 end (a threshold above every ``think_prob``).

Each point's ``threshold`` is one that reproduces it: strictly between the lowest ``think_prob`` that thinks there
(``min_thinking_prob``) and the highest that does not (``max_plain_prob``), near their midpoint
(:func:`between`; 1.0 at the never end, or just above 1 where some ``think_prob`` is 1; 0.0 at the always end);
printed in full. Prediction runs write every
``think_prob`` as the exact float their decision compared (:func:`dyncot_plugin.think.prob_for_file`), so typing a
point's threshold into ``dyncot_think_threshold`` gives that point again with the same engine and batch size, and
a value a few ulps off (another batching) still falls on the same side.

Computed incrementally, not by one evaluation per point: every CMKP score is a macro average over posts (F1 the
harmonic mean of macro P and R, or the mean per-post F1), and a post's contribution to each average depends on its
own output only (:func:`~dyncot_plugin.tasks.mmkp.metrics.post_outcomes`; which of all / present / absent / unseen
a post counts in depends on its gold and text only). The posts are sorted by ``think_prob``, highest first; starting
from ``never`` everywhere, each point switches the posts of one ``think_prob`` value to their ``always`` output and
updates the column sums by those posts' differences. Each point costs O(posts switched) plus O(1) for its scores.

The sums are kept exact: every per-post value is a float, i.e. an integer times a power of two, and is added as that
integer at a common scale (Python integers do not round). A point's macro average is then the exactly rounded mean,
the same for every path that reaches it; a fresh evaluation of that ``auto`` file adds the same floats one by one in
post order, so the two agree to the last bits of a float (within 1e-12 on the tests), and the lengths, counts and
think rates are equal exactly.

Pure functions of already-read lists; reading, the table's place and the CLI are in
:mod:`dyncot_plugin.tasks.mmkp.evaluate`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from itertools import groupby
from typing import Any

from dyncot_plugin.io.read import InputError
from dyncot_plugin.tasks.mmkp.metrics import harmonic_f1, normalise_ks, post_scores

__all__ = [
    "DEFAULT_THRESHOLD",
    "THINK_PROB_KEY",
    "TOLERANCE",
    "FrontierError",
    "best_point",
    "between",
    "compute_frontier",
    "format_frontier_table",
    "map_key",
    "merge_think_probs",
    "point_at_think_rate",
    "point_at_threshold",
    "read_think_probs",
    "summarize_frontier",
]

THINK_PROB_KEY = "think_prob"
DEFAULT_THRESHOLD = 0.5  # dyncot_think_threshold's default: the point a run without the key would produce
TOLERANCE = 1e-4  # think_prob of the same post in two files (the same prefill; batching may move the last digits)
SUBSETS = ("all", "present", "absent", "unseen")


class FrontierError(InputError):
    """``think_prob`` values that are missing, malformed or disagree between files; the message names file and row."""


# ------------------------------------------------------------------------------------------------------------------
# think_prob from the prediction rows
# ------------------------------------------------------------------------------------------------------------------


def read_think_probs(rows: Sequence[dict[str, Any]], path: Any) -> list[float] | None:
    """The ``think_prob`` of every row, or None when no row has one (a file from before the two-way decision).

    A file that has it on some rows only, or a value that is not a probability (a finite number in [0, 1]), is an
    error naming the file and the row (1-based, as in the file)."""
    have = [THINK_PROB_KEY in r for r in rows]
    if not any(have):
        return None
    out: list[float] = []
    for lineno, (row, has) in enumerate(zip(rows, have), 1):
        if not has:
            raise FrontierError(
                f"{path}, row {lineno}: no {THINK_PROB_KEY!r}, though other rows have one; every row of a prediction "
                f"run that writes it has it (mixed or concatenated files?)"
            )
        v = row[THINK_PROB_KEY]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
            raise FrontierError(
                f"{path}, row {lineno}: {THINK_PROB_KEY} is {v!r}; expected a probability (a number in [0, 1])"
            )
        out.append(float(v))
    return out


def merge_think_probs(files: Sequence[tuple[str, Any, list[float] | None]]) -> tuple[list[float], str] | None:
    """One ``think_prob`` per post from ``[(mode, path, values or None), ...]`` of the same posts.

    The model's probability of thinking does not depend on the mode it is then forced into, so every file that has
    the values must agree within :data:`TOLERANCE` (else an error names both files and the row). Returns
    ``(values, mode they were taken from)`` (the first file that has them, in the order given), or None if none
    has them."""
    have = [(m, p, v) for m, p, v in files if v is not None]
    if not have:
        return None
    m0, p0, v0 = have[0]
    for m, p, v in have[1:]:
        for i, (a, b) in enumerate(zip(v0, v)):
            if abs(a - b) > TOLERANCE:
                raise FrontierError(
                    f"{p0} ({m0}) and {p} ({m}) differ at row {i + 1}: {THINK_PROB_KEY} {a!r} vs {b!r} (more than "
                    f"{TOLERANCE:g} apart); the probability of thinking is the same in every mode, so the files "
                    f"must come from the same model, posts and prompts"
                )
    return list(v0), m0


# ------------------------------------------------------------------------------------------------------------------
# The frontier
# ------------------------------------------------------------------------------------------------------------------


def _exponent(x: float) -> int:
    """``e`` such that ``x * 2**e`` is an integer (floats are integers times powers of two)."""
    return x.as_integer_ratio()[1].bit_length() - 1


def map_key(ks: Sequence) -> str:
    """The MAP column the reports show: MAP@5 when 5 is a cut-off, else MAP at the last one (as the tables)."""
    return "map@5" if 5 in ks else f"map@{ks[-1]}"


def compute_frontier(
    outcomes: dict[str, Sequence[tuple]],
    think_probs: Sequence[float],
    lengths: dict[str, Sequence[int]],
    thinks: dict[str, Sequence[bool]],
    ks: Sequence = (1, 3, 5),
    variant: str = "cmkp",
    present_absent: bool = False,
    unseen: bool = False,
) -> tuple[list[dict], dict]:
    """The frontier points, ordered by think rate from 0 to 1 (see the module docstring), and the decisive posts
    ``{"posts", "always_better", "never_better"}``.

    ``outcomes[mode]`` (mode ``always`` and ``never``): :func:`~.metrics.post_outcomes` of that file's predictions;
    ``lengths[mode]`` every output's generated length; ``thinks[mode]`` whether it thinks (``has_think``);
    ``think_probs`` one per post; ``present_absent`` / ``unseen``: whether those subsets were computed (post texts /
    training keyphrases given). Each point: ``threshold`` (a ``dyncot_think_threshold`` that gives this ``auto``,
    strictly between ``max_plain_prob`` and ``min_thinking_prob``: :func:`between`), ``min_thinking_prob`` (the
    ``think_prob`` of the posts it switched last; None at the never end) and ``max_plain_prob`` (the next lower
    distinct value; None at the always end): every threshold ``t`` with ``max_plain_prob < t <= min_thinking_prob``
    gives this point; ``think_rate`` and ``num_think`` (posts taking their ``always`` output), ``f1@k`` for every
    cut-off and the MAP column over all posts, ``present`` / ``absent`` / ``unseen`` (the same keys, or None when not
    computed), ``cot_rate`` (share of the chosen outputs that think, as ``dyncot-eval`` counts it on the ``auto``
    file), ``mean_tokens`` (mean generated length of the chosen outputs) and, over the *decisive* posts (those whose
    F1@M differs between ``always`` and ``never``), ``decisive_correct`` (posts that took the better of the two) and
    ``decision_accuracy`` (None without decisive posts).
    """
    ks = normalise_ks(ks)
    nk = len(ks)
    n = len(think_probs)
    a_out, n_out = outcomes["always"], outcomes["never"]
    if not (len(a_out) == len(n_out) == len(lengths["always"]) == len(lengths["never"]) == n):
        raise ValueError("outcomes, lengths and think_probs must have one entry per post")
    mkey = map_key(ks)
    # the columns of post_scores a point needs: P@k and R@k (cmkp) or the per-post F1@k (per_post), and the MAP one
    f1_cols = list(range(2 * nk, 3 * nk)) if variant == "per_post" else list(range(2 * nk))
    cols = f1_cols + [3 * nk + ks.index(5 if 5 in ks else ks[-1])]
    j_f1m = 2 * nk + ks.index("M")  # the per-post F1@M, for the decisive posts
    f1_keys = [f"f1@{k}" for k in ks]

    # per-post score vectors, once per distinct outcome, as integers at one scale (exact sums)
    table: dict[tuple, tuple] = {}
    for out in (a_out, n_out):
        for post in out:
            for oc in post:
                if oc is not None and oc not in table:
                    table[oc] = post_scores(oc, ks)
    scale = max([_exponent(float(vals[c])) for vals in table.values() for c in cols] + [0])
    ints = {oc: tuple(int(float(vals[c]) * (1 << scale)) for c in cols) for oc, vals in table.items()}

    n_sub = len(SUBSETS)
    sums = [[0] * len(cols) for _ in range(n_sub)]
    members = [0] * n_sub
    computed = (True, present_absent, present_absent, unseen)
    deltas: list[list[tuple[int, tuple]]] = []
    decisive_better: list[int] = []  # +1 always better, -1 never better, 0 tie (not decisive)
    for i in range(n):
        d: list[tuple[int, tuple]] = []
        for b in range(n_sub):
            oa, on = a_out[i][b], n_out[i][b]
            if (oa is None) != (on is None):
                raise ValueError(f"post {i}: always and never outcomes disagree on whether it is in {SUBSETS[b]}")
            if on is None:
                continue
            members[b] += 1
            vn = ints[on]
            sums[b] = [s + x for s, x in zip(sums[b], vn)]
            if oa != on:
                d.append((b, tuple(x - y for x, y in zip(ints[oa], vn))))
        deltas.append(d)
        fa, fn = table[a_out[i][0]][j_f1m], table[n_out[i][0]][j_f1m]
        decisive_better.append((fa > fn) - (fa < fn))

    n_decisive = sum(1 for x in decisive_better if x)
    correct = sum(1 for x in decisive_better if x < 0)  # never everywhere: right where never is better
    len_a, len_n = lengths["always"], lengths["never"]
    th_a, th_n = thinks["always"], thinks["never"]
    len_sum = sum(len_n)
    cot = sum(map(bool, th_n))
    num_think = 0
    zeros = [0.0] * len(cols)

    def scores(b: int) -> dict:
        m = members[b]
        denom = m << scale
        means = [x / denom for x in sums[b]] if m else zeros  # int / int: the exactly rounded mean
        if variant == "per_post":
            vals = dict(zip(f1_keys, means))
        else:  # the same formula as evaluate_keyphrases, on the macro P and R
            vals = {key: harmonic_f1(means[j], means[nk + j]) for j, key in enumerate(f1_keys)}
        vals[mkey] = means[-1]
        return vals

    def point(min_thinking: float | None, max_plain: float | None) -> dict:
        p: dict[str, Any] = {"threshold": between(max_plain, min_thinking), "min_thinking_prob": min_thinking,
                             "max_plain_prob": max_plain, "think_rate": num_think / n, "num_think": num_think}
        p.update(scores(0))
        for b in range(1, n_sub):
            p[SUBSETS[b]] = {**scores(b), "num_posts": members[b]} if computed[b] else None
        p["cot_rate"] = cot / n
        p["mean_tokens"] = len_sum / n
        p["decisive_correct"] = correct
        p["decision_accuracy"] = correct / n_decisive if n_decisive else None
        return p

    order = sorted(range(n), key=lambda i: -think_probs[i])
    values = [prob for prob, _ in groupby(think_probs[i] for i in order)]  # distinct, highest first
    points = [point(None, values[0] if values else None)]
    for k, (prob, group) in enumerate(groupby(order, key=lambda i: think_probs[i])):
        for i in group:
            num_think += 1
            len_sum += len_a[i] - len_n[i]
            cot += bool(th_a[i]) - bool(th_n[i])
            correct += decisive_better[i]
            for b, delta in deltas[i]:
                sums[b] = [s + x for s, x in zip(sums[b], delta)]
        points.append(point(prob, values[k + 1] if k + 1 < len(values) else None))
    always_better = decisive_better.count(1)
    decisive = {"posts": n_decisive, "always_better": always_better, "never_better": n_decisive - always_better}
    return points, decisive


def point_at_threshold(points: Sequence[dict], threshold: float) -> int:
    """Index of the point that ``dyncot_think_threshold: threshold`` gives (think where ``think_prob >= threshold``)."""
    # min_thinking_prob decreases along the list from points[1] on: the last point where it is >= t, else the first
    neg = [-p["min_thinking_prob"] for p in points[1:]]
    return bisect.bisect_right(neg, -threshold)


def between(max_plain: float | None, min_thinking: float | None) -> float:
    """A threshold that thinks on every ``think_prob >= min_thinking`` and on none ``<= max_plain`` (None: no post
    on that side), strictly between the two: the shortest decimal in the middle half of the gap, nearest its
    midpoint (between 0.3 and 0.6: 0.4, not 0.44999999999999996), so that it reads well and a value a few ulps off
    stays on its side; 1.0 (or the float above the top value, if that is 1) when nothing thinks; 0.0 when
    everything does. Where the two are adjacent floats nothing lies between them, and ``min_thinking`` itself is
    returned (``>=`` still splits them)."""
    if min_thinking is None:
        top = max_plain if max_plain is not None else 0.0
        return 1.0 if top < 1.0 else math.nextafter(top, math.inf)
    if max_plain is None:
        return 0.0
    gap = min_thinking - max_plain
    mid = max_plain + gap / 2
    for digits in range(1, 18):
        value = float(f"{mid:.{digits}g}")
        if max_plain + gap / 4 <= value <= min_thinking - gap / 4 and max_plain < value < min_thinking:
            return value
    return mid if max_plain < mid < min_thinking else min_thinking


def point_at_think_rate(points: Sequence[dict], rate: float) -> int:
    """Index of the point with the lowest threshold whose think rate is at most ``rate``."""
    rates = [p["think_rate"] for p in points]
    return max(bisect.bisect_right(rates, rate) - 1, 0)


def best_point(points: Sequence[dict], key: str = "f1@M") -> int:
    """Index of the point with the highest ``key`` (the lowest think rate among equals)."""
    best = 0
    for j, p in enumerate(points):
        if p[key] > points[best][key]:
            best = j
    return best


def summarize_frontier(
    points: Sequence[dict],
    decisive: dict,
    unit: str,
    think_probs: Sequence[float],
    think_source: str,
    threshold: float = DEFAULT_THRESHOLD,
    think_rate: float | None = None,
    auto: dict | None = None,
) -> dict:
    """The JSON ``frontier_summary``: the point of ``threshold`` (``at_threshold``), the F1@M-best point (``best``),
    the point of ``--think-rate`` (``at_think_rate``, None without it), the decisive posts, the length unit, where
    ``think_prob`` was read (the mode of that file) and its range, and the given ``auto`` file's own point
    (``auto_file``: its think rate (replies that open with the think tag: the decision), ``cot_rate``, scores and
    length as evaluated, e.g. the greedy rule's; None without an ``auto`` file). Each point is copied with its ``index`` in ``frontier``."""

    def at(j: int) -> dict:
        return {"index": j, **points[j]}

    out: dict[str, Any] = {
        "num_points": len(points),
        "num_posts": points[-1]["num_think"],  # every post thinks at the last point
        "threshold": threshold,
        "at_threshold": at(point_at_threshold(points, threshold)),
        "best": {"by": "f1@M", **at(best_point(points))},
        "at_think_rate": None,
        "decisive": dict(decisive),
        "unit": unit,
        "think_prob": {"from": think_source, "min": min(think_probs), "max": max(think_probs),
                       "mean": sum(think_probs) / len(think_probs)},
        "auto_file": auto,
    }
    if think_rate is not None:
        out["at_think_rate"] = {"max_think_rate": think_rate, **at(point_at_think_rate(points, think_rate))}
    return out


# ------------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return f"{'-':>7}" if x is None else f"{100 * x:7.2f}"


def format_frontier_table(result: dict) -> str:
    """The frontier section of the table: the two ends, the marked threshold, the F1@M-best point, the point of
    ``--think-rate`` and the deciles of the think rate (scores in %)."""
    points = result["frontier"]
    info = result["frontier_summary"]
    ks = [k for k in points[0] if k.startswith("f1@")]
    mkey = next(k for k in points[0] if k.startswith("map@"))
    cols = [k.upper() for k in ks] + [mkey.upper()]
    unit = info["unit"].replace("whitespace_words", "words")
    lines = [
        (f"frontier: the auto of each think_prob threshold ({len(points)} points): per post the always output where "
         f"think_prob >= threshold,"),
        f"  else the never output; scores in %; length in {unit}; decisive: % of the decisive posts decided right;",
        "  threshold: one that reproduces the point (between its think_prob values; type it in as printed)",
        f"{'':16}{'threshold':>20}{'think':>8}" + "".join(f"{c:>7}" for c in cols) + f"{'len':>9}{'decisive':>10}",
    ]
    marks: dict[int, list[str]] = {}
    for j in (0, len(points) - 1):
        marks.setdefault(j, []).append("never" if j == 0 else "always")
    marks.setdefault(info["at_threshold"]["index"], []).append(f"t={info['threshold']:g}")
    marks.setdefault(info["best"]["index"], []).append("best F1@M")
    if info.get("at_think_rate"):
        rate = info["at_think_rate"]
        marks.setdefault(rate["index"], []).append(f"rate<={rate['max_think_rate']:g}")
    for d in range(1, 10):
        marks.setdefault(point_at_think_rate(points, d / 10), [])
    for j in sorted(marks):
        p = points[j]
        acc = p["decision_accuracy"]
        lines.append(
            f"{', '.join(marks[j]):16}{p['threshold']!r:>20}{_pct(p['think_rate']):>8}"
            + "".join(_pct(p[k]) for k in ks) + _pct(p[mkey])
            + f"{p['mean_tokens']:9.2f}{'-' if acc is None else f'{100 * acc:.1f}':>10}"
        )
    dec = info["decisive"]
    lines.append(
        f"decisive posts (F1@M of always and never differ): {dec['posts']}; always better on {dec['always_better']}, "
        f"never on {dec['never_better']}"
    )
    at, best = info["at_threshold"], info["best"]
    lines.append(
        f"at threshold {info['threshold']!r}: think rate {100 * at['think_rate']:.2f}%, F1@1 {100 * at['f1@1']:.2f}, "
        f"F1@M {100 * at['f1@M']:.2f}; best F1@M {100 * best['f1@M']:.2f} at threshold {best['threshold']!r} "
        f"(think rate {100 * best['think_rate']:.2f}%)"
    )
    r = info.get("at_think_rate")
    if r:
        lines.append(
            f"think rate at most {100 * r['max_think_rate']:.2f}%: threshold {r['threshold']!r} (think rate "
            f"{100 * r['think_rate']:.2f}%, mean length {r['mean_tokens']:.2f}):"
        )
        lines.append("  " + ", ".join(f"{k.upper()} {100 * r[k]:.2f}" for k in ks + [mkey]))
    return "\n".join(lines)
