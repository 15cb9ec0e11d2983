"""Paired bootstrap of the corpus-level MMKP scores: how sure a difference between two runs on the same posts is.

Resampling: ``B`` resamples of the posts, each ``n`` posts drawn with replacement from the ``n`` test posts; every run
is scored on the *same* resamples (paired), so what the runs have in common (easy and hard posts) cancels out of the
difference. The models and their outputs are fixed: the interval says how much the difference could move if the
test posts had been another draw from the same population, not how another training seed would do.

Each score is recomputed on a resample exactly as ``dyncot-eval mmkp`` computes it on a file
(:mod:`~dyncot_plugin.tasks.mmkp.metrics`): every CMKP score is a macro average over the posts of a subset (all,
present, absent, unseen; which subset a post is in depends on its gold keyphrases and text only), and F1 is the
harmonic mean of macro P and macro R (``variant="cmkp"``) or the mean per-post F1 (``per_post``). A resample is a
vector of counts ``c`` (how often each post was drawn), so its macro average over a subset is ``sum(c * member *
value) / sum(c * member)``: per post and run, the per-post values (:func:`~.metrics.post_scores`: P@k, R@k, F1@k,
AP@k), a membership flag per subset, whether the output thinks and its length are the sufficient statistics, and
all ``B`` resamples of all runs are one matrix product ``counts @ statistics`` (numpy; chunks of resamples bound
the memory). The CoT rate and the mean length are plain means over all posts.

Pairing made exact: a run's sums are computed as the reference run's sums plus ``counts @ (its statistics - the
reference's)``. Where two runs agree on a post, the difference is exactly zero and adds exactly nothing, so a run
against itself gives differences that are exactly 0 on every resample (interval [0, 0], p = 1), and two runs that
differ on one post differ on a resample only through that post's count.

Interval and p-value (:func:`difference_summary`): the percentile interval of the resampled differences
(``level`` = 0.95: their 2.5th and 97.5th percentiles, numpy's linear interpolation), and the two-sided p-value
that inverts it (Koehn 2004's paired bootstrap, two-sided): ``p = min(1, 2 * min(1 + #{d* <= 0}, 1 + #{d* >= 0})
/ (B + 1))``. ``p < 1 - level`` goes with an interval that excludes 0, up to one resample's resolution; the ``+ 1``
keeps ``p >= 2 / (B + 1)``, so no p-value claims more than ``B`` resamples can show.

Pure functions of per-post outcomes; reading, the table and the CLI are in :mod:`~dyncot_plugin.tasks.mmkp.table`
and :mod:`~dyncot_plugin.tasks.mmkp.evaluate`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dyncot_plugin.tasks.mmkp.metrics import normalise_ks, post_scores

__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "SUBSETS",
    "Layout",
    "bootstrap_metrics",
    "compare_runs",
    "corpus_metrics",
    "difference_summary",
    "post_matrix",
    "resample_counts",
    "values_of",
]

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95
SUBSETS = ("all", "present", "absent", "unseen")
# Counts drawn per chunk (resamples x posts): bounds the memory (8 bytes each) whatever the number of posts.
_CHUNK_CELLS = 2_000_000


@dataclass(frozen=True)
class Layout:
    """Which columns a run's statistics matrix holds and which metrics they give.

    ``ks``: the cut-offs as :func:`~.metrics.normalise_ks` returns them; ``variant``: ``cmkp`` or ``per_post``;
    ``subsets``: the subsets that were scored (``all`` always; ``present`` and ``absent`` with post texts,
    ``unseen`` with training keyphrases). Per subset the matrix holds its membership flag, then P@k and R@k
    (``cmkp``) or F1@k (``per_post``) for every k, then AP at the MAP column's cut-off (MAP@5 when 5 is a cut-off,
    else the last one, as the reports show); then one column "the output thinks" and one "its length".
    """

    ks: tuple
    variant: str
    subsets: tuple[str, ...]

    @classmethod
    def make(cls, ks: Sequence, variant: str, present_absent: bool, unseen: bool) -> Layout:
        if variant not in ("cmkp", "per_post"):
            raise ValueError(f"variant must be cmkp or per_post, got {variant!r}")
        subsets = ("all",) + (("present", "absent") if present_absent else ()) + (("unseen",) if unseen else ())
        return cls(normalise_ks(ks), variant, subsets)

    @property
    def map_k(self):
        return 5 if 5 in self.ks else self.ks[-1]

    @property
    def score_keys(self) -> list[str]:
        """The score keys of each subset: ``f1@k`` for every k, then the MAP column."""
        return [f"f1@{k}" for k in self.ks] + [f"map@{self.map_k}"]

    @property
    def per_subset(self) -> int:
        nk = len(self.ks)
        return 1 + (2 * nk if self.variant == "cmkp" else nk) + 1

    @property
    def width(self) -> int:
        return len(self.subsets) * self.per_subset + 2

    def post_columns(self) -> list[int]:
        """Indices into :func:`~.metrics.post_scores`' tuple of the value columns of one subset, in matrix order."""
        nk = len(self.ks)
        vals = list(range(2 * nk)) if self.variant == "cmkp" else list(range(2 * nk, 3 * nk))
        return vals + [3 * nk + self.ks.index(self.map_k)]

    def metric_names(self) -> list[tuple[str, str]]:
        """``(subset, key)`` of every metric :func:`corpus_metrics` returns: the scores of every subset, then
        ``("all", "cot_rate")`` and ``("all", "gen_len")`` (the mean length)."""
        return [(s, k) for s in self.subsets for k in self.score_keys] + [("all", "cot_rate"), ("all", "gen_len")]


