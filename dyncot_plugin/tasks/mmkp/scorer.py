"""MMKP's scorer for the training-time evaluation: CMKP's F1@1 and F1@M on generated keyphrases (in percent),
with the same splits as ``dyncot-eval mmkp`` on LLaMA-Factory predictions, so that both report the same numbers."""

from __future__ import annotations

from typing import Sequence

from dyncot_plugin.cot_format import parse_output
from dyncot_plugin.tasks.mmkp.metrics import evaluate_keyphrases
from dyncot_plugin.tasks.mmkp.normalize import label_keyphrases, split_keyphrases_cmkp, stem_phrase


def score(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    scores = evaluate_keyphrases(
        [split_keyphrases_cmkp(parse_output(p).answer) for p in predictions],
        [label_keyphrases(label) for label in labels],
    )
    return {"f1@1": round(100 * scores["f1@1"], 4), "f1@M": round(100 * scores["f1@M"], 4)}


def answers_agree(answer: str, other: str) -> bool:
    """Whether two answers name the same keyphrases (stemmed sets, as ``gen-cot --match exact`` compares them)."""
    return {stem_phrase(k) for k in label_keyphrases(answer)} == {stem_phrase(k) for k in label_keyphrases(other)}
