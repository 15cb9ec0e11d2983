"""Keyphrase normalisation shared by the evaluator and the data tools (one rule for "present" everywhere).

The rules are those of CMKP's evaluator (``unified_model/metric_utils.py`` and ``pred_evaluate_func.py`` of
yuewang-cuhk/CMKP), which every published MMKP result uses:

* a keyphrase list is split on ``;`` and each piece is stripped; a piece is then split on single spaces
  (``str.split(" ")``, so an empty piece is one empty token, not zero tokens) and each token is stripped,
  lower-cased and Porter-stemmed (nltk, default NLTK_EXTENSIONS mode);
* the source text is split on any white space (``str.split()``) and stemmed the same way;
* a keyphrase is *present* when its stemmed tokens occur contiguously in the stemmed source tokens; a keyphrase
  whose stemmed tokens join to white space only (the empty keyphrase) is never present;
* a prediction is *invalid* when one of its stemmed tokens is ``<unk>``, ``,`` or ``.`` (whole tokens, so
  ``u.s.`` is valid), or when it has no token at all -- which cannot happen after ``split(" ")``: CMKP therefore
  keeps empty predictions (``"a;;b"`` predicts ``a``, the empty keyphrase and ``b``).

Stemming is memoised per distinct word, which is what makes evaluation over hundreds of thousands of posts fast.

Importing this module is cheap (nltk's Porter stemmer only; no torch).
"""

from __future__ import annotations

from functools import lru_cache

from nltk.stem.porter import PorterStemmer

from dyncot_plugin.cot_format import parse_output

_STEMMER = PorterStemmer()
_stem = _STEMMER.stem

#: Stems of lower-cased, stripped words: the one cache every helper here (and the evaluator) fills.
STEM_CACHE: dict[str, str] = {}

#: Stemmed tokens that make a predicted keyphrase invalid (CMKP's ``check_valid_keyphrases``).
INVALID_TOKENS = frozenset({"<unk>", ",", "."})


def stem_lower(word: str) -> str:
    """Stem of an already stripped, lower-cased word (memoised in :data:`STEM_CACHE`)."""
    s = STEM_CACHE.get(word)
    if s is None:
        s = STEM_CACHE[word] = _stem(word)
    return s


@lru_cache(maxsize=None)
def stem_word(word: str) -> str:
    """CMKP's ``stemmer.stem(w.strip().lower())``, memoised."""
    return stem_lower(word.strip().lower())


def stem_tokens(tokens: list[str]) -> list[str]:
    return [stem_word(t) for t in tokens]


def stem_phrase(phrase: str) -> tuple[str, ...]:
    """A keyphrase or text, split on any white space, lower-cased and stemmed word by word.

    This is CMKP's treatment of the *source text*; for a keyphrase with single spaces between its words (every
    gold keyphrase in the CMKP data) it also equals :func:`stem_keyphrase`.
    """
    return tuple(stem_word(t) for t in phrase.split())


def keyphrase_tokens(phrase: str) -> list[str]:
    """CMKP's tokenisation of one keyphrase: ``phrase.strip().split(" ")`` (``""`` -> ``[""]``)."""
    return phrase.strip().split(" ")


def stem_keyphrase(phrase: str) -> tuple[str, ...]:
    """CMKP's stemmed form of one keyphrase (tokens from :func:`keyphrase_tokens`)."""
    return tuple(stem_word(t) for t in keyphrase_tokens(phrase))


def split_keyphrases(text: str, sep: str = ";", keep_empty: bool = False) -> list[str]:
    """``"kp1; kp2"`` -> ``["kp1", "kp2"]`` (each piece stripped).

    By default empty pieces are dropped (what the data tools want). ``keep_empty=True`` is CMKP's exact split
    (``text.strip().split(";")``), where ``"a;;b"`` and ``"a;"`` yield an empty keyphrase that still counts as a
    prediction; the evaluator uses it through :func:`split_keyphrases_cmkp`.
    """
    if keep_empty:
        return [kp.strip() for kp in text.strip().split(sep)]
    return [kp.strip() for kp in text.split(sep) if kp.strip()]


def split_keyphrases_cmkp(text: str) -> list[str]:
    """CMKP's split of a prediction line or gold field: ``[p.strip() for p in text.strip().split(";")]``."""
    return [kp.strip() for kp in text.strip().split(";")]


def is_valid_keyphrase(kp_stemmed: tuple[str, ...] | list[str]) -> bool:
    """CMKP's validity rule on a stemmed keyphrase: at least one token, none of them ``<unk>``, ``,`` or ``.``."""
    return len(kp_stemmed) > 0 and not any(t in INVALID_TOKENS for t in kp_stemmed)


def is_present(kp_stemmed: tuple[str, ...] | list[str], src_stemmed: tuple[str, ...] | list[str]) -> bool:
    """Whether the stemmed keyphrase occurs as a contiguous run of the stemmed source tokens.

    CMKP's ``check_present_keyphrases``: a keyphrase whose tokens join to white space only is never present.
    """
    n = len(kp_stemmed)
    if n == 0 or not " ".join(kp_stemmed).strip():
        return False
    kp = tuple(kp_stemmed)
    src = tuple(src_stemmed)
    first = kp[0]
    for i in range(len(src) - n + 1):
        if src[i] == first and src[i : i + n] == kp:
            return True
    return False


def label_keyphrases(text: str | None) -> list[str]:
    """Gold keyphrases of a label in plain or CoT form: its answer split on ``;``, empty pieces dropped."""
    return split_keyphrases(parse_output(text).answer)