def post_matrix(
    outcomes: Sequence[tuple], thinks: Sequence[bool], lengths: Sequence[int | float], layout: Layout
) -> np.ndarray:
    """One run's per-post sufficient statistics, ``(n posts, layout.width)`` float64 (see :class:`Layout`).

    ``outcomes``: :func:`~.metrics.post_outcomes` of the run (or the ``outcomes`` list :func:`~.metrics.
    evaluate_keyphrases` fills): per post ``(all, present, absent, unseen)``, each ``(hits, #gold)`` or None;
    ``thinks``: whether each output thinks (``has_think``, as the CoT rate counts); ``lengths``: each output's
    generated length."""
    n = len(outcomes)
    if not (len(thinks) == len(lengths) == n):
        raise ValueError(f"{n} outcomes, {len(thinks)} think flags and {len(lengths)} lengths: one per post")
    cols = layout.post_columns()
    index = [SUBSETS.index(s) for s in layout.subsets]
    width = layout.per_subset
    cache: dict[tuple, tuple] = {}
    rows = np.zeros((n, layout.width), dtype=np.float64)
    for i, post in enumerate(outcomes):
        for j, b in enumerate(index):
            oc = post[b]
            if oc is None:
                continue
            vals = cache.get(oc)
            if vals is None:
                scores = post_scores(oc, layout.ks)
                vals = cache[oc] = (1.0, *(float(scores[c]) for c in cols))
            rows[i, j * width:(j + 1) * width] = vals
    rows[:, -2] = np.fromiter(map(bool, thinks), dtype=np.float64, count=n)
    rows[:, -1] = np.asarray(lengths, dtype=np.float64)
    return rows


