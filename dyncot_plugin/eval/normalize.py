"""Keyphrase normalisation shared by the evaluator and the data tools (one rule for "present" everywhere).

CMKP's evaluator lower-cases, splits on white space and Porter-stems every word (nltk). A keyphrase is *present*
in a post when its stemmed tokens occur contiguously in the stemmed post text. Stemming is memoised per distinct
word, which is what makes evaluation over hundreds of thousands of posts fast.
"""

from __future__ import annotations

from functools import lru_cache

from nltk.stem.porter import PorterStemmer

_STEMMER = PorterStemmer()


@lru_cache(maxsize=None)
def stem_word(word: str) -> str:
    return _STEMMER.stem(word.lower().strip())


def stem_tokens(tokens: list[str]) -> list[str]:
    return [stem_word(t) for t in tokens]


def stem_phrase(phrase: str) -> tuple[str, ...]:
    """A keyphrase or text, lower-cased, white-space tokenised and stemmed word by word."""
    return tuple(stem_word(t) for t in phrase.lower().split())


def split_keyphrases(text: str, sep: str = ";") -> list[str]:
    """``"kp1; kp2"`` -> ``["kp1", "kp2"]`` (stripped; empty pieces kept out)."""
    return [kp.strip() for kp in text.split(sep) if kp.strip()]


def is_present(kp_stemmed: tuple[str, ...] | list[str], src_stemmed: tuple[str, ...] | list[str]) -> bool:
    """Whether the stemmed keyphrase occurs as a contiguous run of the stemmed source tokens."""
    n = len(kp_stemmed)
    if n == 0:
        return False
    kp = tuple(kp_stemmed)
    src = tuple(src_stemmed)
    first = kp[0]
    for i in range(len(src) - n + 1):
        if src[i] == first and src[i : i + n] == kp:
            return True
    return False
