"""Keyphrase metrics that reproduce CMKP's evaluator (``pred_evaluate_func.py``) number for number, fast.

:func:`evaluate_keyphrases` is a pure function of the predicted and gold keyphrase lists (plus, optionally, the
post texts for present/absent and the training keyphrases for unseen). Per post, exactly as CMKP does it:

1. every keyphrase is tokenised with ``strip().split(" ")`` and each token is stripped, lower-cased and
   Porter-stemmed (:mod:`dyncot_plugin.tasks.mmkp.normalize`);
2. gold keyphrases are de-duplicated on their stemmed form (first kept);
3. predictions are de-duplicated on their stemmed form (first kept; an invalid first occurrence still shadows
   later copies) and invalid ones are dropped (a stemmed token ``<unk>``, ``,`` or ``.``); empty predictions are
   *kept* (CMKP's ``len(word_list) == 0`` test can never fire after ``split(" ")``), they just never match;
4. a prediction matches when its stemmed tokens, joined by spaces, equal those of a gold keyphrase;
5. @k takes the first ``min(k, #predictions)`` remaining predictions, without padding:
   ``P@k = matches / min(k, #pred)`` (0 when there is no prediction), ``R@k = matches / #gold``;
   ``AP@k = sum of P@i over the matching ranks i <= k, divided by #gold``; ``M`` means all predictions;
6. P, R and AP are averaged over posts (macro); F1 is the harmonic mean of macro-P and macro-R
   (``variant="cmkp"``) or the mean of the per-post F1 (``variant="per_post"``, used by some later papers).

Present / absent: gold keyphrases *and* predictions are split by whether their stemmed tokens occur contiguously
in the stemmed post text; the present (absent) scores average only over the posts with at least one present
(absent) gold keyphrase, predictions of the other kind being ignored, as in CMKP.

Unseen (not in CMKP): a keyphrase is *seen* when its string (stripped of surrounding white space, otherwise exact:
no lower-casing, no stemming) is one of the training keyphrases, the definition the data tools use for train→test
overlap. Unseen scores are computed like absent ones: unseen predictions against unseen gold keyphrases (matched
as usual, after stemming), over the posts with at least one unseen gold keyphrase.

Speed: keyphrases are analysed once per distinct string and words stemmed once per distinct word. A post word is
only stemmed when its first letter is the first letter of some stemmed keyphrase word of that post: a Porter
stem (nltk) always keeps the word's first character, so any other word cannot be part of a match and is replaced
by a placeholder that equals no keyphrase word. This is exact, and skips most of the cold stemming work.

Import-light: nltk only (no torch, no numpy).
"""

from __future__ import annotations

from itertools import compress
from operator import not_
from typing import Iterable, Sequence

from dyncot_plugin.io.files import paused_gc
from dyncot_plugin.tasks.mmkp.normalize import _STEMMER, INVALID_TOKENS, STEM_CACHE, stem_lower

__all__ = [
    "VARIANTS",
    "evaluate_keyphrases",
    "harmonic_f1",
    "load_train_keyphrases_set",
    "normalise_ks",
    "post_outcomes",
    "post_scores",
    "scores_from_means",
]

VARIANTS = ("cmkp", "per_post")

# Raw keyphrase piece -> _kp_info tuple.
_KP_INFO: dict[str, tuple] = {}
# Raw post word -> its stem, or a marker (_MARK + first three lower-cased letters) while no post has needed it.
_SRC_TOKENS: dict[str, str] = {}
_MARK = "\x00"
_NEEDLE = " " + _MARK
_MARK_IN_KEYPHRASES = False  # set if a stemmed keyphrase word ever starts with _MARK (then no markers are used)


def _stem_prefix_ok(w: str, s: str) -> bool:
    """The prefix property of nltk's Porter stem ``s`` of the lower-cased word ``w`` (see :func:`_stemmed_source`)."""
    if len(s) <= 2:
        return s == w[: len(s)]
    return s[:2] == w[:2] and (s[2] == w[2:3] or (s[2] == "i" and w[2:3] == "y") or (s[2] == "e" and len(s) == 3))


# Irregular forms (nltk's pool: skies -> sky, dying -> die) that break the prefix property: always stemmed.
_POOL_MOVED = frozenset(w for w, s in getattr(_STEMMER, "pool", {}).items() if not _stem_prefix_ok(w, s))