def corpus_metrics(sums: np.ndarray, layout: Layout, num_posts: np.ndarray | float) -> dict[tuple[str, str], np.ndarray]:
    """Every metric of :meth:`Layout.metric_names` from column sums (``(resamples, width)``: per resample, the
    count-weighted sums of a run's statistics) and the number of posts drawn (``sum(counts)``, per resample).

    The formulas of :mod:`~.metrics`: per subset the macro means (0 for a subset no drawn post is in, as the
    evaluator reports an empty subset), F1 the harmonic mean of the macro P and R (``cmkp``) or the macro mean of
    the per-post F1 (``per_post``), MAP the macro mean of AP; the CoT rate and the mean length over all posts."""
    sums = np.atleast_2d(sums)
    nk = len(layout.ks)
    width = layout.per_subset
    out: dict[tuple[str, str], np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for j, subset in enumerate(layout.subsets):
            block = sums[:, j * width:(j + 1) * width]
            members = block[:, 0]
            means = np.where(members[:, None] > 0, block[:, 1:] / members[:, None], 0.0)
            for i, k in enumerate(layout.ks):
                if layout.variant == "cmkp":
                    p, r = means[:, i], means[:, nk + i]
                    f1 = np.where(p + r > 0, (2 * p * r) / (p + r), 0.0)  # metrics.harmonic_f1, element-wise
                else:
                    f1 = means[:, i]
                out[(subset, f"f1@{k}")] = f1
            out[(subset, f"map@{layout.map_k}")] = means[:, -1]
        out[("all", "cot_rate")] = sums[:, -2] / num_posts
        out[("all", "gen_len")] = sums[:, -1] / num_posts
    return out


def resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The resamples as count vectors, in chunks ``(chunk, n)`` float64: row ``b`` counts how often each post was
    drawn in resample ``b`` (``n`` draws with replacement, uniform). The draws come from
    ``numpy.random.default_rng(seed)`` in resample order, so they depend on ``n``, ``resamples`` and ``seed`` only
    (not on the runs compared, nor on the chunk size)."""
    if n <= 0:
        raise ValueError("no posts to resample")
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n)
    dtype = np.int32 if chunk * n < 2**31 else np.int64  # 32-bit draws: half the memory traffic
    done = 0
    while done < resamples:
        m = min(chunk, resamples - done)
        draws = rng.integers(0, n, size=(m, n), dtype=dtype)
        draws += (np.arange(m, dtype=dtype) * n)[:, None]  # resample b's posts are b * n + post
        yield np.bincount(draws.ravel(), minlength=m * n).reshape(m, n).astype(np.float64)
        done += m


def bootstrap_metrics(
    matrices: Mapping[str, np.ndarray],
    reference: str,
    layout: Layout,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    counts: np.ndarray | None = None,
) -> dict[str, dict[tuple[str, str], np.ndarray]]:
    """Every metric of every run on the same ``resamples`` resamples: ``{run: {(subset, key): array (resamples,)}}``.

    ``matrices``: each run's :func:`post_matrix` (the same posts in the same order); ``reference``: the run whose
    sums are computed directly, every other run's as the reference's plus the sums of its difference (exact
    pairing, see the module docstring). ``counts``: the resamples as a ``(resamples, n)`` count matrix instead of
    drawing them from ``seed`` (``np.vstack(list(resample_counts(n, resamples, seed)))`` gives the same draws:
    many samples of one size can share them, as every command run with the default seed does)."""
    names = list(matrices)
    ref = matrices[reference]
    n, width = ref.shape
    if width != layout.width:
        raise ValueError(f"statistics of width {width}, the layout needs {layout.width}")
    for name in names:
        if matrices[name].shape != ref.shape:
            raise ValueError(f"run {name}: statistics {matrices[name].shape}, the reference's {ref.shape}")
    others = [m for m in names if m != reference]
    # one matrix product per chunk: [reference | other - reference | ...]
    design = np.hstack([ref] + [matrices[m] - ref for m in others]) if others else ref
    if counts is not None:
        if counts.ndim != 2 or counts.shape[1] != n:
            raise ValueError(f"counts of shape {counts.shape} for {n} posts")
        sums = counts @ design
    else:
        sums = np.empty((resamples, design.shape[1]), dtype=np.float64)
        row = 0
        for chunk in resample_counts(n, resamples, seed):
            sums[row:row + len(chunk)] = chunk @ design
            row += len(chunk)
    base = sums[:, :width]
    out = {reference: corpus_metrics(base, layout, float(n))}
    for j, m in enumerate(others, 1):
        out[m] = corpus_metrics(base + sums[:, j * width:(j + 1) * width], layout, float(n))
    return {m: out[m] for m in names}


def difference_summary(diffs: np.ndarray, level: float = DEFAULT_LEVEL) -> dict[str, Any]:
    """``{"low", "high", "p_value"}`` of resampled differences (a run minus the baseline, or a relative change):
    the percentile interval at ``level`` and the two-sided p-value that inverts it (see the module docstring).
    None everywhere when a resample's difference is not finite (a relative change over a zero length)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.size == 0 or not np.all(np.isfinite(diffs)):
        return {"low": None, "high": None, "p_value": None}
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diffs, [tail, 100 - tail])
    b = diffs.size
    below, above = int(np.sum(diffs <= 0)), int(np.sum(diffs >= 0))
    p = min(1.0, 2 * min(below + 1, above + 1) / (b + 1))
    return {"low": float(low), "high": float(high), "p_value": p}


