"""Keyphrase metrics (CMKP protocol) and normalisation: hand-computed small cases."""

from __future__ import annotations

import glob
import random
import subprocess
import sys

import pytest

from dyncot_plugin.tasks.mmkp.metrics import evaluate_keyphrases
from dyncot_plugin.tasks.mmkp.normalize import (
    is_present,
    is_valid_keyphrase,
    split_keyphrases,
    split_keyphrases_cmkp,
    stem_keyphrase,
    stem_phrase,
    stem_word,
)


def approx(x):
    return pytest.approx(x, abs=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# normalize
# ------------------------------------------------------------------------------------------------------------------


def test_stemming_and_splitting():
    assert stem_word("Cats") == "cat" and stem_word(" running ") == "run"
    assert stem_phrase("The Cats  sat") == ("the", "cat", "sat")
    assert stem_keyphrase("dog houses") == ("dog", "hous")
    assert stem_keyphrase("") == ("",)  # CMKP: "".split(" ") == [""], one empty token
    assert stem_keyphrase("a  b") == ("a", "", "b")
    assert split_keyphrases("a; b;; c ;") == ["a", "b", "c"]
    assert split_keyphrases("a;;b", keep_empty=True) == ["a", "", "b"]
    assert split_keyphrases_cmkp(" a ;;b;\n") == ["a", "", "b", ""]
    assert split_keyphrases_cmkp("") == [""]


def test_validity_rule_is_whole_stemmed_tokens():
    assert is_valid_keyphrase(stem_keyphrase("u.s. open"))  # '.' inside a word is fine
    assert not is_valid_keyphrase(stem_keyphrase("a , b"))
    assert not is_valid_keyphrase(stem_keyphrase("end ."))
    assert not is_valid_keyphrase(stem_keyphrase("the <unk> show"))
    assert not is_valid_keyphrase(stem_keyphrase("<UNK>s"))  # stems to <unk>
    assert is_valid_keyphrase(stem_keyphrase(""))  # CMKP keeps empty predictions (one empty token)
    assert not is_valid_keyphrase(())


def test_is_present():
    src = stem_phrase("new york city is big")
    assert is_present(stem_phrase("New York"), src)
    assert is_present(stem_phrase("cities"), src)
    assert not is_present(stem_phrase("york new"), src)
    assert not is_present(stem_phrase("new city"), src)
    assert not is_present(("",), src) and not is_present((), src)


def test_stem_prefix_property():
    """The evaluator skips stemming post words on this property of nltk's Porter stemmer (see _stemmed_source)."""
    from dyncot_plugin.tasks.mmkp.metrics import _POOL_MOVED, _stem_prefix_ok
    from dyncot_plugin.tasks.mmkp.normalize import _STEMMER

    words = {"ies", "ied", "sses", "cry", "trying", "ating", "izing", "dying", "skies", "aing", "yying", "bbing", "a"}
    for path in glob.glob("/work/shared/cmkp/tw_mm_s1_tiny/*.txt"):
        with open(path, encoding="utf-8") as f:
            words.update(f.read().lower().replace("<sep>", " ").replace(";", " ").split())
    rnd = random.Random(0)
    sufs = ["s", "ies", "ied", "ing", "ed", "eed", "y", "ational", "ization", "biliti", "iviti", "alli", "logi", "e",
            "at", "iz", "bl", "ying", "icate", "ative", "ness", "ful", "ll"]
    for _ in range(4000):
        stem = "".join(rnd.choice("aeiouybcdlst") for _ in range(rnd.randint(0, 3)))
        words.add(stem + "".join(rnd.choice(sufs) for _ in range(rnd.randint(1, 2))))
    words.update(_STEMMER.pool)
    assert _POOL_MOVED == {"skies", "dying", "lying", "tying"}
    for w in words:
        assert w in _POOL_MOVED or _stem_prefix_ok(w, _STEMMER.stem(w)), (w, _STEMMER.stem(w))


# ------------------------------------------------------------------------------------------------------------------
# evaluate_keyphrases
# ------------------------------------------------------------------------------------------------------------------

SRC = "the cats sat on the mat"
GOLD = ["cat", "dog"]
# cats -> cat (hit); cat: duplicate after stemming; <unk>, ",": invalid; "dog house" miss; mat miss
PRED = ["cats", "cat", "<unk>", "dog house", "mat", ","]


def test_dedup_invalid_and_min_k_denominator():
    r = evaluate_keyphrases([PRED], [GOLD], [SRC])
    assert r["num_duplicates"] == 1 and r["num_invalid"] == 2
    assert r["num_predictions"] == 3 and r["num_matches"] == 1 and r["num_targets"] == 2
    assert r["p@1"] == approx(1.0) and r["r@1"] == approx(0.5) and r["f1@1"] == approx(2 / 3)
    assert r["p@3"] == approx(1 / 3) and r["f1@3"] == approx(0.4)
    # only 3 predictions remain: P@5 = 1/3 (no padding to 5), F1@5 = F1@M = F1@3
    assert r["p@5"] == approx(1 / 3) and r["f1@5"] == approx(0.4) and r["f1@M"] == approx(0.4)
    assert r["map@5"] == approx(0.5)  # precision 1 at rank 1, over 2 gold keyphrases


def test_present_absent_split():
    r = evaluate_keyphrases([PRED], [GOLD], [SRC])
    pre, ab = r["present"], r["absent"]
    # present: gold [cat]; predictions cat (hit), mat (miss)
    assert pre["num_posts"] == 1 and pre["num_targets"] == 1 and pre["num_predictions"] == 2
    assert pre["f1@1"] == approx(1.0) and pre["p@3"] == approx(0.5) and pre["f1@3"] == approx(2 / 3)
    # absent: gold [dog]; prediction "dog house" (miss)
    assert ab["num_posts"] == 1 and ab["num_targets"] == 1 and ab["num_predictions"] == 1
    assert ab["f1@1"] == 0.0 and ab["map@5"] == 0.0


def test_present_averages_only_over_posts_with_present_gold():
    preds = [["cat"], ["zebra"]]
    golds = [["cat"], ["lion"]]
    srcs = ["a cat", "a zebra"]
    r = evaluate_keyphrases(preds, golds, srcs)
    assert r["present"]["num_posts"] == 1 and r["present"]["f1@1"] == approx(1.0)
    # post 2: absent gold lion; its present prediction zebra is ignored there -> no absent prediction
    assert r["absent"]["num_posts"] == 1 and r["absent"]["num_predictions"] == 0 and r["absent"]["f1@1"] == 0.0
    assert r["f1@1"] == approx(0.5)


def test_empty_prediction_list_scores_zero():
    r = evaluate_keyphrases([["cat"], []], [["cat"], ["dog"]])
    assert r["p@1"] == approx(0.5) and r["r@1"] == approx(0.5) and r["f1@1"] == approx(0.5)
    assert r["present"] is None and r["absent"] is None and r["unseen"] is None


def test_empty_pieces_count_as_predictions_like_cmkp():
    # CMKP splits "a;;b" into a, "", b: the empty keyphrase is a (never matching) prediction
    r = evaluate_keyphrases([split_keyphrases_cmkp("a;;b")], [["a", "b"]])
    assert r["num_predictions"] == 3 and r["p@3"] == approx(2 / 3) and r["f1@3"] == approx(0.8)
    r = evaluate_keyphrases([split_keyphrases_cmkp("a;")], [["a", "b"]], ["a b"])
    assert r["p@5"] == approx(0.5)
    assert r["absent"]["num_posts"] == 0  # a and b are present; the empty prediction is absent
    assert r["present"]["p@5"] == approx(1.0)


def test_gold_dedup_after_stemming_and_map():
    r = evaluate_keyphrases([["x", "cats", "dogs"]], [["cat", "cats", "dog"]])
    assert r["num_targets"] == 2
    assert r["map@5"] == approx((1 / 2 + 2 / 3) / 2)
    assert r["r@1"] == 0.0 and r["r@3"] == approx(1.0)


def test_macro_f1_vs_per_post_variant():
    preds = [PRED, ["a"]]
    golds = [GOLD, ["a", "b", "c"]]
    # @3: post 1 P=1/3 R=1/2 (F1 .4); post 2 P=1 R=1/3 (F1 .5)
    r = evaluate_keyphrases(preds, golds)
    assert r["p@3"] == approx(2 / 3) and r["r@3"] == approx(5 / 12)
    assert r["f1@3"] == approx(60 / 117)  # harmonic mean of macro P and macro R
    pp = evaluate_keyphrases(preds, golds, variant="per_post")
    assert pp["f1@3"] == approx(0.45) and pp["p@3"] == r["p@3"]
    with pytest.raises(ValueError):
        evaluate_keyphrases(preds, golds, variant="micro")


def test_unseen():
    train = {"cat", " mat "}
    golds = [["cat", "dogs"], ["mat"], ["Cat"]]
    preds = [["dog", "cat", "bird"], ["mat"], ["cat"]]
    r = evaluate_keyphrases(preds, golds, None, train)
    u = r["unseen"]
    # post 1: unseen gold dogs; its unseen predictions dog (a hit after stemming) and bird (cat is seen)
    # post 2: mat is seen (white space stripped); post 3: "Cat" is unseen (exact string), "cat" is not
    assert u["num_posts"] == 2 and u["num_targets"] == 2 and u["num_predictions"] == 2
    assert u["p@1"] == approx(0.5) and u["r@1"] == approx(0.5)
    assert u["p@3"] == approx(0.25) and u["f1@3"] == approx(2 * 0.25 * 0.5 / 0.75)


def test_ks_and_alignment_errors():
    r = evaluate_keyphrases([["a", "b"]], [["b"]], ks=(2,))
    assert set(k for k in r if k.startswith("f1@")) == {"f1@2", "f1@M"}
    assert r["f1@2"] == approx(2 * 0.5 / 1.5)
    with pytest.raises(ValueError, match="align"):
        evaluate_keyphrases([["a"]], [["a"], ["b"]])
    with pytest.raises(ValueError, match="align"):
        evaluate_keyphrases([["a"]], [["a"]], ["x", "y"])


def test_no_present_posts_gives_zero_not_an_error():
    r = evaluate_keyphrases([["q"]], [["z"]], ["nothing here"])
    assert r["present"]["num_posts"] == 0 and r["present"]["f1@1"] == 0.0


def test_marker_resolution_across_posts():
    # post words first seen in posts that do not need them stay unstemmed (markers) until a later post does
    preds = [["zzz"], ["run"], ["runs fast"], ["cry"], ["ate"], ["sky"], ["a"]]
    golds = [["qqq"], ["run"], ["run fast"], ["cries"], ["ate"], ["sky"], ["a"]]
    srcs = ["running late crying ating skies a", "running late", "she runs fast", "crying ating skies a",
            "ating", "skies", "a b"]
    r = evaluate_keyphrases(preds, golds, srcs)
    assert r["present"]["num_posts"] == 6 and r["present"]["f1@1"] == approx(1.0)
    assert r["absent"]["num_posts"] == 1


def test_import_light():
    code = (
        "import sys, dyncot_plugin.tasks.mmkp.metrics, dyncot_plugin.cot_format, dyncot_plugin.tasks.mmkp.evaluate;"
        "print(sorted(m for m in ('torch', 'transformers', 'llamafactory') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _brute_force(preds, golds, sources, ks=(1, 3, 5, "M")):
    """The protocol written plainly (no caches, no markers), for random cross-checks of the fast path."""
    from dyncot_plugin.tasks.mmkp.normalize import stem_keyphrase, stem_phrase

    sums = {tag: {} for tag in ("all", "present", "absent")}
    counts = {tag: 0 for tag in sums}
    for pred, gold, src in zip(preds, golds, sources):
        s_src = stem_phrase(src)
        targets, seen = [], set()
        for g in gold:
            st = stem_keyphrase(g)
            if "_".join(st) not in seen:
                seen.add("_".join(st))
                targets.append(st)
        kept, seen = [], set()
        for p in pred:
            st = stem_keyphrase(p)
            if "_".join(st) in seen:
                continue
            seen.add("_".join(st))
            if is_valid_keyphrase(st):
                kept.append(st)
        for tag in sums:
            if tag == "all":
                t, k = targets, kept
            else:
                want = tag == "present"
                t = [x for x in targets if is_present(x, s_src) == want]
                k = [x for x in kept if is_present(x, s_src) == want]
                if not t:
                    continue
            counts[tag] += 1
            hits = [x in t for x in k]
            for kk in ks:
                n = len(hits) if kk == "M" else min(kk, len(hits))
                m = sum(hits[:n])
                p_ = m / n if n else 0.0
                r_ = m / len(t)
                ap = sum(sum(hits[: i + 1]) / (i + 1) for i in range(n) if hits[i]) / len(t) if n else 0.0
                for name, v in (("p", p_), ("r", r_), ("map", ap)):
                    sums[tag][f"{name}@{kk}"] = sums[tag].get(f"{name}@{kk}", 0.0) + v
    out = {}
    for tag in sums:
        n = counts[tag]
        out[tag] = {key: v / n for key, v in sums[tag].items()}
        for kk in ks:
            p_, r_ = out[tag][f"p@{kk}"], out[tag][f"r@{kk}"]
            out[tag][f"f1@{kk}"] = 2 * p_ * r_ / (p_ + r_) if p_ + r_ else 0.0
    return out


def test_fast_path_matches_brute_force_on_random_posts():
    import dyncot_plugin.tasks.mmkp.metrics as km

    rnd = random.Random(7)
    roots = ["cry", "run", "ate", "sky", "happy", "nation", "relate", "a", "i", "go", "dy", "ti", "<unk>", ",", "u.s."]
    sufs = ["", "", "s", "ing", "ed", "ies", "ational", "ly", "er"]
    vocab = [r + s for r in roots for s in sufs] + ["Running", "CRIES", "dying", "skies", "lying"]

    def phrase(n):
        return " ".join(rnd.choice(vocab) for _ in range(n))

    preds, golds, sources = [], [], []
    for _ in range(400):
        sources.append(" ".join(rnd.choice(vocab) for _ in range(rnd.randint(0, 40))))
        golds.append([phrase(rnd.randint(1, 2)) for _ in range(rnd.randint(1, 3))])
        preds.append([phrase(rnd.randint(1, 2)) for _ in range(rnd.randint(0, 6))] + rnd.choice([[], [""], golds[-1]]))
    km._SRC_TOKENS.clear()
    km._KP_INFO.clear()
    fast = evaluate_keyphrases(preds, golds, sources)
    slow = _brute_force(preds, golds, sources)
    for tag, res in (("all", fast), ("present", fast["present"]), ("absent", fast["absent"])):
        for key, value in slow[tag].items():
            assert res[key] == pytest.approx(value, abs=1e-12), (tag, key)