def _needles(stem: str) -> tuple[list[str], list[str]]:
    """The markers of the post words that may stem to ``stem``: ``(exact markers, marker beginnings)``.

    Exact: ``_MARK`` + the first three letters a word needs; beginnings (``" " + _MARK + ...``, searched in the
    stemmed post text) for stems of one or two letters and for three-letter stems ending in an ``e``.
    """
    if len(stem) <= 2:
        return [], [_NEEDLE + stem]
    exact = [_MARK + stem[:3]]
    if stem[2] == "i":
        exact.append(_MARK + stem[:2] + "y")
    if stem[2] == "e" and len(stem) == 3:
        return exact, [_NEEDLE + stem[:2]]
    return exact, []


# Raw keyphrase word -> (stem, exact markers, marker beginnings).
_WORD_INFO: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}


def _word_info(tok: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    w = tok.strip().lower()
    s = STEM_CACHE.get(w)
    if s is None:
        s = stem_lower(w)
    if s:
        exact, begins = _needles(s)
        info = (s, tuple(exact), tuple(begins))
    else:
        info = (s, (), ())
    if len(_WORD_INFO) < 2_000_000:
        _WORD_INFO[tok] = info
    return info


def _kp_info(piece: str) -> tuple:
    """``(match key, dedup key, valid, presence probe, exact markers, seen-set key, marker beginnings)`` of one
    keyphrase string (see :func:`_needles` for the markers)."""
    global _MARK_IN_KEYPHRASES
    info = _KP_INFO.get(piece)
    if info is not None:
        return info
    get = _WORD_INFO.get
    toks = piece.strip().split(" ")
    if len(toks) == 1:
        stem, exact, begins = get(toks[0]) or _word_info(toks[0])
        stems = (stem,)
        match_key = dedup_key = stem
    else:
        infos = [get(t) or _word_info(t) for t in toks]
        stems = [x[0] for x in infos]
        match_key = " ".join(stems)  # CMKP compares ' '.join(tokens)
        dedup_key = "_".join(stems)  # CMKP de-duplicates on '_'.join(tokens)
        exact = ()
        begins = ()
        for x in infos:
            exact += x[1]
            if x[2]:
                begins += x[2]
    # what to look for in the stemmed post text; "\n" (never in it) for the empty keyphrase, never present
    probe = (" " + match_key + " ") if match_key.strip() else "\n"
    if _MARK in match_key:
        _MARK_IN_KEYPHRASES = True
    valid = INVALID_TOKENS.isdisjoint(stems)
    info = (match_key, dedup_key, valid, probe, exact, piece.strip(), begins)
    if len(_KP_INFO) < 2_000_000:
        _KP_INFO[piece] = info
    return info


def _stem_raw(tok: str) -> str:
    w = tok.lower()
    s = STEM_CACHE.get(w)
    return s if s is not None else stem_lower(w)


def _first_sight(tok: str, exact: set[str], begins: set[str]) -> str:
    w = tok.lower()
    v = _MARK + w[:3]
    if v in exact or (begins and (" " + v[:3] in begins or " " + v[:2] in begins)) or w in _POOL_MOVED:
        v = _stem_raw(tok)
    if len(_SRC_TOKENS) < 5_000_000:
        _SRC_TOKENS[tok] = v
    return v


def _post_needles(kps: list[tuple]) -> tuple[set[str], set[str]]:
    exact: set[str] = set()
    begins: set[str] = set()
    for x in kps:
        exact.update(x[4])
        if x[6]:
            begins.update(x[6])
    return exact, begins


def _stemmed_source(src: str, kps: list[tuple]) -> str:
    """`` s1 s2 ... `` (leading and trailing space): the post's stemmed words, with markers for some of them.

    Stemming every post word is most of the cost of a cold evaluation, and most post words are never needed. The
    Porter stem ``s`` of a lower-cased word ``w`` only rewrites suffixes, and every rewrite either cuts the word
    or replaces a suffix by a string starting with the suffix's first letter, with a stem of at least two
    letters before it (rules conditioned on ``m > 0``). Hence (:func:`_stem_prefix_ok`): a stem of one or two
    letters is a prefix of ``w``; a longer one shares ``w``'s first two letters and its third letter too, except
    ``y -> i`` (``cry -> cri``) and an ``e`` appended to a two-letter stem (``ating -> ate``). nltk's irregular
    forms that break this (``skies -> sky``, ``dying -> die``) are in :data:`_POOL_MOVED` and always stemmed.
    A post word therefore stands as a marker (``_MARK`` + its first three letters), which equals no keyphrase
    word, until some post has a keyphrase word it may stem to (:func:`_needles`); then it is stemmed, once, and
    cached. Exact, and most post words are never stemmed. The property is checked by the tests on the CMKP
    vocabulary, nltk's irregular forms and random suffix combinations.
    """
    toks = src.split()
    if _MARK_IN_KEYPHRASES:  # some keyphrase word starts with the marker character: no markers at all
        return " " + " ".join([_stem_raw(t) for t in toks]) + " "
    get = _SRC_TOKENS.get
    vals = list(map(get, toks))
    if None in vals:
        exact, begins = _post_needles(kps)
        vals = [v or _first_sight(t, exact, begins) for v, t in zip(vals, toks)]
    stemmed = " " + " ".join(vals) + " "
    if _MARK in stemmed:
        present = set(vals)
        for x in kps:
            if not present.isdisjoint(x[4]) or (x[6] and any(b in stemmed for b in x[6])):
                # a marked word may stem to a keyphrase word of this post: stem such words now
                exact, begins = _post_needles(kps)
                for t in toks:
                    v = _SRC_TOKENS[t]
                    if v[:1] == _MARK and (
                        v in exact or (begins and (" " + v[:3] in begins or " " + v[:2] in begins))
                    ):
                        _SRC_TOKENS[t] = _stem_raw(t)
                return " " + " ".join(map(_SRC_TOKENS.__getitem__, toks)) + " "
    return stemmed


class _Bucket:
    """The per-post outcomes of one kind of scores (all / present / absent / unseen).

    A post's scores depend only on its match pattern (which filtered predictions match, in rank order) and its
    number of gold keyphrases, so the loop appends that pair to :attr:`keys` and :meth:`report` scores each
    distinct pair once, then sums the per-post values in post order -- the same float additions as CMKP's
    ``sum(list) / len(list)``.
    """

    __slots__ = ("keys",)

    def __init__(self) -> None:
        self.keys: list[tuple[tuple[bool, ...], int]] = []

    @staticmethod
    def _post_scores(hits: tuple[bool, ...], n_trg: int, ks: tuple) -> tuple:
        """CMKP's per-post scores (``compute_classification_metrics_at_ks``, ``average_precision_at_ks``):
        ``(P@k for k in ks) + (R@k ...) + (F1@k ...) + (AP@k ...) + (#gold, #predictions, #matches)``."""
        n = len(hits)
        if n == 0:  # CMKP records zeros for every metric of a post without (remaining) predictions
            return (0,) * (4 * len(ks)) + (n_trg, 0, 0)
        cum = []
        ap_cum = []
        m = 0
        ap = 0.0
        for i, hit in enumerate(hits):
            if hit:
                m += 1
                ap += m / (i + 1)
            cum.append(m)
            ap_cum.append(ap)
        ps, rs, fs, aps = [], [], [], []
        for k in ks:
            kk = n if (k == "M" or k >= n) else k
            mk = cum[kk - 1]
            precision = mk / kk
            recall = mk / n_trg if n_trg > 0 else 0.0
            ps.append(precision)
            rs.append(recall)
            fs.append(float(2 * (precision * recall)) / (precision + recall) if precision + recall > 0 else 0.0)
            aps.append(ap_cum[kk - 1] / n_trg if n_trg > 0 else 0)
        return (*ps, *rs, *fs, *aps, n_trg, n, m)

    def report(self, ks: tuple, variant: str) -> dict:
        n = len(self.keys)
        nk = len(ks)
        table = {key: self._post_scores(key[0], key[1], ks) for key in set(self.keys)}
        # column sums over the posts, in post order (as CMKP's sum over its per-post lists)
        sums = [sum(col) for col in zip(*map(table.__getitem__, self.keys))] if n else [0] * (4 * nk + 3)
        # CMKP divides by zero for an empty subset; we report zeros
        out = scores_from_means([s / n for s in sums[: 4 * nk]] if n else [0.0] * (4 * nk), ks, variant)
        out["num_posts"] = n
        out["num_targets"], out["num_predictions"], out["num_matches"] = sums[4 * nk :]
        return out


def scores_from_means(means: Sequence[float], ks: tuple, variant: str) -> dict:
    """``{"f1@k", "p@k", "r@k", "map@k"}`` for every ``k`` from the macro averages of the per-post columns of
    :func:`post_scores` (``means[q * len(ks) + j]``: P, R, per-post F1 and AP (``q`` = 0..3) at ``ks[j]``)."""
    out: dict = {}
    nk = len(ks)
    for j, k in enumerate(ks):
        mp, mr, mf, map_k = means[j], means[nk + j], means[2 * nk + j], means[3 * nk + j]
        out[f"f1@{k}"] = mf if variant == "per_post" else harmonic_f1(mp, mr)
        out[f"p@{k}"] = mp
        out[f"r@{k}"] = mr
        out[f"map@{k}"] = map_k
    return out


def harmonic_f1(p: float, r: float) -> float:
    """CMKP's F1 of a precision and a recall (``report_classification_scores``; 0 when both are 0)."""
    return float(2 * p * r) / (p + r) if p + r > 0 else 0.0


def post_scores(outcome: tuple[tuple[bool, ...], int], ks: tuple) -> tuple:
    """One post's CMKP scores from its outcome ``(hits, #gold)`` (see :func:`post_outcomes`): ``(P@k for k in ks)
    + (R@k ...) + (F1@k ...) + (AP@k ...) + (#gold, #predictions, #matches)``; ``ks`` as :func:`normalise_ks`
    returns them. The macro averages of these columns are what :func:`evaluate_keyphrases` reports."""
    return _Bucket._post_scores(outcome[0], outcome[1], ks)


def normalise_ks(ks: Iterable) -> tuple:
    """The cut-offs as the scores use them: ints and ``"M"`` (``"m"`` accepted), de-duplicated, ``"M"`` added last."""
    out = []
    for k in ks:
        if k == "M" or k == "m":
            k = "M"
        else:
            k = int(k)
            if k < 1:
                raise ValueError(f"ks must be positive integers or 'M', got {k}")
        if k not in out:
            out.append(k)
    if "M" not in out:
        out.append("M")
    return tuple(out)


def _new_buckets(sources, seen_set) -> tuple:
    return (
        _Bucket(),
        _Bucket() if sources is not None else None,
        _Bucket() if sources is not None else None,
        _Bucket() if seen_set is not None else None,
    )


def _score_posts(preds, golds, sources, seen_set, buckets, record=None) -> tuple[int, int]:
    """The per-post loop: fills the buckets, returns (#duplicate, #invalid) predictions removed. ``record``, when
    given, is called with each post's ``(all, present, absent, unseen)`` outcomes (None where the post is not in
    that subset)."""
    b_all, b_pre, b_abs, b_uns = buckets
    add_all = b_all.keys.append
    add_pre = b_pre.keys.append if b_pre is not None else None
    add_abs = b_abs.keys.append if b_abs is not None else None
    add_uns = b_uns.keys.append if b_uns is not None else None
    n_dup = 0
    n_invalid = 0
    info = _KP_INFO.get
    for i, g_list in enumerate(golds):
        # unique targets (CMKP's find_unique_target: first of each stemmed form)
        if len(g_list) == 1:
            piece = g_list[0]
            targets = [info(piece) or _kp_info(piece)]
        else:
            targets = []
            tkeys = set()
            for piece in g_list:
                inf = info(piece) or _kp_info(piece)
                if inf[1] not in tkeys:
                    tkeys.add(inf[1])
                    targets.append(inf)
        # filtered predictions (CMKP's filter_prediction: first of each stemmed form, and valid)
        fpreds = []
        pkeys = set()
        for piece in preds[i]:
            inf = info(piece) or _kp_info(piece)
            if inf[1] in pkeys:
                n_dup += 1
            else:
                pkeys.add(inf[1])
                if inf[2]:
                    fpreds.append(inf)
                else:
                    n_invalid += 1
        n_trg = len(targets)
        trg_match = {t[0] for t in targets}
        hits = tuple([p[0] in trg_match for p in fpreds])
        k_all = (hits, n_trg)
        add_all(k_all)
        k_pre = k_abs = k_uns = None

        if add_pre is not None and n_trg:
            stemmed = _stemmed_source(sources[i], targets + fpreds)
            n_tp = [t[3] in stemmed for t in targets].count(True)
            if fpreds:
                p_pres = [p[3] in stemmed for p in fpreds]
                if n_tp:
                    k_pre = (tuple(compress(hits, p_pres)), n_tp)
                    add_pre(k_pre)
                if n_tp < n_trg:
                    k_abs = (tuple(compress(hits, map(not_, p_pres))), n_trg - n_tp)
                    add_abs(k_abs)
            else:
                if n_tp:
                    k_pre = ((), n_tp)
                    add_pre(k_pre)
                if n_tp < n_trg:
                    k_abs = ((), n_trg - n_tp)
                    add_abs(k_abs)

        if add_uns is not None:
            unseen_match = {t[0] for t in targets if t[5] not in seen_set}
            if unseen_match:
                n_tu = [t[5] not in seen_set for t in targets].count(True)
                k_uns = (tuple([p[0] in unseen_match for p in fpreds if p[5] not in seen_set]), n_tu)
                add_uns(k_uns)
        if record is not None:
            record((k_all, k_pre, k_abs, k_uns))
    return n_dup, n_invalid


def evaluate_keyphrases(
    preds: Sequence[Sequence[str]],
    golds: Sequence[Sequence[str]],
    sources: Sequence[str] | None = None,
    train_keyphrases: set[str] | None = None,
    ks: Iterable = (1, 3, 5),
    variant: str = "cmkp",
    outcomes: list | None = None,
) -> dict:
    """Score predicted keyphrase lists against gold lists, one list per post, with CMKP's protocol.

    ``preds[i]`` / ``golds[i]`` are the keyphrase strings of post ``i`` in rank order; to reproduce CMKP exactly,
    split a prediction line with :func:`~dyncot_plugin.tasks.mmkp.normalize.split_keyphrases_cmkp` (empty pieces count
    as predictions there). ``sources[i]`` is the post text (present/absent scores); ``train_keyphrases`` the
    training keyphrase strings (unseen scores). ``ks`` are the cut-offs; ``"M"`` (all predictions) is always
    added. ``variant``: ``"cmkp"`` (F1 = harmonic mean of macro P and R) or ``"per_post"`` (mean per-post F1).

    Returns ``{"f1@1", "p@1", "r@1", "map@1", ..., "f1@M", ..., "num_posts", "num_targets", "num_predictions",
    "num_matches", "num_duplicates", "num_invalid", "variant", "present", "absent", "unseen"}``; ``present``,
    ``absent`` (when ``sources`` is given) and ``unseen`` (when ``train_keyphrases`` is given) hold the same
    score keys for their subset, else ``None``. Scores are fractions in [0, 1]. ``outcomes``, when a list, gets
    every post's outcomes appended, as :func:`post_outcomes` returns them (for per-post work without a second pass).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} prediction lists but {len(golds)} gold lists; they must align by post")
    if sources is not None and len(sources) != len(golds):
        raise ValueError(f"{len(sources)} sources but {len(golds)} gold lists; they must align by post")
    ks = normalise_ks(ks)
    seen_set = None
    if train_keyphrases is not None:
        seen_set = {kp.strip() for kp in train_keyphrases}

    buckets = _new_buckets(sources, seen_set)
    with paused_gc():  # the loop allocates many small objects; collections would only rescan the caches
        n_dup, n_invalid = _score_posts(
            preds, golds, sources, seen_set, buckets, record=outcomes.append if outcomes is not None else None
        )
    b_all, b_pre, b_abs, b_uns = buckets
    out = b_all.report(ks, variant)
    out["num_duplicates"] = n_dup
    out["num_invalid"] = n_invalid
    out["variant"] = variant
    out["present"] = b_pre.report(ks, variant) if b_pre is not None else None
    out["absent"] = b_abs.report(ks, variant) if b_abs is not None else None
    out["unseen"] = b_uns.report(ks, variant) if b_uns is not None else None
    return out


def post_outcomes(
    preds: Sequence[Sequence[str]],
    golds: Sequence[Sequence[str]],
    sources: Sequence[str] | None = None,
    train_keyphrases: set[str] | None = None,
) -> list[tuple]:
    """Per post, what :func:`evaluate_keyphrases` averages: ``(all, present, absent, unseen)``, each the post's
    outcome ``(hits, #gold)`` in that subset (which remaining predictions match, in rank order; see
    :func:`post_scores`) or None when the post is not in the subset (no present / absent / unseen gold keyphrase)
    or the subset is not computed (no ``sources`` / ``train_keyphrases``). Which subsets a post is in depends on
    its gold keyphrases and text only, never on the predictions. Same arguments as :func:`evaluate_keyphrases`."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} prediction lists but {len(golds)} gold lists; they must align by post")
    if sources is not None and len(sources) != len(golds):
        raise ValueError(f"{len(sources)} sources but {len(golds)} gold lists; they must align by post")
    seen_set = {kp.strip() for kp in train_keyphrases} if train_keyphrases is not None else None
    out: list[tuple] = []
    with paused_gc():
        _score_posts(preds, golds, sources, seen_set, _new_buckets(sources, seen_set), record=out.append)
    return out


def load_train_keyphrases_set(keyphrase_lists: Iterable[Iterable[str]]) -> set[str]:
    """The training keyphrase set (stripped strings) from per-post keyphrase lists."""
    return {kp.strip() for kps in keyphrase_lists for kp in kps if kp.strip()}