def values_of(result: dict, layout: Layout) -> dict[tuple[str, str], float | None]:
    """The values of :meth:`Layout.metric_names` in a ``dyncot-eval mmkp`` result (the JSON of one run): the scores
    of every subset, ``cot_rate`` and the mean length of all outputs (``gen_len.all``); None where absent."""
    out: dict[tuple[str, str], float | None] = {}
    for subset, key in layout.metric_names():
        if key == "cot_rate":
            out[(subset, key)] = result.get("cot_rate")
        elif key == "gen_len":
            out[(subset, key)] = (result.get("gen_len") or {}).get("all")
        else:
            d = result if subset == "all" else result.get(subset)
            out[(subset, key)] = d.get(key) if isinstance(d, dict) else None
    return out


def _change(run: float | None, ref: float | None, relative: bool) -> float | None:
    if run is None or ref is None:
        return None
    if relative:
        return run / ref - 1.0 if ref else None
    return run - ref


def compare_runs(
    results: Mapping[str, dict],
    matrices: Mapping[str, np.ndarray] | None,
    reference: str,
    layout: Layout,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL,
    reference_minus_run: bool = False,
) -> dict[str, dict]:
    """Every run other than ``reference`` against it, on the same resamples: ``{run: block}``.

    ``results``: each run's ``dyncot-eval mmkp`` result, whose values are the point estimates (so a difference is
    exactly that of the two evaluations); ``matrices``: each run's :func:`post_matrix` (None, or ``resamples`` 0:
    no intervals). A block: ``{subset: {score key: {"delta", "low", "high", "p_value"}} or None (subset not
    scored), "cot_rate": {...}, "gen_len": {"relative_change", "low", "high", "p_value"}}``. ``delta`` is the run
    minus the reference (``reference_minus_run``: the reference minus the run, e.g. auto - always), in the
    results' units (fractions); ``gen_len`` is the relative change of the mean length (``run / reference - 1``,
    or ``reference / run - 1``). ``low`` / ``high`` / ``p_value``: :func:`difference_summary` of the resampled
    differences, None without resamples."""
    names = [m for m in results if m != reference]
    boot = None
    if matrices is not None and resamples > 0:
        boot = bootstrap_metrics({m: matrices[m] for m in results}, reference, layout, resamples, seed)
    points = {m: values_of(results[m], layout) for m in results}
    out: dict[str, dict] = {}
    for m in names:
        a, b = (reference, m) if reference_minus_run else (m, reference)
        block: dict[str, Any] = {s: ({} if s in layout.subsets else None) for s in SUBSETS}
        for subset, key in layout.metric_names():
            relative = key == "gen_len"
            entry: dict[str, Any] = {("relative_change" if relative else "delta"): _change(
                points[a][(subset, key)], points[b][(subset, key)], relative)}
            if boot is not None:
                x, y = boot[a][(subset, key)], boot[b][(subset, key)]
                with np.errstate(divide="ignore", invalid="ignore"):
                    diffs = x / y - 1.0 if relative else x - y
                entry.update(difference_summary(diffs, level))
            else:
                entry.update({"low": None, "high": None, "p_value": None})
            if key in ("cot_rate", "gen_len"):
                block[key] = entry
            else:
                block[subset][key] = entry
        out[m] = block
    return out
